"""Ground truth of the rehabilitation outputs, written beside each generated sequence.

``Azz/rehab_truth.json`` holds what the kinematic model used to move the subject, so the runtime's
repetition counts and ranges of motion can be measured against it (docs/rehab.md):

* ``start_s``, ``period_s``: the repetition clock. Repetition k (from 0) is the motion cycle
  ``[start_s + k * period_s, start_s + (k + 1) * period_s)``; its peak is in the middle of it
  (at the quarter and three quarters for the alternating legs of mark time);
* ``cycles``: those cycles that begin inside the recording, as ``{"index", "start_s", "end_s"}``
  (``end_s`` may lie past the last frame: the recording stopped mid-repetition);
* ``channels_deg``: the joint-angle channels of the model per frame (degrees), e.g. ``L_knee`` =
  the left knee bend, ``L_arm_elev`` / ``L_arm_azim`` = elevation from hanging and swing plane of
  the left upper arm in the trunk frame, ``torso_pitch`` / ``torso_roll``. Knee and elbow bends
  equal the knee and elbow flexion measured from the joints.

MM-Fi's reader ignores files it does not know, so the dataset stays in MM-Fi's layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sensors.core import schema

TRUTH_FILE = "rehab_truth.json"
TRUTH_VERSION = 1
ANGLE_CHANNELS = ("elbow", "knee", "arm_elev", "arm_azim", "leg_elev", "leg_azim")
TRUNK_CHANNELS = ("torso_pitch", "torso_roll", "torso_yaw", "pelvis_yaw")


def truth_of(action: str, channels: dict[str, np.ndarray]) -> dict:
    """The side-file content of one sequence from its kinematic channels (``cycle`` = repetitions
    elapsed at each frame, 0 before the subject starts moving)."""
    cycle = np.asarray(channels["cycle"], np.float64)
    n = cycle.size
    t = np.arange(n) / schema.FRAME_RATE_HZ
    moving = np.flatnonzero(cycle > 0)
    if moving.size < 2:
        raise ValueError(f"{action}: the motion never starts within {n} frames; cannot write its truth")
    a, b = moving[0], moving[-1]
    period = (t[b] - t[a]) / (cycle[b] - cycle[a])
    start = t[b] - cycle[b] * period
    cycles = [{"index": k, "start_s": round(start + k * period, 6), "end_s": round(start + (k + 1) * period, 6)}
              for k in range(int(np.floor(cycle[-1])) + 1)]
    names = [f"{s}_{c}" for s in ("L", "R") for c in ANGLE_CHANNELS] + list(TRUNK_CHANNELS)
    return {
        "version": TRUTH_VERSION, "action": action, "frame_rate_hz": schema.FRAME_RATE_HZ, "frames": n,
        "start_s": round(float(start), 6), "period_s": round(float(period), 6), "cycles": cycles,
        "channels_deg": {k: np.round(np.degrees(channels[k]), 3).tolist() for k in names},
    }


def write_truth(seq_dir: Path, truth: dict | None) -> None:
    """Write ``rehab_truth.json`` into the sequence folder (nothing when ``truth`` is None)."""
    if truth is not None:
        (Path(seq_dir) / TRUTH_FILE).write_text(json.dumps(truth, separators=(",", ":")))


def read_truth(seq_dir: Path) -> dict:
    """The side file of a generated sequence; a clear error when the dataset has none."""
    path = Path(seq_dir) / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: only datasets from `sensors simulate` carry the true "
                                "repetitions; regenerate the dataset with the current generator")
    data = json.loads(path.read_text())
    if data.get("version") != TRUTH_VERSION:
        raise ValueError(f"{path}: expected truth version {TRUTH_VERSION}, got {data.get('version')!r}")
    return data
