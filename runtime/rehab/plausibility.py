"""Per-tick plausibility of the predicted pose, for the rehabilitation trust (docs/rehab.md, "Trust").

Three checks, each causal (tick by tick, so they work live) and each for gross errors only: a
ground-truth skeleton of any P2 exercise never fails one (tests/test_rehab_trust.py).

* ``bone_length``: a person's bones do not change length. Each of the 8 long limb bones (thighs,
  shanks, upper arms, forearms: the bones the joint angles are measured on; the short trunk and
  head segments vary more in relative terms for a few millimetres) is compared with its median
  over the session's last ``history_ticks`` poses; a bone more than ``bone_tolerance`` (a
  fraction, 30 %) away from it fails, once ``warmup_ticks`` poses give the median;
* ``angle_limit``: a joint angle outside its physiological range (``runtime.rehab.angles``,
  ``PLAUSIBLE_RANGE_DEG``: the gate the monitor already runs; passed in);
* ``jitter``: the median over the joints, relative to the pelvis, of the second difference of
  their positions, ``|p(t) - 2 p(t-1) + p(t-2)|``, above ``jitter_m`` metres (8 cm: 80 m/s^2 at
  10 Hz, some 8 g at the median joint relative to the pelvis, which no exercise reaches). Smooth
  movement at 10 Hz gives a few millimetres (a squat's fastest phase 13 mm at the median joint); a
  pose that shakes from tick to tick gives much more. The median over joints ignores one fast limb (the
  arm swing of a jump) and the pelvis reference ignores the whole body moving (the jump itself).

``PoseChecker.update(pose, implausible_angles)`` returns the names of the checks this tick fails;
``reset()`` starts a new person (the monitor calls it when the session changes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sensors.core import schema

CHECKS: tuple[str, ...] = ("bone_length", "angle_limit", "jitter")
EDGES = np.asarray(schema.SKELETON_EDGES, np.int64)
LIMB_JOINTS = {schema.JOINT_INDEX[f"{s}_{j}"] for s in ("left", "right") for j in ("knee", "elbow")}
LIMB_BONES = np.array([i for i, (a, b) in enumerate(schema.SKELETON_EDGES) if a in LIMB_JOINTS or b in LIMB_JOINTS])
PELVIS = schema.JOINT_INDEX["pelvis"]


@dataclass(frozen=True)
class PlausibilityConfig:
    bone_tolerance: float = 0.3         # a limb bone this fraction longer or shorter than its session median
    jitter_m: float = 0.08              # median joint second difference (pelvis-relative), metres a tick
    warmup_ticks: int = 20              # poses before the bone medians are trusted
    history_ticks: int = 600            # poses the bone medians are taken over (60 s at 10 Hz)

    def __post_init__(self):
        if not 0 < self.bone_tolerance < 1 or self.jitter_m <= 0:
            raise ValueError(f"rehab plausibility: need bone_tolerance in (0, 1) and jitter_m > 0, got "
                             f"{self.bone_tolerance}, {self.jitter_m}")
        if not 1 <= self.warmup_ticks <= self.history_ticks:
            raise ValueError(f"rehab plausibility: need 1 <= warmup_ticks <= history_ticks, got {self.warmup_ticks}, "
                             f"{self.history_ticks}")


def bone_lengths(pose: np.ndarray) -> np.ndarray:
    """pose [..., 17, 3] -> [..., 16] lengths of the skeleton's bones."""
    p = np.asarray(pose, np.float64)
    return np.linalg.norm(p[..., EDGES[:, 0], :] - p[..., EDGES[:, 1], :], axis=-1)


class PoseChecker:
    """The checks of the module doc, tick by tick; counts failures per check in ``failed``."""

    def __init__(self, config: PlausibilityConfig = PlausibilityConfig()):
        self.config = config
        self.failed = dict.fromkeys(CHECKS, 0)
        self.reset()

    def reset(self) -> None:
        """A new session (another person): forget the bone medians and the last poses."""
        self._lengths: deque[np.ndarray] = deque(maxlen=self.config.history_ticks)
        self._median: np.ndarray | None = None
        self._recent: deque[np.ndarray] = deque(maxlen=3)

    def update(self, pose: np.ndarray | None, implausible_angles: bool = False) -> tuple[str, ...]:
        """One tick's pose [17, 3] metres (None: no pose, nothing judged) -> the checks it fails."""
        if pose is None:
            self._recent.clear()            # the second difference needs consecutive poses
            return ()
        p = np.asarray(pose, np.float64).reshape(schema.N_JOINTS, 3)
        if not np.isfinite(p).all():
            return ()
        out = []
        lengths = bone_lengths(p)[LIMB_BONES]
        if self._median is not None:
            if (np.abs(lengths / np.maximum(self._median, 1e-6) - 1.0) > self.config.bone_tolerance).any():
                out.append("bone_length")
        self._lengths.append(lengths)
        if len(self._lengths) >= self.config.warmup_ticks and (self._median is None or len(self._lengths) % 10 == 0):
            self._median = np.median(np.stack(self._lengths), axis=0)   # every 10 ticks: cheap, and slow anyway
        if implausible_angles:
            out.append("angle_limit")
        self._recent.append(p - p[PELVIS])
        if len(self._recent) == 3:
            a, b, c = self._recent
            if float(np.median(np.linalg.norm(c - 2.0 * b + a, axis=-1))) > self.config.jitter_m:
                out.append("jitter")
        for check in out:
            self.failed[check] += 1
        return tuple(out)
