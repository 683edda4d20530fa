"""Per-subject body: bone lengths (constant for a subject), capsule radii, tempo and amplitude.

Bone lengths scale around ``schema.REFERENCE_BONE_LENGTHS`` (a real MM-Fi frame): one overall
stature factor per subject plus a small independent factor per bone. Left and right bones are
equal. Radii are the LiDAR capsule radii (SENSORS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors import schema


@dataclass(frozen=True)
class BodyConfig:
    """Spread of the subjects' bodies and movement styles."""

    stature_sigma: float = 0.045     # relative s.d. of the overall size factor
    stature_range: tuple[float, float] = (0.88, 1.12)
    bone_sigma: float = 0.03         # relative s.d. of each bone around the overall factor
    tempo_range: tuple[float, float] = (0.8, 1.25)   # repetition speed factor
    amplitude_range: tuple[float, float] = (0.8, 1.1)  # range-of-motion factor
    facing_deg_sigma: float = 6.0    # yaw away from facing the camera

    def __post_init__(self) -> None:
        if not 0 <= self.stature_sigma < 0.2 or not 0 <= self.bone_sigma < 0.2:
            raise ValueError("stature_sigma and bone_sigma must be relative spreads in [0, 0.2)")


# Capsule radii (metres) by bone name; torso side capsules handled in lidar.py.
BONE_RADIUS_M: dict[str, float] = {
    "hip": 0.09, "thigh": 0.08, "shank": 0.055, "pelvis_spine": 0.15, "spine_thorax": 0.16,
    "thorax_nose": 0.06, "nose_head": 0.10, "thorax_shoulder": 0.07, "upper_arm": 0.05, "forearm": 0.04,
}


@dataclass(frozen=True)
class Subject:
    name: str
    bones: dict[str, float]   # metres, constant for the subject
    tempo: float
    amplitude: float
    facing_rad: float
    depth_m: float            # pelvis z
    x_m: float                # pelvis x


def make_subject(name: str, rng: np.random.Generator, env, cfg: BodyConfig = BodyConfig()) -> Subject:
    """Draw a subject's constant body and style. ``rng`` must depend on the subject only."""
    stature = float(np.clip(1.0 + cfg.stature_sigma * rng.standard_normal(), *cfg.stature_range))
    bones = {b: float(length * stature * (1.0 + cfg.bone_sigma * rng.standard_normal()))
             for b, length in schema.REFERENCE_BONE_LENGTHS.items()}
    return Subject(
        name=name, bones=bones,
        tempo=float(rng.uniform(*cfg.tempo_range)),
        amplitude=float(rng.uniform(*cfg.amplitude_range)),
        facing_rad=float(np.deg2rad(cfg.facing_deg_sigma) * rng.standard_normal()),
        depth_m=float(rng.uniform(*env.subject_depth_m)),
        x_m=float(rng.uniform(*env.subject_x_m)),
    )


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """joints [..., 17, 3] -> lengths [..., 16] of schema.SKELETON_EDGES (same units)."""
    a = np.array([e[0] for e in schema.SKELETON_EDGES])
    b = np.array([e[1] for e in schema.SKELETON_EDGES])
    return np.linalg.norm(joints[..., b, :] - joints[..., a, :], axis=-1)
