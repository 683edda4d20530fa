"""Pure conversions to the JSON frame the viewer page draws (one per station and tick).

A frame is a flat dict of JSON values:

==================  ===========================================================================
``station``         station name
``tick``            tick index
``t_ns``            tick time (ns since the Unix epoch)
``sent_ns``         when the runtime published the pose (0 in a recording)
``latency_ns``      runtime latency: newest used capture time -> pose published
``outcome``         ``fused`` / ``partial`` / ``empty``
``joints``          [17][3] metres, camera frame (x right, y down, z depth), or None
``gt``              [17][3] ground truth the tick used, or None
``presence``        [4] 0/1 per modality (``sensors.core.schema.MODALITIES`` order)
``shares``          [4] label-free contribution shares (sum 1), or None before the first window
``shapley``         [4] label-free Shapley values, or None
``degradation``     [4] degradation score in [0, 1]
``degraded``        [4] 0/1 degraded flags (hysteresis)
``reasons``         [4] largest component of each degradation score (``""`` when healthy), or None
``rehab``           rehabilitation outputs (see docs/wire.md), or None when the stream has none
``points``          {"lidar": [[x,y,z]...], "mmwave": [...]} when the runtime forwards them, or None
``seq``             the pose message's sequence number (live frames only: lost messages are its gaps)
==================  ===========================================================================
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from exporters.recorder import read_rows
from runtime.rehab import angles as ang
from runtime.rehab.trust import FLAGS
from sensors.core import schema, wire
from sensors.core.pose_record import PoseRecord

MAX_POINTS_SHOWN = 2048   # per modality and frame: a browser needs no more to show where the body is


def _list(x, digits: int = 4) -> list | None:
    """Array-like -> nested lists of rounded floats (NaN/inf -> None: JSON has neither)."""
    if x is None:
        return None
    a = np.asarray(x, dtype=np.float64)
    out = np.round(a, digits).tolist()
    if not np.isfinite(a).all():
        out = _finite_or_none(out)
    return out


def _finite_or_none(v):
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v if isinstance(v, float) and math.isfinite(v) else None


def _ints(x) -> list[int] | None:
    return None if x is None else [int(v) for v in np.asarray(x).ravel()]


def _points(points: dict | None) -> dict | None:
    out = {}
    for modality, p in (points or {}).items():
        p = np.asarray(p, np.float32)[:MAX_POINTS_SHOWN, :3]
        out[modality] = _list(p[np.isfinite(p).all(axis=1)], 3)
    return out or None


def json_safe(v):
    """A header value from the wire -> JSON (non-finite floats -> None, bytes -> text, maps keyed by text)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, np.generic | np.ndarray):
        return json_safe(v.tolist())
    return str(v)


def _angle_names(n: int) -> list[str]:
    """Names of the recorded angle channels (``knee_flexion_left`` ...), as on the pose stream."""
    names = [a if side == schema.NO_SIDE else f"{a}_{side}" for a, side in schema.ANGLE_CHANNELS]
    return names if len(names) == n else [f"angle_{i}" for i in range(n)]


def _rehab(rec: PoseRecord) -> dict | None:
    """The pose stream's ``rehab`` map as it came; for a recorded tick, the exercise, session,
    repetition count and angles the recorder keeps."""
    if rec.rehab is not None:
        return json_safe(rec.rehab)
    if rec.reps is None:
        return None
    out = {"exercise": str(rec.exercise or ""), "session": str(rec.session or ""), "reps": int(rec.reps)}
    if rec.exercise_trained is not None:
        out["exercise_trained"] = bool(rec.exercise_trained)
    if rec.angles is not None:
        values = _list(rec.angles, 2)
        out["angles_deg"] = dict(zip(_angle_names(len(values)), values))
    return out


def frame_of(rec: PoseRecord, station: str = "") -> dict:
    """One tick's record -> frame (see the module doc); ``station`` names a record without one."""
    return {
        "station": str(rec.station or station),
        "tick": int(rec.tick),
        "t_ns": int(rec.tick_ns),
        "sent_ns": int(rec.sent_ns),
        "latency_ns": int(rec.latency_ns),
        "outcome": str(rec.outcome),
        "joints": None if rec.joints is None else _list(rec.joints),
        "gt": _list(rec.gt),
        "presence": _ints(rec.presence) or [0] * schema.N_MODALITIES,
        "shares": _list(rec.shares),
        "shapley": _list(rec.shapley),
        "degradation": _list(rec.degradation, 3) or [0.0] * schema.N_MODALITIES,
        "degraded": _ints(rec.degraded) or [0] * schema.N_MODALITIES,
        "reasons": None if rec.reasons is None else [str(r) for r in rec.reasons],
        "rehab": _rehab(rec),
        "points": _points(rec.points),
    }


def frame_from_message(msg: wire.Message) -> dict:
    """A decoded wire ``pose`` message -> frame (with the message's ``seq``, for loss counting)."""
    return {**frame_of(PoseRecord.from_message(msg)), "seq": int(msg.seq)}


def frame_from_record(row: dict, station: str) -> dict:
    """One recorded tick (``exporters.recorder``: JSONL line or NPZ row) -> frame."""
    return frame_of(PoseRecord.from_row(row), station)


def load_recording(path: str | Path, max_frames: int = 36_000) -> list[dict]:
    """A JSONL or NPZ pose recording -> frames in tick order. Longer recordings are thinned
    evenly to ``max_frames`` (the slider still spans the whole recording)."""
    path = Path(path)
    frames = [frame_from_record(r, station=path.stem) for r in read_rows(path)]
    if not frames:
        raise ValueError(f"recording {path} holds no ticks")
    frames.sort(key=lambda f: (f["t_ns"], f["tick"]))
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return frames


STALE_AFTER_S = 2.0      # live: a station silent this long is shown stale (runtime view --stale-after); the
                         # runtime's /readyz fails after the same silence (metrics.ready_max_tick_age_s)


def page_config(mode: str, source: str, stale_after_s: float = STALE_AFTER_S) -> dict:
    """What the page needs to know besides the frames: modality names, the skeleton, the words it
    shows (joint names, angle names with the word of each direction, trust flags) and after how
    long a silent station turns stale."""
    side = ["centre"] * schema.N_JOINTS
    for i, name in enumerate(schema.H36M_JOINTS):
        if name.startswith("left_"):
            side[i] = "left"
        elif name.startswith("right_"):
            side[i] = "right"
    angle_labels = {k: [ang.channel_label(k, 1.0), ang.channel_label(k, -1.0)] for k in ang.CHANNEL_KEYS}
    angle_labels.update({a: [ang.channel_label(a, 1.0), ang.channel_label(a, -1.0)] for a in schema.LIMB_ANGLES})
    return {"mode": mode, "source": source, "modalities": list(schema.MODALITIES),
            "joints": list(schema.H36M_JOINTS), "edges": [list(e) for e in schema.SKELETON_EDGES], "side": side,
            "joint_labels": [n.replace("_", " ") for n in schema.H36M_JOINTS], "angle_labels": angle_labels,
            "trust_words": dict(FLAGS), "stale_after_s": float(stale_after_s)}
