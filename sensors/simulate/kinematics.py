"""Parametric motions of the 27 MM-Fi actions and forward kinematics to Human3.6M-17 joints.

A motion is a set of joint-angle channels over time (radians, metres for root offsets). Forward
kinematics places each bone as ``parent + length * unit direction``, so bone lengths are exactly
the subject's constant lengths in every frame.

Local body axes match the camera frame of a subject facing the camera: x = the subject's left
(camera right), y = down, z = the subject's back (away from the camera). Limb directions are
spherical: ``elev`` from straight down (0 hanging, pi/2 horizontal, pi up) and ``azim`` of the
swing plane (0 outward to the side, pi/2 forward, negative = backward).

Motions are smooth: repetitions follow a raised cosine (period >= 2 s before the subject's tempo)
after a smooth start, and waving runs at 1.2 Hz, so the ground truth stays below 2-3 Hz as in
MM-Fi (a test checks the spectrum of every action).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sensors.core import schema
from sensors.simulate.body import Subject

J = schema.JOINT_INDEX
SIDES = {"L": 1.0, "R": -1.0}  # sign of the subject's left/right along local x
ANKLE_HEIGHT_M = 0.08          # ankle joint above the floor
ROOT_CHANNELS = ("dx", "dz", "lift", "pelvis_yaw", "torso_yaw", "torso_pitch", "torso_roll", "head_pitch")
LIMB_CHANNELS = ("arm_elev", "arm_azim", "elbow", "elbow_up", "leg_elev", "leg_azim", "knee")
REST = {"arm_elev": 0.12, "arm_azim": 0.0, "elbow": 0.15, "elbow_up": 0.3,
        "leg_elev": 0.04, "leg_azim": 0.0, "knee": 0.02}
MIRRORED_SIGN = {"dx": -1.0, "pelvis_yaw": -1.0, "torso_yaw": -1.0, "torso_roll": -1.0}
HALF_PI = np.pi / 2

Channels = dict[str, np.ndarray]


def rest_channels(n: int) -> Channels:
    """Standing still, arms hanging: root channels 0, limbs at ``REST``."""
    ch = {k: np.zeros(n) for k in ROOT_CHANNELS}
    for side in SIDES:
        for k in LIMB_CHANNELS:
            ch[f"{side}_{k}"] = np.full(n, REST[k])
    return ch


def _smooth(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)


# --------------------------------------------------------------------------------------------
# Actions, written for the left side (L = the acting limb, R = the other); mirrored for "right".
# Each takes (channels, p, t, u, e): p in [0, 1] is the repetition profile, t seconds, u the cycle
# fraction in [0, 1) and e the start envelope in [0, 1]. Edits the channels in place.
# --------------------------------------------------------------------------------------------
def _stretching(c, p, t, u, e):
    for s in SIDES:
        c[f"{s}_arm_elev"] = 0.12 + 2.75 * p
        c[f"{s}_arm_azim"] = 1.0 - 0.6 * p
        c[f"{s}_elbow"] = 0.15 + 0.2 * (1 - p)
    c["torso_pitch"] = -0.12 * p
    c["head_pitch"] = -0.3 * p


def _chest_horizontal(c, p, t, u, e):
    for s in SIDES:
        c[f"{s}_arm_elev"] = np.full_like(p, HALF_PI - 0.08)
        c[f"{s}_arm_azim"] = 0.15 - 0.45 * p
        c[f"{s}_elbow"] = 1.55 * (1 - p) + 0.05
        c[f"{s}_elbow_up"] = np.zeros_like(p)


def _chest_vertical(c, p, t, u, e):
    for s in SIDES:
        c[f"{s}_arm_elev"] = HALF_PI + 1.25 * p
        c[f"{s}_arm_azim"] = HALF_PI - 1.3 * p
        c[f"{s}_elbow"] = 0.9 * (1 - p) + 0.1
        c[f"{s}_elbow_up"] = np.full_like(p, 1.2)


def _twist(c, p, t, u, e):
    c["torso_yaw"] = 0.75 * p
    c["pelvis_yaw"] = 0.12 * p
    for s in SIDES:
        c[f"{s}_arm_elev"] = np.full_like(p, 1.25)
        c[f"{s}_arm_azim"] = np.full_like(p, 1.1)
        c[f"{s}_elbow"] = np.full_like(p, 1.5)


def _mark_time(c, p, t, u, e):
    left = e * np.clip(np.sin(2 * np.pi * u), 0, None) ** 1.5
    right = e * np.clip(-np.sin(2 * np.pi * u), 0, None) ** 1.5
    for s, lift in (("L", left), ("R", right)):
        c[f"{s}_leg_elev"] = 0.04 + 0.95 * lift
        c[f"{s}_leg_azim"] = np.full_like(p, HALF_PI)
        c[f"{s}_knee"] = 0.02 + 1.6 * lift
    for s, swing in (("L", right - left), ("R", left - right)):
        c[f"{s}_arm_elev"] = 0.35 * swing  # negative elevation = swung backwards
        c[f"{s}_arm_azim"] = np.full_like(p, HALF_PI)
        c[f"{s}_elbow"] = 0.3 + 0.4 * np.abs(swing)


def _limb_extension(c, p, t, u, e):
    c["L_arm_elev"] = 0.12 + 2.45 * p
    c["L_arm_azim"] = 0.2 + 0.4 * p
    c["L_leg_elev"] = 0.04 + 0.55 * p
    c["L_leg_azim"] = 0.2 - 0.3 * p
    c["torso_roll"] = -0.06 * p


def _limb_extension_both(c, p, t, u, e):
    for s in SIDES:
        c[f"{s}_arm_elev"] = 0.12 + 2.5 * p
        c[f"{s}_arm_azim"] = np.full_like(p, 0.15)
        c[f"{s}_leg_elev"] = 0.04 + 0.32 * p
        c[f"{s}_leg_azim"] = np.zeros_like(p)


def _lunge_front(c, p, t, u, e):
    c["L_leg_elev"] = 0.04 + 1.15 * p
    c["L_leg_azim"] = np.full_like(p, HALF_PI)
    c["L_knee"] = 0.02 + 1.35 * p
    c["R_leg_elev"] = 0.04 + 0.45 * p
    c["R_leg_azim"] = np.full_like(p, -HALF_PI)
    c["R_knee"] = 0.02 + 1.0 * p
    c["dz"] = -0.28 * p
    for s in SIDES:
        c[f"{s}_arm_elev"] = np.full_like(p, 0.25)
        c[f"{s}_arm_azim"] = np.full_like(p, 1.2)
        c[f"{s}_elbow"] = np.full_like(p, 1.7)
        c[f"{s}_elbow_up"] = np.full_like(p, 0.8)


def _squat(c, p, t, u, e):
    for s in SIDES:
        c[f"{s}_leg_elev"] = 0.04 + 1.3 * p
        c[f"{s}_leg_azim"] = np.full_like(p, HALF_PI - 0.25)
        c[f"{s}_knee"] = 0.02 + 2.1 * p
        c[f"{s}_arm_elev"] = 0.12 + 1.3 * p
        c[f"{s}_arm_azim"] = np.full_like(p, HALF_PI - 0.1)
    c["torso_pitch"] = 0.55 * p


def _raise_hand(c, p, t, u, e):
    c["L_arm_elev"] = 0.12 + 2.8 * p
    c["L_arm_azim"] = 0.25 + 0.5 * p
    c["L_elbow"] = 0.15 + 0.15 * (1 - p)


def _lunge_side(c, p, t, u, e):
    c["L_leg_elev"] = 0.04 + 0.6 * p
    c["L_leg_azim"] = np.full_like(p, 0.3)
    c["L_knee"] = 0.02 + 1.15 * p
    c["R_leg_elev"] = 0.04 + 0.35 * p
    c["R_leg_azim"] = np.zeros_like(p)
    c["dx"] = 0.22 * p
    c["torso_roll"] = -0.08 * p
    for s in SIDES:
        c[f"{s}_arm_elev"] = 0.12 + 0.6 * p
        c[f"{s}_arm_azim"] = np.full_like(p, HALF_PI)


def _wave(c, p, t, u, e):
    on = _smooth(np.clip(1.6 * p, 0, 1))
    c["L_arm_elev"] = 0.12 + 2.0 * on
    c["L_arm_azim"] = np.full_like(p, 0.35)
    c["L_elbow"] = 0.15 + on * (0.55 + 0.4 * np.sin(2 * np.pi * 1.2 * t))
    c["L_elbow_up"] = 0.3 + 1.2 * on


def _pick_up(c, p, t, u, e):
    c["torso_pitch"] = 1.15 * p
    c["head_pitch"] = 0.2 * p
    for s in SIDES:
        c[f"{s}_leg_elev"] = 0.04 + 0.45 * p
        c[f"{s}_leg_azim"] = np.full_like(p, HALF_PI)
        c[f"{s}_knee"] = 0.02 + 0.8 * p
    c["R_arm_elev"] = 0.12 + 1.25 * p
    c["R_arm_azim"] = np.full_like(p, HALF_PI)
    c["L_arm_elev"] = 0.12 + 0.9 * p
    c["L_arm_azim"] = np.full_like(p, HALF_PI)


def _throw(c, p, t, u, e):
    c["L_arm_elev"] = 0.12 + 2.3 * p
    c["L_arm_azim"] = HALF_PI - 2.1 * p
    c["L_elbow"] = 0.2 + 1.3 * np.sin(np.pi * p)
    c["L_elbow_up"] = np.full_like(p, 1.1)
    c["torso_yaw"] = 0.35 * p
    c["R_arm_elev"] = 0.12 + 0.8 * p
    c["R_arm_azim"] = np.full_like(p, HALF_PI)


def _kick(c, p, t, u, e):
    c["L_leg_elev"] = 0.04 + 1.1 * p
    c["L_leg_azim"] = np.full_like(p, HALF_PI)
    c["L_knee"] = 0.02 + 1.4 * np.sin(np.pi * p) ** 2
    c["torso_pitch"] = -0.1 * p
    for s in SIDES:
        c[f"{s}_arm_elev"] = 0.12 + 0.45 * p
        c[f"{s}_arm_azim"] = np.full_like(p, 0.2)


def _body_extension(c, p, t, u, e):
    c["torso_roll"] = 0.42 * p
    c["R_arm_elev"] = 0.12 + 2.75 * p
    c["R_arm_azim"] = np.full_like(p, 0.1)
    c["L_arm_elev"] = 0.12 + 0.2 * p
    c["L_leg_elev"] = 0.04 + 0.1 * p


def _bump(u, centre, width):
    x = np.clip((u - centre) / width, -1, 1)
    return np.cos(HALF_PI * x) ** 2


def _jump(c, p, t, u, e):
    crouch = e * (_bump(u, 0.25, 0.2) + 0.6 * _bump(u, 0.85, 0.13))
    air = e * _bump(u, 0.55, 0.15)
    c["lift"] = 0.2 * air
    for s in SIDES:
        c[f"{s}_leg_elev"] = 0.04 + 0.7 * crouch + 0.1 * air
        c[f"{s}_leg_azim"] = np.full_like(p, HALF_PI)
        c[f"{s}_knee"] = 0.02 + 1.2 * crouch + 0.2 * air
        c[f"{s}_arm_elev"] = 0.12 + 0.4 * crouch + 1.8 * air
        c[f"{s}_arm_azim"] = HALF_PI - 1.2 * crouch


def _bow(c, p, t, u, e):
    c["torso_pitch"] = 1.05 * p
    c["head_pitch"] = 0.25 * p
    for s in SIDES:  # arms hang: compensate the trunk pitch
        c[f"{s}_arm_elev"] = 0.12 + 0.95 * p
        c[f"{s}_arm_azim"] = np.full_like(p, HALF_PI)


# action -> (motion, mirrored, base repetition period in seconds)
ACTIONS: dict[str, tuple[Callable, bool, float]] = {
    "A01": (_stretching, False, 4.5), "A02": (_chest_horizontal, False, 3.0),
    "A03": (_chest_vertical, False, 3.2), "A04": (_twist, False, 3.5), "A05": (_twist, True, 3.5),
    "A06": (_mark_time, False, 2.0), "A07": (_limb_extension, False, 3.5),
    "A08": (_limb_extension, True, 3.5), "A09": (_lunge_front, False, 4.0),
    "A10": (_lunge_front, True, 4.0), "A11": (_limb_extension_both, False, 3.0), "A12": (_squat, False, 4.0),
    "A13": (_raise_hand, False, 3.5), "A14": (_raise_hand, True, 3.5), "A15": (_lunge_side, False, 4.0),
    "A16": (_lunge_side, True, 4.0), "A17": (_wave, False, 6.0), "A18": (_wave, True, 6.0),
    "A19": (_pick_up, False, 4.5), "A20": (_throw, False, 3.0), "A21": (_throw, True, 3.0),
    "A22": (_kick, False, 2.8), "A23": (_kick, True, 2.8), "A24": (_body_extension, False, 4.0),
    "A25": (_body_extension, True, 4.0), "A26": (_jump, False, 3.0), "A27": (_bow, False, 4.0),
}


def _mirror(c: Channels) -> Channels:
    out = {}
    for k, v in c.items():
        if k[:2] in ("L_", "R_"):
            out[("R_" if k[0] == "L" else "L_") + k[2:]] = v
        else:
            out[k] = v * MIRRORED_SIGN.get(k, 1.0)
    return out


def action_channels(action: str, n: int, subject: Subject, rng: np.random.Generator) -> Channels:
    """Joint-angle channels [n] of one sequence of ``action`` by ``subject``.

    Per sequence: start delay (the subject stands still first), phase, slow amplitude drift and a
    small postural sway, all from ``rng``.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: expected one of A01..A27")
    motion, mirrored, period = ACTIONS[action]
    t = np.arange(n) / schema.FRAME_RATE_HZ
    period = period / subject.tempo * rng.uniform(0.93, 1.07)
    start = rng.uniform(0.8, 2.5)
    envelope = _smooth(np.clip((t - start) / 1.0, 0, 1))
    phase = np.clip(t - start, 0, None) * 2 * np.pi / period
    p = envelope * (0.5 - 0.5 * np.cos(phase))
    u = (phase / (2 * np.pi)) % 1.0
    rest = rest_channels(n)
    c = rest_channels(n)
    motion(c, p, t, u, envelope)
    if mirrored:
        c = _mirror(c)
    amp = subject.amplitude * (1.0 + 0.06 * np.sin(2 * np.pi * t / rng.uniform(9, 15) + rng.uniform(0, 6.3)))
    c = {k: rest[k] + amp * (v - rest[k]) for k, v in c.items()}  # range of motion around rest
    c["dx"] = c["dx"] + 0.012 * np.sin(2 * np.pi * t / rng.uniform(6, 12) + rng.uniform(0, 6.3))
    c["dz"] = c["dz"] + 0.008 * np.sin(2 * np.pi * t / rng.uniform(6, 12) + rng.uniform(0, 6.3))
    c["cycle"] = np.clip(t - start, 0, None) / period   # repetitions elapsed (truth.py writes them down)
    return c


# --------------------------------------------------------------------------------------------
# Forward kinematics
# --------------------------------------------------------------------------------------------
def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _apply(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """r [T,3,3] @ v [T,3] or [3] -> [T,3]."""
    return np.einsum("tij,tj->ti", r, np.broadcast_to(v, (r.shape[0], 3)))


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def limb_direction(elev: np.ndarray, azim: np.ndarray, sign: float) -> np.ndarray:
    """Unit limb direction [T,3] in local axes (x left, y down, z back)."""
    se = np.sin(elev)
    return np.stack([sign * se * np.cos(azim), np.cos(elev), -se * np.sin(azim)], -1)


def bend(u: np.ndarray, target: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate unit vectors u [T,3] by ``angle`` towards ``target`` [T,3] (stays unit length)."""
    w = target - np.sum(target * u, -1, keepdims=True) * u
    norm = np.linalg.norm(w, axis=-1, keepdims=True)
    fallback = np.cross(u, np.array([1.0, 0.0, 0.0]))
    w = np.where(norm > 1e-6, w / np.maximum(norm, 1e-12), _unit(fallback + 1e-9))
    return np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * w


def forward_kinematics(c: Channels, subject: Subject, floor_y: float) -> np.ndarray:
    """Channels -> joints float64 [T, 17, 3], metres, camera frame (x right, y down, z depth)."""
    b = subject.bones
    n = len(c["dx"])
    face = np.full(n, subject.facing_rad)
    r_pel = _rot_y(face + c["pelvis_yaw"])
    r_torso = r_pel @ _rot_y(c["torso_yaw"]) @ _rot_x(c["torso_pitch"]) @ _rot_z(c["torso_roll"])
    r_head = r_torso @ _rot_x(c["head_pitch"])
    j = np.zeros((n, schema.N_JOINTS, 3))
    # legs relative to a root at the origin first, then lift the root so the lower foot is on the floor
    fwd, up, back_down = np.array([0, 0, -1.0]), np.array([0, -1.0, 0]), np.array([0, 0.5, 1.0])
    for side, sign in SIDES.items():
        hip, knee, ankle = ((J["left_hip"], J["left_knee"], J["left_ankle"]) if side == "L"
                            else (J["right_hip"], J["right_knee"], J["right_ankle"]))
        thigh = limb_direction(c[f"{side}_leg_elev"], c[f"{side}_leg_azim"], sign)
        shank = bend(thigh, np.broadcast_to(back_down, thigh.shape), c[f"{side}_knee"])
        j[:, hip] = _apply(r_pel, np.array([sign * b["hip"], 0.0, 0.0]))
        j[:, knee] = j[:, hip] + b["thigh"] * _apply(r_pel, thigh)
        j[:, ankle] = j[:, knee] + b["shank"] * _apply(r_pel, shank)
    spine_dir = _unit(np.array([0.0, -1.0, -0.07]))
    j[:, J["spine"]] = b["pelvis_spine"] * _apply(r_torso, spine_dir)
    j[:, J["thorax"]] = j[:, J["spine"]] + b["spine_thorax"] * _apply(r_torso, spine_dir)
    j[:, J["neck_nose"]] = j[:, J["thorax"]] + b["thorax_nose"] * _apply(r_head, _unit(np.array([0, -0.87, -0.49])))
    j[:, J["head"]] = j[:, J["neck_nose"]] + b["nose_head"] * _apply(r_head, _unit(np.array([0, -0.87, 0.49])))
    for side, sign in SIDES.items():
        sh, el, wr = ((J["left_shoulder"], J["left_elbow"], J["left_wrist"]) if side == "L"
                      else (J["right_shoulder"], J["right_elbow"], J["right_wrist"]))
        upper = limb_direction(c[f"{side}_arm_elev"], c[f"{side}_arm_azim"], sign)
        beta = c[f"{side}_elbow_up"][:, None]
        target = np.cos(beta) * fwd + np.sin(beta) * up + np.array([-0.3 * sign, 0.0, 0.0])
        fore = bend(upper, target, c[f"{side}_elbow"])
        j[:, sh] = j[:, J["thorax"]] + b["thorax_shoulder"] * _apply(r_torso, _unit(np.array([sign * 0.94, 0.32, 0.15])))
        j[:, el] = j[:, sh] + b["upper_arm"] * _apply(r_torso, upper)
        j[:, wr] = j[:, el] + b["forearm"] * _apply(r_torso, fore)
    lowest = j[:, [J["left_ankle"], J["right_ankle"]], 1].max(axis=1)  # y down: the larger y is lower
    root = np.stack([subject.x_m + c["dx"], floor_y - ANKLE_HEIGHT_M - lowest - c["lift"],
                     subject.depth_m + c["dz"]], -1)
    return j + root[:, None, :]


def sequence_pose(action: str, subject: Subject, floor_y: float, rng: np.random.Generator,
                  n: int = schema.FRAMES_PER_SEQUENCE) -> np.ndarray:
    """Ground-truth joints float64 [n, 17, 3] (metres, camera frame) of one sequence."""
    return forward_kinematics(action_channels(action, n, subject, rng), subject, floor_y)
