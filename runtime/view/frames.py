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
==================  ===========================================================================
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sensors.core import schema, wire

# Header keys of the pose message that carry rehabilitation outputs; passed through as they come.
REHAB_KEYS: tuple[str, ...] = ("rehab",)
# Arrays of the pose message holding forwarded sensor points (optional on the wire).
POINT_ARRAYS: dict[str, str] = wire.POINT_ARRAYS
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


def _points(arrays: dict) -> dict | None:
    out = {}
    for name, modality in POINT_ARRAYS.items():
        p = arrays.get(name)
        if p is not None:
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


def _rehab(source: dict) -> dict | None:
    found = {k: json_safe(source[k]) for k in REHAB_KEYS if source.get(k) is not None}
    if not found:
        return None
    return found["rehab"] if list(found) == ["rehab"] else found


def _angle_names(n: int) -> list[str]:
    """Names of the recorded angle channels (``knee_flexion_left`` ...), as on the pose stream."""
    channels = getattr(schema, "ANGLE_CHANNELS", ())
    no_side = getattr(schema, "NO_SIDE", "none")
    names = [a if s == no_side else f"{a}_{s}" for a, s in channels]
    return names if len(names) == n else [f"angle_{i}" for i in range(n)]


def _rehab_of_record(record: dict) -> dict | None:
    """The ``rehab`` map of a recorded tick (the recorder keeps exercise, session, reps and angles)."""
    if record.get("rehab") is not None:
        return json_safe(record["rehab"])
    if record.get("reps") is None:
        return None
    angles = record.get("angles")
    out = {"exercise": str(record.get("exercise", "")), "session": str(record.get("session", "")),
           "reps": int(np.asarray(record["reps"]))}
    if angles is not None:
        values = _list(angles, 2)
        out["angles_deg"] = dict(zip(_angle_names(len(values)), values))
    return out


def frame_from_message(msg: wire.Message) -> dict:
    """A decoded wire ``pose`` message -> frame (see the module doc)."""
    if msg.topic != schema.POSE_TOPIC:
        raise ValueError(f"expected a {schema.POSE_TOPIC!r} message, got topic {msg.topic!r}")
    x, a = msg.extra, msg.arrays
    return {
        "station": str(x.get("station") or msg.src),
        "tick": int(x["tick"]),
        "t_ns": int(msg.t_ns),
        "sent_ns": int(msg.sent_ns),
        "latency_ns": int(x["latency_ns"]),
        "outcome": str(x.get("outcome", "")),
        "joints": _list(a["joints"]),
        "gt": _list(x.get("gt")),
        "presence": _ints(a["presence"]),
        "shares": _list(x.get("shares")),
        "shapley": _list(a["shapley"]),
        "degradation": _list(a["degradation"], 3),
        "degraded": _ints(x.get("degraded")) or [0] * schema.N_MODALITIES,
        "reasons": [str(r) for r in x["reasons"]] if x.get("reasons") is not None else None,
        "rehab": _rehab(x),
        "points": _points(a),
    }


def frame_from_record(record: dict, station: str) -> dict:
    """One recorded tick (``exporters.recorder``: JSONL line or NPZ row) -> frame."""
    if "tick" not in record or "joints" not in record:
        raise ValueError(f"a recorded tick needs 'tick' and 'joints', got keys {sorted(record)}; is this a "
                         f"pose recording made by `runtime serve --record`?")
    joints = record.get("joints")
    return {
        "station": str(record.get("station") or station),
        "tick": int(record["tick"]),
        "t_ns": int(record.get("tick_ns", 0)),
        "sent_ns": 0,
        "latency_ns": int(record.get("latency_ns", 0)),
        "outcome": str(record.get("outcome", "")),
        "joints": None if joints is None else _list(joints),
        "gt": _list(record.get("gt")),
        "presence": _ints(record.get("presence")) or [0] * schema.N_MODALITIES,
        "shares": _list(record.get("shares")),
        "shapley": _list(record.get("shapley")),
        "degradation": _list(record.get("degradation"), 3) or [0.0] * schema.N_MODALITIES,
        "degraded": _ints(record.get("degraded")) or [0] * schema.N_MODALITIES,
        "reasons": [str(r) for r in record["reasons"]] if record.get("reasons") is not None else None,
        "rehab": _rehab_of_record(record),
        "points": None,
    }


def _npz_records(path: Path):
    with np.load(path, allow_pickle=False) as z:
        keys = [k for k in z.files if not k.startswith(("has_", "input_")) and k not in ("coalition_poses",
                                                                                            "skipped_ticks")]
        arrays = {k: z[k] for k in keys}
        has = {k[4:]: z[k] for k in z.files if k.startswith("has_")}
    n = len(arrays.get("tick", ()))
    for t in range(n):
        yield {k: v[t] for k, v in arrays.items() if k not in has or bool(has[k][t])}


def _jsonl_records(path: Path):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: expected one JSON object per line, got {line[:60]!r} "
                                 f"({err.msg}); a line cut short by a killed process is the usual cause: "
                                 f"remove it") from err


RECORDING_READERS = {".jsonl": _jsonl_records, ".npz": _npz_records}


def load_recording(path: str | Path, max_frames: int = 36_000) -> list[dict]:
    """A JSONL or NPZ pose recording -> frames in tick order. Longer recordings are thinned
    evenly to ``max_frames`` (the slider still spans the whole recording)."""
    path = Path(path)
    reader = RECORDING_READERS.get(path.suffix)
    if reader is None:
        raise ValueError(f"recording {path}: expected a suffix in {sorted(RECORDING_READERS)} "
                         f"(made by `runtime serve --record`), got {path.suffix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"recording {path} does not exist")
    frames = [frame_from_record(r, station=path.stem) for r in reader(path)]
    if not frames:
        raise ValueError(f"recording {path} holds no ticks")
    frames.sort(key=lambda f: (f["t_ns"], f["tick"]))
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    return frames


def page_config(mode: str, source: str) -> dict:
    """What the page needs to know besides the frames: modality names and the skeleton."""
    side = ["centre"] * schema.N_JOINTS
    for i, name in enumerate(schema.H36M_JOINTS):
        if name.startswith("left_"):
            side[i] = "left"
        elif name.startswith("right_"):
            side[i] = "right"
    return {"mode": mode, "source": source, "modalities": list(schema.MODALITIES),
            "joints": list(schema.H36M_JOINTS), "edges": [list(e) for e in schema.SKELETON_EDGES], "side": side}
