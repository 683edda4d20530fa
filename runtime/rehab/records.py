"""The records the rehabilitation reports read (``PoseRecord``: from a recording or the pose stream)
and the monitor run over them (``run_monitor``): the same ``RehabMonitor`` as the live station, so a
report says what the station said live.
"""

from __future__ import annotations

import numpy as np

from exporters.recorder import read_rows
from runtime.rehab.figures import Trace
from runtime.rehab.monitor import RehabConfig, RehabMonitor, Segment
from sensors.core import schema
from sensors.core.pose_record import PoseRecord

REQUIRED = ("tick", "tick_ns", "joints", "presence", "degraded")


def load_records(path) -> list[PoseRecord]:
    """Per-tick records of a JSONL or NPZ recording (``runtime serve --record``)."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"recording {path} holds no ticks: was the runtime fed any sensor data while recording?")
    missing = [k for k in REQUIRED if k not in rows[0]]
    if missing:
        raise ValueError(f"recording {path}: records lack {missing}; expected a pose recording of `runtime serve`")
    return [PoseRecord.from_row(r) for r in rows]


def records_from_poses(poses) -> list[PoseRecord]:
    """Per-tick records of the pose stream (decoded ``pose`` wire messages or their records, e.g.
    what a replay collected), in tick-time order."""
    records = [p if isinstance(p, PoseRecord) else PoseRecord.from_message(p) for p in poses]
    return sorted(records, key=lambda r: r.tick_ns)


def trained_actions_of(records: list[PoseRecord]) -> set[str] | None:
    """The exercises the live station's model knew, as its records say (``exercise_trained``); None
    when no record says (an older recording, or a model that does not record its training data)."""
    said = {(r.exercise or "", r.exercise_trained) for r in records if r.exercise_trained is not None}
    return None if not said else {code.upper() for code, trained in said if trained and code}


def _f64(x, shape: tuple[int, ...]) -> np.ndarray | None:
    return None if x is None else np.asarray(x, np.float64).reshape(shape)


def run_monitor(records: list[PoseRecord], config: RehabConfig | None = None, exercise: str | None = None,
                traces: list[Trace] | None = None) -> list[Segment]:
    """Feed the records through a fresh monitor; returns every segment (and fills ``traces``).

    ``exercise``: the exercise of records that carry none (older recordings)."""
    config = config or RehabConfig()
    rate = schema.FRAME_RATE_HZ
    if len(records) >= 2:
        step = np.median(np.diff([r.tick_ns for r in records])) / 1e9
        rate = 1.0 / step if step > 0 else rate
    mon = RehabMonitor(config, rate, trained_actions_of(records))
    segments: list[Segment] = []
    four = (schema.N_MODALITIES,)
    for r in records:
        code = r.exercise if r.exercise not in (None, "") else (exercise or "")
        mon.request(r.tick_ns, code, r.session or None)
        out = mon.update(r.tick, r.tick_ns, _f64(r.joints, (schema.N_JOINTS, 3)), _f64(r.presence, four),
                         _f64(r.degraded, four), _f64(r.shares, four))
        seg = mon.current
        if not segments or segments[-1] is not seg:
            segments.append(seg)
            if traces is not None:
                traces.append(Trace(seg))
        if traces is not None and out.angles is not None:
            traces[-1].t_s.append((r.tick_ns - seg.start_ns) / 1e9)
            traces[-1].angles.append(out.angles)
    mon.finish()
    return segments
