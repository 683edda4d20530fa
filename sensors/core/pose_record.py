"""One tick of the runtime's pose output: ``PoseRecord``.

The one description of what the pose stream carries and what a recording holds:

* ``to_message`` / ``from_message``: the wire ``pose`` message (docs/wire.md): arrays ``joints``,
  ``presence``, ``shapley``, ``degradation`` (and forwarded ``<modality>_points``), header ``tick``,
  ``latency_ns``, ``station`` and the extras (shares, degraded, reasons, coalition values, Shapley
  with labels, input times, outcome, ground truth, the ``rehab`` map);
* ``to_row`` / ``from_row``: one recorded tick (a JSONL line or an NPZ row, ``exporters.recorder``):
  flat keys, the rehabilitation outputs as ``exercise``, ``session``, ``reps``, ``angles`` (full
  precision) and ``exercise_trained`` (1, 0, or -1 when the model does not say), the station name,
  the model inputs as ``input_<name>`` when they are recorded.

Every writer (``runtime.outputs``: the pose stream and the recorder) and every reader
(``runtime.rehab.report``, ``runtime.view.frames``, ``runtime.replay``, ``runtime.bench``) goes
through it; the formats are those of the streams and files already written. Arrays are in
``schema.MODALITIES`` order, poses in metres (camera frame).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sensors.core import schema, wire

# Header extras of the pose message, in the order they are written (after station, tick, latency_ns).
EXTRAS: tuple[str, ...] = ("shares", "degraded", "reasons", "coalition_values", "shapley_gt", "shares_gt",
                           "input_t_ns", "outcome", "gt", "rehab")
INPUT_PREFIX = "input_"   # recorded model inputs: input_<name> for the names of schema.MODEL_INPUTS


def _zeros4(dtype) -> np.ndarray:
    return np.zeros(schema.N_MODALITIES, dtype)


def _floats(x) -> list[float] | None:
    return None if x is None else [float(v) for v in np.asarray(x).ravel()]


def _flag(x) -> bool | None:
    """A recorded or sent tri-state flag: true / false, or None (also for -1: not known)."""
    if x is None:
        return None
    v = int(np.asarray(x))
    return None if v < 0 else bool(v)


def _array(x, dtype=None) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype)


@dataclass
class PoseRecord:
    """What one tick produced, for the outside world."""

    tick: int
    tick_ns: int                                   # tick time, ns since the Unix epoch
    joints: np.ndarray | None                      # [17, 3] metres (None: a row without a pose)
    presence: np.ndarray                           # [4] 0/1: the input present to the model
    degradation: np.ndarray                        # [4] degradation score in [0, 1]
    degraded: np.ndarray                           # [4] 0/1 degraded flags (hysteresis)
    outcome: str = ""                              # fused | partial
    latency_ns: int = 0                            # newest used capture time -> outputs
    station: str = ""
    sent_ns: int = 0                               # when the message left (messages; 0 in a recording)
    reasons: list[str] | None = None               # [4] what drives each degradation score
    shapley: np.ndarray | None = None              # [4] label-free Shapley values of the window
    shares: np.ndarray | None = None               # [4] label-free contribution shares (sum 1)
    coalition_values: np.ndarray | None = None     # [16] label-free coalition profits
    shapley_gt: np.ndarray | None = None           # [4] Shapley values with ground-truth profit
    shares_gt: np.ndarray | None = None            # [4]
    input_t_ns: np.ndarray | None = None           # [4] capture time of each used sample (0 = absent)
    gt: np.ndarray | None = None                   # [17, 3] ground truth the tick used
    rehab: dict | None = None                      # the pose message's ``rehab`` map (docs/wire.md)
    exercise: str | None = None                    # rehabilitation: current exercise code
    session: str | None = None
    reps: int | None = None                        # repetitions counted in the current segment
    angles: np.ndarray | None = None               # [14] smoothed joint angles, degrees (schema.ANGLE_CHANNELS)
    exercise_trained: bool | None = None           # the model learnt the current exercise (None: unknown)
    points: dict[str, np.ndarray] | None = None    # modality -> forwarded sensor points (messages)
    inputs: dict[str, np.ndarray] | None = None    # model inputs without the batch axis (recordings)
    coalition_poses: np.ndarray | None = None      # [16, 17, 3] (recordings, with the inputs)

    # -- the pose message ------------------------------------------------------------------------
    def to_message(self) -> wire.Message:
        """The wire ``pose`` message of this tick (sent now)."""
        if self.joints is None:
            raise ValueError(f"tick {self.tick} has no pose: only ticks with joints are published")
        header: dict[str, Any] = {"station": self.station, "tick": int(self.tick),
                                  "latency_ns": max(0, int(self.latency_ns))}
        header.update(shares=_floats(self.shares), degraded=[int(x) for x in self.degraded],
                      reasons=None if self.reasons is None else list(self.reasons),
                      coalition_values=_floats(self.coalition_values), shapley_gt=_floats(self.shapley_gt),
                      shares_gt=_floats(self.shares_gt),
                      input_t_ns=None if self.input_t_ns is None else [int(t) for t in self.input_t_ns],
                      outcome=self.outcome, gt=None if self.gt is None else np.asarray(self.gt, np.float32).tolist(),
                      rehab=self.rehab)
        shapley = _zeros4(np.float32) if self.shapley is None else self.shapley
        arrays = {
            "joints": np.asarray(self.joints, np.float32).reshape(schema.N_JOINTS, 3),
            "presence": np.asarray(self.presence).astype(np.uint8).reshape(schema.N_MODALITIES),
            "shapley": np.asarray(shapley, np.float32).reshape(schema.N_MODALITIES),
            "degradation": np.asarray(self.degradation, np.float32).reshape(schema.N_MODALITIES),
        }
        for modality, p in (self.points or {}).items():
            arrays[f"{modality}_points"] = np.ascontiguousarray(p, np.float32)
        return wire.Message(topic=schema.POSE_TOPIC, src=self.station, seq=int(self.tick), t_ns=int(self.tick_ns),
                            sent_ns=time.time_ns(), arrays=arrays, extra=header)

    @classmethod
    def from_message(cls, msg: wire.Message) -> PoseRecord:
        """A decoded wire ``pose`` message -> record (arrays as they came, header lists as numpy)."""
        if msg.topic != schema.POSE_TOPIC:
            raise ValueError(f"expected a {schema.POSE_TOPIC!r} message, got topic {msg.topic!r}")
        x, a = msg.extra, msg.arrays
        rehab = x.get("rehab")
        rehab_map = rehab if isinstance(rehab, Mapping) else {}
        degraded = x.get("degraded")
        return cls(
            tick=int(x["tick"]), tick_ns=int(msg.t_ns), joints=a["joints"], presence=a["presence"],
            degradation=a["degradation"], degraded=_zeros4(np.uint8) if degraded is None else np.asarray(degraded),
            outcome=str(x.get("outcome", "")), latency_ns=int(x["latency_ns"]),
            station=str(x.get("station") or msg.src), sent_ns=int(msg.sent_ns),
            reasons=None if x.get("reasons") is None else [str(r) for r in x["reasons"]],
            shapley=a["shapley"], shares=_array(x.get("shares"), np.float64),
            coalition_values=_array(x.get("coalition_values"), np.float64),
            shapley_gt=_array(x.get("shapley_gt"), np.float64), shares_gt=_array(x.get("shares_gt"), np.float64),
            input_t_ns=_array(x.get("input_t_ns"), np.int64),
            gt=None if x.get("gt") is None else np.asarray(x["gt"], np.float32).reshape(schema.N_JOINTS, 3),
            rehab=rehab, exercise=rehab_map.get("exercise"), session=rehab_map.get("session"),
            reps=rehab_map.get("reps"), exercise_trained=_flag(rehab_map.get("exercise_trained")),
            points={m: a[name] for name, m in wire.POINT_ARRAYS.items() if name in a} or None)

    # -- the recording row ------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        """The flat per-tick row the recorders write (``exporters.recorder``)."""
        row: dict[str, Any] = {"tick": self.tick, "tick_ns": self.tick_ns, "outcome": self.outcome,
                               "latency_ns": self.latency_ns, "presence": np.asarray(self.presence).astype(np.uint8),
                               "joints": self.joints, "degradation": np.asarray(self.degradation).astype(np.float32),
                               "degraded": np.asarray(self.degraded).astype(np.uint8),
                               "reasons": None if self.reasons is None else list(self.reasons),
                               "input_t_ns": self.input_t_ns}
        if self.station:
            row["station"] = self.station
        if self.shapley is not None:
            row.update(shapley=self.shapley, shares=self.shares, coalition_values=self.coalition_values)
            if self.shapley_gt is not None:
                row.update(shapley_gt=self.shapley_gt, shares_gt=self.shares_gt)
        if self.gt is not None:
            row["gt"] = self.gt
        if self.reps is not None:
            n = len(schema.ANGLE_CHANNELS)
            row.update(exercise=self.exercise, session=self.session or "", reps=self.reps,
                       angles=np.full(n, np.nan, np.float32) if self.angles is None
                       else np.asarray(self.angles).astype(np.float32),
                       exercise_trained=-1 if self.exercise_trained is None else int(bool(self.exercise_trained)))
        if self.inputs is not None:
            row.update({f"{INPUT_PREFIX}{k}": v for k, v in self.inputs.items()})
            row["coalition_poses"] = self.coalition_poses
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PoseRecord:
        """One recorded tick (a JSONL object or an NPZ row, ``exporters.recorder.read_rows``) -> record."""
        if "tick" not in row or "joints" not in row:
            raise ValueError(f"a recorded tick needs 'tick' and 'joints', got keys {sorted(row)}; is this a "
                             f"pose recording made by `runtime serve --record`?")
        get = row.get
        inputs = {n: np.asarray(row[INPUT_PREFIX + n]) for n in schema.MODEL_INPUTS if INPUT_PREFIX + n in row}
        return cls(
            tick=int(row["tick"]), tick_ns=int(get("tick_ns", 0)), joints=_array(get("joints")),
            presence=_zeros4(np.uint8) if get("presence") is None else np.asarray(get("presence")),
            degradation=_zeros4(np.float32) if get("degradation") is None else np.asarray(get("degradation")),
            degraded=_zeros4(np.uint8) if get("degraded") is None else np.asarray(get("degraded")),
            outcome=str(get("outcome", "")), latency_ns=int(get("latency_ns", 0)), station=str(get("station") or ""),
            reasons=None if get("reasons") is None else [str(r) for r in get("reasons")],
            shapley=_array(get("shapley")), shares=_array(get("shares")),
            coalition_values=_array(get("coalition_values")), shapley_gt=_array(get("shapley_gt")),
            shares_gt=_array(get("shares_gt")), input_t_ns=_array(get("input_t_ns")), gt=_array(get("gt")),
            rehab=dict(get("rehab")) if isinstance(get("rehab"), Mapping) else None,
            exercise=None if get("exercise") is None else str(get("exercise")),
            session=None if get("session") is None else str(get("session")),
            reps=None if get("reps") is None else int(np.asarray(get("reps"))), angles=_array(get("angles")),
            exercise_trained=_flag(get("exercise_trained")),
            inputs=inputs or None, coalition_poses=_array(get("coalition_poses")))
