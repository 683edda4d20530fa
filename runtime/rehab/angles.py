"""Joint angles (degrees) from the 17-joint Human3.6M pose, and their causal smoothing.

Definitions (docs/rehab.md has the figures). Joints in the camera frame (x right, y down, z depth),
any units; "left" and "right" are the subject's. Frames built from the pose at each tick:

* hip line ``l`` = left hip - right hip (points to the subject's left); trunk axis ``u`` = thorax -
  pelvis; world up ``w`` = -y (a level camera);
* pelvis frame: lateral ``l_p`` = ``l``; up ``u_p`` = ``u`` made orthogonal to ``l_p``; forward
  ``f_p = l_p x u_p``;
* trunk frame: lateral ``l_t`` = left shoulder - right shoulder made orthogonal to ``u``; up ``u``;
  forward ``f_t = l_t x u``;
* level frame (for the trunk lean): lateral ``l_w`` = ``l`` made horizontal; up ``w``; forward
  ``f_w = l_w x w``.

Angles (``CHANNELS`` order; limbs per side, 0 in the standing rest pose):

==========================  =========================================================================
``knee_flexion``            angle between thigh (hip->knee) and shank (knee->ankle); 0 = straight
``hip_flexion``             thigh in the pelvis sagittal plane (normal ``l_p``) from the trunk's down
                            axis ``-u_p``, positive forward: ``atan2(thigh.f_p, -thigh.u_p)``
``hip_abduction``           thigh out of the pelvis sagittal plane, positive outward (after the
                            flexion, as in a flexion-abduction Cardan sequence): ``asin(thigh.l_p)``
``elbow_flexion``           angle between upper arm (shoulder->elbow) and forearm (elbow->wrist)
``shoulder_flexion``        upper arm in the trunk sagittal plane (normal ``l_t``) from ``-u``, positive
                            forward (90 = arm forward horizontal, 180 = overhead)
``shoulder_abduction``      upper arm in the trunk frontal plane (normal ``f_t``), positive outward
                            (90 = arm out sideways, 180 = overhead)
``trunk_lean_sagittal``     trunk axis from the vertical in the level sagittal plane, positive forward
``trunk_lean_frontal``      trunk axis from the vertical in the level frontal plane, positive towards
                            the subject's left
==========================  =========================================================================

Projected (planar) angles are wrapped into (-90, 270] so an arm raised overhead never flips sign.
A planar angle is undefined (NaN, and the smoothed value holds) while the limb lies within 20 deg
of the plane's normal: shoulder abduction with the arm straight forward, shoulder flexion with the
arm straight out sideways, hip flexion with the thigh straight out sideways.

Plausibility (``PlausibilityGate``, causal, before the smoothing): a planar angle is continuous in
time, so each sample is unwrapped (+-360 deg) to the value nearest the channel's last plausible
one, as ``numpy.unwrap`` does offline, when that is at most ``max_step_deg`` away (90 deg a tick
at 10 Hz; a bigger turn is the projection passing near the plane's normal, as the arm swing of a
jump does to shoulder abduction, and is taken as it is); then any sample outside the angle's physiological range
(``PLAUSIBLE_RANGE_DEG``: normal adult ranges of motion with a margin, docs/rehab.md) is marked
implausible and dropped (NaN: the smoothed value holds). A pose that puts a limb across the cut at
-90/270 deg (an arm behind the back, a thigh pointing backwards) is outside every range, so a wild
prediction can no longer turn a few degrees of jitter into a 300 deg "range of motion". After
``reanchor_ticks`` without a plausible sample, or after an undefined one (the projection may turn
by up to 180 deg while the limb passes the plane's normal), the continuity restarts from the
wrapped value.

Smoothing: a causal Butterworth low-pass (``scipy.signal``; order 2, 3 Hz at 10 Hz by default:
well under 0.1 s of delay, keeps the content of exercise movements, which repeat at < 1 Hz but
can start sharply, as a knee lifted in mark time) run tick by tick with its
own state, started in steady state at the first value. A tick without a pose, or a non-finite
angle, holds the last smoothed value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from sensors.core import schema

J = schema.JOINT_INDEX
ANGLE_NAMES, LIMB_ANGLES, TRUNK_ANGLES = schema.ANGLE_NAMES, schema.LIMB_ANGLES, schema.TRUNK_ANGLES
SIDES, NO_SIDE = schema.ANGLE_SIDES, schema.NO_SIDE
# (angle, side) of every channel, in the order of the arrays this module returns.
CHANNELS: tuple[tuple[str, str], ...] = schema.ANGLE_CHANNELS
CHANNEL_INDEX: dict[tuple[str, str], int] = {c: i for i, c in enumerate(CHANNELS)}
N_CHANNELS = len(CHANNELS)
WORLD_UP = np.array([0.0, -1.0, 0.0])   # camera y points down
UNDEFINED_WITHIN_DEG = 20.0              # a planar angle is undefined this close to the plane's normal
SIN_UNDEFINED = float(np.sin(np.radians(UNDEFINED_WITHIN_DEG)))


def channel_key(angle: str, side: str) -> str:
    """``knee_flexion_left`` ... ``trunk_lean_frontal`` (the wire and report name of a channel)."""
    return angle if side == NO_SIDE else f"{angle}_{side}"


CHANNEL_KEYS: tuple[str, ...] = tuple(channel_key(a, s) for a, s in CHANNELS)

# The words a therapist reads for each angle: (positive direction, negative direction or None for an
# angle that is never negative). A signed angle is shown as its magnitude with the word of its
# sign, as goniometry records it: shoulder flexion -38 deg is "shoulder extension 38 deg".
ANGLE_WORDS: dict[str, tuple[str, str | None]] = {
    "knee_flexion": ("knee flexion", None), "elbow_flexion": ("elbow flexion", None),
    "hip_flexion": ("hip flexion", "hip extension"), "hip_abduction": ("hip abduction", "hip adduction"),
    "shoulder_flexion": ("shoulder flexion", "shoulder extension"),
    "shoulder_abduction": ("shoulder abduction", "shoulder adduction"),
    "trunk_lean_sagittal": ("trunk lean forward", "trunk lean backward"),
    "trunk_lean_frontal": ("trunk lean to the left", "trunk lean to the right"),
}


def channel_label(key: str, value: float | None = None) -> str:
    """``knee_flexion_left`` -> "left knee flexion"; ``knee_flexion`` (both sides) -> "knee flexion
    (both sides)"; with a negative ``value`` of a signed angle, the word of that direction
    ("left shoulder extension")."""
    angle, side = key, None
    for s in SIDES:
        if key.endswith("_" + s):
            angle, side = key[: -len(s) - 1], s
    if angle not in ANGLE_WORDS:
        return key.replace("_", " ")
    positive, negative = ANGLE_WORDS[angle]
    words = negative if negative and value is not None and value < 0 else positive
    if side:
        return f"{side} {words}"
    return words if angle in TRUNK_ANGLES else f"{words} (both sides)"


def channel_reading(key: str, value: float | None, digits: int = 1) -> str:
    """A channel's value in words: "left shoulder extension 38.0°" ("-" when there is none)."""
    if value is None or not np.isfinite(value):
        return f"{channel_label(key)} -"
    return f"{channel_label(key, value)} {abs(value):.{digits}f}°"


# Small-vector helpers on [..., 3] arrays, written out: a tick computes them on single vectors,
# where numpy's general cross/norm cost more in call overhead than in arithmetic.
def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1)


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt((v * v).sum(axis=-1))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    n = _norm(v)[..., None]
    return v / np.where(n > 1e-12, n, 1.0)


def _orthogonal(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Unit part of ``v`` orthogonal to the unit ``axis``."""
    return _unit(v - _dot(v, axis)[..., None] * axis)


def _between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unsigned angle (degrees) between vectors, robust near 0 and 180."""
    return np.degrees(np.arctan2(_norm(_cross(a, b)), _dot(a, b)))


def _planar(v: np.ndarray, positive: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Angle (degrees) of ``v`` projected on the plane spanned by unit ``zero`` (0 deg) and
    ``positive`` (90 deg), wrapped into (-90, 270]; NaN when ``v`` lies within
    ``UNDEFINED_WITHIN_DEG`` of the plane's normal (the projection says nothing there)."""
    x, y = _dot(v, zero), _dot(v, positive)
    a = np.degrees(np.arctan2(y, x))
    a = np.where(a <= -90.0, a + 360.0, a)
    defined = np.hypot(x, y) >= SIN_UNDEFINED * _norm(v)
    return np.where(defined, a, np.nan)


def _out_of_plane(v: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Angle (degrees) of ``v`` out of the plane with unit ``normal``, positive towards it."""
    return np.degrees(np.arcsin(np.clip(_dot(_unit(v), normal), -1.0, 1.0)))


def two(v: np.ndarray) -> np.ndarray:
    """[..., 3] -> [..., 1, 3]: one axis for both sides."""
    return v[..., None, :]


# Physiological range (degrees) of each angle as defined here. Normal adult active ranges (AAOS,
# tabulated by Norkin & White; Soucie et al. 2011; docs/rehab.md) widened by what the definition
# adds (hip flexion against the trunk includes lumbar flexion; the trunk lean from the vertical
# includes hip flexion) and a margin of 15-20 deg for skeleton and pose error. The gate is for gross
# errors only: ground-truth exercise skeletons never leave these ranges (tests/test_rehab.py).
PLAUSIBLE_RANGE_DEG: dict[str, tuple[float, float]] = {
    "knee_flexion": (0.0, 165.0),           # flexion 0-135 (AAOS), 140-150 passive
    "hip_flexion": (-50.0, 165.0),          # extension 30, flexion 120 (AAOS); + lumbar flexion
    "hip_abduction": (-50.0, 75.0),         # adduction 30, abduction 45 (AAOS)
    "elbow_flexion": (0.0, 165.0),          # flexion 0-150 (AAOS)
    "shoulder_flexion": (-75.0, 210.0),     # extension 60, flexion 180 (AAOS)
    "shoulder_abduction": (-65.0, 230.0),   # adduction 45, abduction 180 (AAOS); an arm overhead in a
                                            # side bend passes over the head (generated A24/A25: 217)
    "trunk_lean_sagittal": (-50.0, 135.0),  # thoracolumbar extension 25 / flexion 80 (AAOS) + hips
    "trunk_lean_frontal": (-60.0, 60.0),    # lateral flexion 35 each side (AAOS) + pelvic tilt
}
PLANAR_ANGLES: tuple[str, ...] = ("hip_flexion", "shoulder_flexion", "shoulder_abduction", "trunk_lean_sagittal",
                                  "trunk_lean_frontal")   # projected on a plane: wrapped into (-90, 270]
PLANAR = np.array([a in PLANAR_ANGLES for a, _ in CHANNELS])
PLAUSIBLE_LOW = np.array([PLAUSIBLE_RANGE_DEG[a][0] for a, _ in CHANNELS])
PLAUSIBLE_HIGH = np.array([PLAUSIBLE_RANGE_DEG[a][1] for a, _ in CHANNELS])


# Largest range of motion of one repetition (degrees): the joint's normal arc from one end of its
# range to the other (AAOS, as above) plus 15 deg; knee and elbow: their whole plausible range.
MAX_ROM_DEG: dict[str, float] = {
    "knee_flexion": 165.0, "hip_flexion": 165.0, "hip_abduction": 90.0, "elbow_flexion": 165.0,
    "shoulder_flexion": 255.0, "shoulder_abduction": 240.0, "trunk_lean_sagittal": 120.0, "trunk_lean_frontal": 85.0,
}


def max_rom_deg(angle: str) -> float:
    """The largest physiological range of motion of one repetition of ``angle`` (degrees)."""
    return MAX_ROM_DEG[angle]


def joint_angles(joints: np.ndarray) -> np.ndarray:
    """joints [..., 17, 3] -> angles [..., N_CHANNELS] in degrees, ``CHANNELS`` order."""
    p = np.asarray(joints, np.float64)
    if p.shape[-2:] != (schema.N_JOINTS, 3):
        raise ValueError(f"joint_angles: expected joints [..., {schema.N_JOINTS}, 3] (H36M-17), got {p.shape}")
    lhip, rhip = p[..., J["left_hip"], :], p[..., J["right_hip"], :]
    up = _unit(p[..., J["thorax"], :] - p[..., J["pelvis"], :])
    lat_p = _unit(lhip - rhip)
    up_p = _orthogonal(up, lat_p)
    fwd_p = _cross(lat_p, up_p)
    lat_t = _orthogonal(p[..., J["left_shoulder"], :] - p[..., J["right_shoulder"], :], up)
    fwd_t = _cross(lat_t, up)
    w = np.broadcast_to(WORLD_UP, up.shape)
    lat_w = _orthogonal(lhip - rhip, w)
    fwd_w = _cross(lat_w, w)
    # Both sides at once: [..., 2, 3] (left, right); the lateral axes point outward per side.
    side_j = {j: [J[f"left_{j}"], J[f"right_{j}"]] for j in ("hip", "knee", "ankle", "shoulder", "elbow", "wrist")}
    hip, knee, ankle = (p[..., side_j[j], :] for j in ("hip", "knee", "ankle"))
    sh, el, wr = (p[..., side_j[j], :] for j in ("shoulder", "elbow", "wrist"))
    thigh, shank, upper, fore = knee - hip, ankle - knee, el - sh, wr - el
    outward = np.array([1.0, -1.0])[:, None]
    limb = {
        "knee_flexion": _between(thigh, shank),
        "hip_flexion": _planar(thigh, two(fwd_p), -two(up_p)),
        "hip_abduction": _out_of_plane(thigh, outward * two(lat_p)),
        "elbow_flexion": _between(upper, fore),
        "shoulder_flexion": _planar(upper, two(fwd_t), -two(up)),
        "shoulder_abduction": _planar(upper, outward * two(lat_t), -two(up)),
    }
    trunk = _planar(np.stack([up, up], axis=-2), np.stack([fwd_w, lat_w], axis=-2), two(w))
    out = np.concatenate([limb[a] for a in LIMB_ANGLES] + [trunk], axis=-1)   # CHANNELS order
    return out


def unwrap_towards(values: np.ndarray, reference: np.ndarray, max_step: float = 180.0) -> np.ndarray:
    """``values + 360 k`` nearest ``reference`` (degrees, elementwise); ``values`` where the reference
    is NaN or that nearest value is more than ``max_step`` away. Sample by sample against the
    previous value, with the default ``max_step``, this is ``numpy.unwrap(period=360)``."""
    v, r = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    k = np.round(np.where(np.isfinite(r), r - v, 0.0) / 360.0)
    u = v + 360.0 * np.nan_to_num(k)
    return np.where(np.abs(u - np.where(np.isfinite(r), r, u)) <= max_step, u, v)


class PlausibilityGate:
    """Causal, tick by tick, on ``N_CHANNELS`` raw angles (see the module doc): planar channels
    unwrapped against their last plausible sample, then samples outside ``PLAUSIBLE_RANGE_DEG``
    dropped (NaN). ``implausible`` counts the dropped samples per channel."""

    def __init__(self, reanchor_ticks: int = 10, max_step_deg: float = 90.0):
        if reanchor_ticks < 1 or not 0 < max_step_deg <= 180:
            raise ValueError(f"reanchor_ticks must be >= 1 and max_step_deg in (0, 180], got {reanchor_ticks}, "
                             f"{max_step_deg}")
        self.reanchor_ticks, self.max_step_deg = int(reanchor_ticks), float(max_step_deg)
        self.reference = np.full(N_CHANNELS, np.nan)      # last plausible (unwrapped) sample
        self.missed = np.zeros(N_CHANNELS, np.int64)      # ticks since it
        self.implausible = np.zeros(N_CHANNELS, np.int64)

    def update(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """values [N_CHANNELS] degrees (NaN = undefined) -> (kept [N_CHANNELS], NaN where dropped or
        undefined; implausible [N_CHANNELS] bool: dropped as outside the physiological range)."""
        x = np.asarray(values, np.float64).reshape(N_CHANNELS)
        reference = np.where(self.missed < self.reanchor_ticks, self.reference, np.nan)
        x = np.where(PLANAR, unwrap_towards(x, reference, self.max_step_deg), x)
        finite = np.isfinite(x)
        implausible = finite & ((x < PLAUSIBLE_LOW) | (x > PLAUSIBLE_HIGH))
        ok = finite & ~implausible
        # An undefined sample (limb near the plane's normal) breaks the continuity: the projection
        # may turn by up to 180 deg while the limb passes the normal, so the next one is taken as is.
        self.reference = np.where(ok, x, np.where(finite, self.reference, np.nan))
        self.missed = np.where(ok, 0, self.missed + 1)
        self.implausible += implausible
        return np.where(ok, x, np.nan), implausible


def gate_series(angles: np.ndarray, reanchor_ticks: int = 10, max_step_deg: float = 90.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """angles [T, N_CHANNELS] -> (kept, implausible) of ``PlausibilityGate`` tick by tick (offline)."""
    g = PlausibilityGate(reanchor_ticks, max_step_deg)
    out = [g.update(a) for a in np.asarray(angles, np.float64)]
    if not out:
        return np.zeros((0, N_CHANNELS)), np.zeros((0, N_CHANNELS), bool)
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


@dataclass(frozen=True)
class SmoothingConfig:
    """Causal low-pass of the angles: Butterworth ``order``, ``cutoff_hz`` at the tick rate."""

    cutoff_hz: float = 3.0
    order: int = 2
    rate_hz: float = schema.FRAME_RATE_HZ

    def __post_init__(self):
        if not 0 < self.cutoff_hz < self.rate_hz / 2:
            raise ValueError(f"angle smoothing cutoff_hz must be in (0, rate_hz/2 = {self.rate_hz / 2}), "
                             f"got {self.cutoff_hz}")
        if not 1 <= self.order <= 8:
            raise ValueError(f"angle smoothing order must be in 1..8, got {self.order}")


class AngleFilter:
    """Tick-by-tick causal smoothing of ``n`` angle channels (state kept between calls)."""

    def __init__(self, n: int = N_CHANNELS, config: SmoothingConfig = SmoothingConfig()):
        self.config = config
        self.sos = signal.butter(config.order, config.cutoff_hz, btype="low", output="sos", fs=config.rate_hz)
        self._zi0 = signal.sosfilt_zi(self.sos)           # [sections, 2] for a unit step
        self.n = n
        self.state: np.ndarray | None = None              # [sections, n, 2]
        self.last: np.ndarray | None = None

    def update(self, values: np.ndarray | None) -> np.ndarray | None:
        """values [n] (NaN = unknown) or None (no pose) -> smoothed [n], or None before the first pose."""
        if values is None:
            return None if self.last is None else self.last.copy()
        x = np.asarray(values, np.float64).reshape(self.n)
        if self.state is None:
            if not np.all(np.isfinite(x)):
                x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            self.state = self._zi0[:, None, :] * x[None, :, None]
            self.last = x.copy()
        x = np.where(np.isfinite(x), x, self.last)
        y, self.state = signal.sosfilt(self.sos, x[:, None], axis=-1, zi=self.state)
        self.last = y[:, 0]
        return self.last.copy()


def smooth_series(angles: np.ndarray, config: SmoothingConfig = SmoothingConfig()) -> np.ndarray:
    """angles [T, n] -> the same causal smoothing as ``AngleFilter`` tick by tick (offline use)."""
    f = AngleFilter(angles.shape[1], config)
    return np.stack([f.update(a) for a in angles]) if len(angles) else np.zeros_like(angles)
