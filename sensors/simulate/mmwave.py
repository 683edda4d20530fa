"""mmWave radar (TI IWR6843-class FMCW point cloud): only moving surface points are detected.

MM-Fi's ``mmwave/frameNNN.bin`` is raw float64 ``reshape(-1, 5)``, 0-30 points per frame and
0-byte files when nothing is detected. Static-clutter removal keeps only points whose radial
velocity exceeds a threshold, so a still subject gives few or no points. The model: surface points
along the bones (on the side facing the radar, minus those the torso hides from it) with
velocities from the joint velocities, one detection per occupied (range, Doppler, azimuth,
elevation) cell that passes a detection test, spherical position noise and ghosts (mirrored about
the floor, or multipath via a reflector of the room).

Per sequence (``session``: each MM-Fi sequence is a capture of its own): the uncalibrated offset
(the radar is not calibrated to the other sensors in MM-Fi), the detection threshold over the
noise floor (detection probability and reported SNR), the reflector that makes the multipath
ghosts, and residual static-clutter sources (vibrating or swaying objects that survive clutter
removal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.core import schema
from sensors.simulate.body import BONE_RADIUS_M
from sensors.simulate.lidar import TORSO_SIDE_RADIUS_M, TORSO_SIDES, camera_to_sensor

J = schema.JOINT_INDEX
POINTS_PER_BONE = 16
AROUND_RAD = (-1.2, -0.6, 0.0, 0.6, 1.2) # surface samples around each bone, radians from facing the radar
KNOWN_COLUMNS = {"x", "y", "z", "snr_db", "doppler_mps"}


@dataclass(frozen=True)
class MmwaveConfig:
    columns: tuple[str, ...] = schema.MMWAVE_COLUMNS   # order written to disk (disputed in MM-Fi)
    min_radial_speed_mps: float = 0.15   # static-clutter removal threshold
    range_bin_m: float = 0.04
    doppler_bin_mps: float = 0.6
    azimuth_bin_deg: float = 15.0
    elevation_bin_deg: float = 20.0      # coarse elevation resolution of the 3D antenna array
    detect_prob: tuple[float, float] = (0.75, 0.95)  # per occupied cell; drawn per sequence
    snr_offset_sigma_db: float = 3.0     # per-sequence noise floor: offset of every reported SNR
    max_points: int = 30
    # Position noise and ghosts at the low (best-sensor) ends of the ranges in docs/generator.md: the
    # recalibration the fair test registered for a radar weaker than MM-Fi's (docs/results.md)
    range_sigma_m: float = 0.02
    azimuth_sigma_deg: float = 3.0
    elevation_sigma_deg: float = 8.0
    doppler_sigma_mps: float = 0.05
    snr_db: tuple[float, float] = (6.0, 40.0)  # clip range of the reported SNR
    ghost_frame_rate: float = 0.2        # frames with 1-3 ghosts (when anything is detected)
    reflector_range_factor: tuple[float, float] = (1.15, 1.6)  # multipath ghost range / true range
    reflector_azimuth_deg: float = 20.0  # s.d. of the multipath ghosts' azimuth shift (per sequence)
    clutter_sources: tuple[int, int] = (0, 3)   # residual static-clutter sources per sequence
    clutter_rate: float = 0.05           # per source and frame: detected
    offset_m: tuple[float, float] = (0.1, 0.3)  # per-sequence extrinsic error (translation)
    offset_yaw_deg: float = 4.0

    def __post_init__(self) -> None:
        if sorted(self.columns) != sorted(KNOWN_COLUMNS):
            raise ValueError(f"mmWave columns must be an order of {sorted(KNOWN_COLUMNS)}, got {self.columns}")
        lo, hi = self.detect_prob
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"detect_prob must be a range within (0, 1], got {self.detect_prob}")
        if not 1 <= self.max_points <= schema.MAX_MMWAVE_POINTS:
            raise ValueError(f"max_points must be 1..{schema.MAX_MMWAVE_POINTS}, got {self.max_points}")


def surface_points(joints: np.ndarray, vel: np.ndarray, radar_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on the bone capsules facing the radar, camera frame.

    joints, vel [17,3] (m, m/s). Returns positions [P,3], velocities [P,3], weights [P] (radius)."""
    a_idx = [e[0] for e in schema.SKELETON_EDGES]
    b_idx = [e[1] for e in schema.SKELETON_EDGES]
    radius = np.array([BONE_RADIUS_M[schema.EDGE_BONE[e]] for e in schema.SKELETON_EDGES])
    f = (np.arange(POINTS_PER_BONE) + 0.5) / POINTS_PER_BONE
    pa, pb = joints[a_idx], joints[b_idx]
    pos = pa[:, None] + f[None, :, None] * (pb - pa)[:, None]          # [E,K,3]
    v = vel[a_idx][:, None] + f[None, :, None] * (vel[b_idx] - vel[a_idx])[:, None]
    towards = radar_cam - pos
    towards /= np.linalg.norm(towards, axis=-1, keepdims=True)
    axis = (pb - pa) / np.maximum(np.linalg.norm(pb - pa, axis=-1, keepdims=True), 1e-9)
    side = np.cross(axis[:, None], towards)
    side /= np.maximum(np.linalg.norm(side, axis=-1, keepdims=True), 1e-9)
    ring = [np.cos(a) * towards + np.sin(a) * side for a in AROUND_RAD]
    pos = np.concatenate([pos + radius[:, None, None] * n for n in ring], axis=1)   # [E,3K,3]
    v = np.concatenate([v] * len(ring), axis=1)
    w = np.broadcast_to(radius[:, None] / len(ring), pos.shape[:2])
    return pos.reshape(-1, 3), v.reshape(-1, 3), w.reshape(-1)


TORSO_CAPSULES = ((J["pelvis"], J["spine"], BONE_RADIUS_M["pelvis_spine"]),
                  (J["spine"], J["thorax"], BONE_RADIUS_M["spine_thorax"]),
                  (TORSO_SIDES[0][0], TORSO_SIDES[0][1], TORSO_SIDE_RADIUS_M),
                  (TORSO_SIDES[1][0], TORSO_SIDES[1][1], TORSO_SIDE_RADIUS_M))
OCCLUSION_SAMPLES = np.linspace(1.0, 0.2, 9)   # metres before the point where the ray is tested


def hidden_by_torso(pos: np.ndarray, joints: np.ndarray, radar_cam: np.ndarray) -> np.ndarray:
    """[P] bool: points whose line of sight to the radar crosses the torso (tested at 0.2-1.0 m
    before the point, so a point on the torso's own surface is not hidden by it)."""
    hidden = np.zeros(pos.shape[0], dtype=bool)
    if not pos.shape[0]:
        return hidden
    ray = radar_cam - pos
    ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
    samples = pos[:, None] + OCCLUSION_SAMPLES[None, :, None] * ray[:, None]        # [P,K,3]
    for a_idx, b_idx, radius in TORSO_CAPSULES:
        a, b = joints[a_idx], joints[b_idx]
        ab = b - a
        rel = samples - a
        s = np.clip(rel @ ab / max(float(ab @ ab), 1e-9), 0, 1)
        off = rel - s[..., None] * ab
        hidden |= (np.einsum("pkd,pkd->pk", off, off) < radius * radius).any(axis=1)
    return hidden


@dataclass(frozen=True)
class Session:
    """One capture's radar state (drawn per sequence by ``session``)."""

    extrinsic: tuple[np.ndarray, float]   # uncalibrated offset: translation [3] (m), yaw (rad)
    detect_prob: float
    snr_offset_db: float
    reflector_range_factor: float
    reflector_azimuth_rad: float
    clutter_xyz: np.ndarray               # [K,3] residual clutter sources, radar frame (m)
    clutter_doppler_mps: np.ndarray       # [K]


def session(rng: np.random.Generator, cfg: MmwaveConfig = MmwaveConfig()) -> Session:
    """A capture's radar state: extrinsic, detection threshold, multipath reflector, clutter."""
    extrinsic = draw_extrinsic(rng, cfg)
    k = int(rng.integers(cfg.clutter_sources[0], cfg.clutter_sources[1] + 1))
    r, az, el = rng.uniform(1.5, 5.0, k), np.deg2rad(rng.uniform(-50, 50, k)), np.deg2rad(rng.uniform(-15, 15, k))
    return Session(extrinsic=extrinsic, detect_prob=float(rng.uniform(*cfg.detect_prob)),
                   snr_offset_db=float(rng.normal(0, cfg.snr_offset_sigma_db)),
                   reflector_range_factor=float(rng.uniform(*cfg.reflector_range_factor)),
                   reflector_azimuth_rad=float(np.deg2rad(rng.normal(0, cfg.reflector_azimuth_deg))),
                   clutter_xyz=_cartesian(r, az, el).reshape(-1, 3),
                   clutter_doppler_mps=rng.choice([-1.0, 1.0], k) * rng.uniform(0.2, 0.5, k))


def _spherical(p: np.ndarray):
    r = np.linalg.norm(p, axis=-1)
    return r, np.arctan2(p[:, 1], p[:, 0]), np.arcsin(np.clip(p[:, 2] / np.maximum(r, 1e-9), -1, 1))


def _cartesian(r, az, el):
    return np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], -1)


def detect(joints: np.ndarray, vel: np.ndarray, env, state: Session,
           rng: np.random.Generator, cfg: MmwaveConfig = MmwaveConfig()) -> np.ndarray:
    """One frame -> float64 [N, 5] in ``cfg.columns`` order (N = 0 when nothing is detected)."""
    radar = np.asarray(env.radar_offset_m)
    pos, v, w = surface_points(joints, vel, radar)
    ps = camera_to_sensor(pos, env.radar_offset_m)
    vs = camera_to_sensor(v + radar, env.radar_offset_m)       # rotate velocities only
    r, az, el = _spherical(ps)
    vr = np.sum(vs * ps, -1) / r
    moving = np.abs(vr) > cfg.min_radial_speed_mps
    moving[moving] = ~hidden_by_torso(pos[moving], joints, radar)
    xyz, snr, dop = np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    if moving.any():
        xyz, snr, dop = _body_detections(r[moving], az[moving], el[moving], vr[moving], w[moving], state, rng, cfg)
    if xyz.shape[0] and rng.random() < cfg.ghost_frame_rate:
        xyz, snr, dop = _add_ghosts(xyz, snr, dop, env, state, rng)
    clutter = rng.random(state.clutter_xyz.shape[0]) < cfg.clutter_rate
    if clutter.any():
        c = int(clutter.sum())
        xyz = np.concatenate([xyz, state.clutter_xyz[clutter] + rng.normal(0, cfg.range_sigma_m, (c, 3))])
        snr = np.concatenate([snr, rng.uniform(6, 12, c) + state.snr_offset_db])
        dop = np.concatenate([dop, state.clutter_doppler_mps[clutter] + rng.normal(0, cfg.doppler_sigma_mps, c)])
    if not xyz.shape[0]:
        return np.zeros((0, len(cfg.columns)))
    order = np.argsort(-snr)[:cfg.max_points]
    xyz, snr, dop = _apply_extrinsic(xyz[order], state.extrinsic), snr[order], dop[order]
    cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "snr_db": np.clip(snr, *cfg.snr_db), "doppler_mps": dop}
    return np.stack([cols[c] for c in cfg.columns], -1).astype(np.float64)


def _body_detections(r, az, el, vr, w, state: Session, rng: np.random.Generator, cfg: MmwaveConfig):
    """Moving surface points (spherical, radar frame) -> one noisy detection per occupied cell."""
    cells = np.stack([np.floor(r / cfg.range_bin_m), np.floor(vr / cfg.doppler_bin_mps),
                      np.floor(np.rad2deg(az) / cfg.azimuth_bin_deg),
                      np.floor(np.rad2deg(el) / cfg.elevation_bin_deg)], -1)
    _, cell, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    cell = cell.reshape(-1)
    n = counts.size

    def mean(x):
        return np.bincount(cell, weights=x, minlength=n) / counts

    cr, caz, cel, cvr, cw = mean(r), mean(az), mean(el), mean(vr), np.bincount(cell, weights=w, minlength=n)
    snr = 12.0 + 10 * np.log10(cw / 0.05) + 8 * np.log10(np.abs(cvr) / 0.3 + 1) \
        - 20 * np.log10(cr / 3.0) + rng.normal(0, 3.0, n) + state.snr_offset_db
    keep = rng.random(n) < state.detect_prob
    cr = cr + rng.normal(0, cfg.range_sigma_m, n)
    caz = caz + np.deg2rad(rng.normal(0, cfg.azimuth_sigma_deg, n))
    cel = cel + np.deg2rad(rng.normal(0, cfg.elevation_sigma_deg, n))
    return _cartesian(cr, caz, cel)[keep], snr[keep], (cvr + rng.normal(0, cfg.doppler_sigma_mps, n))[keep]


def _add_ghosts(xyz, snr, dop, env, state: Session, rng):
    """1-3 ghosts of detected points: mirrored about the floor, or multipath via the capture's
    reflector (further in range by its factor, rotated by its azimuth shift)."""
    k = int(rng.integers(1, 4))
    src = rng.integers(0, xyz.shape[0], k)
    g = xyz[src].copy()
    floor_z = -(env.camera_height_m - env.radar_offset_m[1])
    mirror = rng.random(k) < 0.5
    g[mirror, 2] = 2 * floor_z - g[mirror, 2]
    c, s = np.cos(state.reflector_azimuth_rad), np.sin(state.reflector_azimuth_rad)
    via = g[~mirror] * state.reflector_range_factor * rng.uniform(0.97, 1.03, (int((~mirror).sum()), 1))
    g[~mirror] = via @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]).T
    return (np.concatenate([xyz, g]), np.concatenate([snr, snr[src] - rng.uniform(6, 15, k)]),
            np.concatenate([dop, dop[src]]))


def draw_extrinsic(rng: np.random.Generator, cfg: MmwaveConfig = MmwaveConfig()) -> tuple[np.ndarray, float]:
    """Per-sequence uncalibrated offset: translation [3] (0.1-0.3 m) and a yaw (rad)."""
    direction = rng.normal(size=3)
    direction[2] *= 0.4
    direction /= np.linalg.norm(direction)
    return direction * rng.uniform(*cfg.offset_m), float(np.deg2rad(rng.normal(0, cfg.offset_yaw_deg)))


def _apply_extrinsic(xyz: np.ndarray, extrinsic: tuple[np.ndarray, float]) -> np.ndarray:
    shift, yaw = extrinsic
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return xyz @ rot.T + shift


def sequence(joints: np.ndarray, env, rng: np.random.Generator, cfg: MmwaveConfig = MmwaveConfig(),
             state: Session | None = None) -> list[np.ndarray]:
    """[T,17,3] camera-frame joints (10 Hz) -> list of T float64 [N,5] point clouds.

    state: the capture's radar state (``session``); None = drawn from ``rng``."""
    vel = np.gradient(joints, 1.0 / schema.FRAME_RATE_HZ, axis=0)
    state = state if state is not None else session(rng, cfg)
    return [detect(j, v, env, state, rng, cfg) for j, v in zip(joints, vel, strict=True)]
