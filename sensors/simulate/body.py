"""Per-subject body and per-sequence placement.

Per subject (constant over all of a subject's sequences): bone lengths, scaled around
``schema.REFERENCE_BONE_LENGTHS`` (a real MM-Fi frame) by one overall stature factor plus a small
independent factor per bone (left = right), the movement tempo and range of motion.

Per sequence (``place``): where the subject stands and which way they face. MM-Fi's sequences were
recorded one at a time, and the real ground truth puts the subject 3.0-3.4 m from the camera and
about +-0.3 m sideways, so the standing spot is drawn afresh for every sequence rather than tied to
the person: a normal around the centre of the room's standing area (the subject performs at a
spot in front of the sensor platform and deviates from it by centimetres to a decimetre), s.d.
``spot_spread`` x the area's width, clipped to the area.

Radii are the LiDAR capsule radii (SENSORS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sensors.core import schema


@dataclass(frozen=True)
class BodyConfig:
    """Spread of the subjects' bodies and movement styles."""

    stature_sigma: float = 0.045     # relative s.d. of the overall size factor
    stature_range: tuple[float, float] = (0.88, 1.12)
    bone_sigma: float = 0.03         # relative s.d. of each bone around the overall factor
    tempo_range: tuple[float, float] = (0.8, 1.25)   # repetition speed factor
    amplitude_range: tuple[float, float] = (0.8, 1.1)  # range-of-motion factor
    facing_deg_sigma: float = 6.0    # yaw away from facing the camera, drawn per sequence
    spot_spread: float = 0.2         # s.d. of the standing spot / width of the room's standing area

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
    facing_rad: float         # per sequence (see ``place``)
    depth_m: float            # pelvis z, per sequence
    x_m: float                # pelvis x, per sequence


def make_subject(name: str, rng: np.random.Generator, env, cfg: BodyConfig = BodyConfig()) -> Subject:
    """Draw a subject's constant body and style (and a first placement, which ``place`` redraws
    per sequence). ``rng`` must depend on the subject only."""
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


def place(subject: Subject, rng: np.random.Generator, env, cfg: BodyConfig = BodyConfig()) -> Subject:
    """The subject placed for one sequence: standing spot inside the room's standing area and
    facing yaw, drawn from ``rng`` (a per-sequence stream). Body and style are unchanged."""
    def spot(lo: float, hi: float) -> float:
        return float(np.clip((lo + hi) / 2 + cfg.spot_spread * (hi - lo) * rng.standard_normal(), lo, hi))

    return replace(subject, facing_rad=float(np.deg2rad(cfg.facing_deg_sigma) * rng.standard_normal()),
                   depth_m=spot(*env.subject_depth_m), x_m=spot(*env.subject_x_m))


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """joints [..., 17, 3] -> lengths [..., 16] of schema.SKELETON_EDGES (same units)."""
    a = np.array([e[0] for e in schema.SKELETON_EDGES])
    b = np.array([e[1] for e in schema.SKELETON_EDGES])
    return np.linalg.norm(joints[..., b, :] - joints[..., a, :], axis=-1)
