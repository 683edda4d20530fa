"""mmWave radar (TI IWR6843-class FMCW point cloud): only moving surface points are detected.

MM-Fi's ``mmwave/frameNNN.bin`` is raw float64 ``reshape(-1, 5)``, 0-30 points per frame and
0-byte files when nothing is detected. Static-clutter removal keeps only points whose radial
velocity exceeds a threshold, so a still subject gives few or no points. The model: surface points
along the bones (on the side facing the radar) with velocities from the joint velocities, one
detection per occupied (range, Doppler, azimuth) cell that passes a detection test, spherical
position noise, ghosts (mirrored about the floor or pushed further in range) and a per-sequence
uncalibrated offset: the radar is not calibrated to the other sensors in MM-Fi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors import schema
from sensors.simulate.body import BONE_RADIUS_M
from sensors.simulate.lidar import camera_to_sensor

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
    detect_prob: float = 0.85            # per occupied cell
    max_points: int = 30
    range_sigma_m: float = 0.03
    azimuth_sigma_deg: float = 4.5
    elevation_sigma_deg: float = 11.0
    doppler_sigma_mps: float = 0.05
    snr_db: tuple[float, float] = (6.0, 40.0)  # clip range of the reported SNR
    ghost_frame_rate: float = 0.3        # frames with 1-3 ghosts (when anything is detected)
    offset_m: tuple[float, float] = (0.1, 0.3)  # per-sequence extrinsic error (translation)
    offset_yaw_deg: float = 4.0

    def __post_init__(self) -> None:
        if sorted(self.columns) != sorted(KNOWN_COLUMNS):
            raise ValueError(f"mmWave columns must be an order of {sorted(KNOWN_COLUMNS)}, got {self.columns}")
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


def _spherical(p: np.ndarray):
    r = np.linalg.norm(p, axis=-1)
    return r, np.arctan2(p[:, 1], p[:, 0]), np.arcsin(np.clip(p[:, 2] / np.maximum(r, 1e-9), -1, 1))


def _cartesian(r, az, el):
    return np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], -1)


def detect(joints: np.ndarray, vel: np.ndarray, env, extrinsic: tuple[np.ndarray, float],
           rng: np.random.Generator, cfg: MmwaveConfig = MmwaveConfig()) -> np.ndarray:
    """One frame -> float64 [N, 5] in ``cfg.columns`` order (N = 0 when nothing moves)."""
    radar = np.asarray(env.radar_offset_m)
    pos, v, w = surface_points(joints, vel, radar)
    ps = camera_to_sensor(pos, env.radar_offset_m)
    vs = camera_to_sensor(v + radar, env.radar_offset_m)       # rotate velocities only
    r, az, el = _spherical(ps)
    vr = np.sum(vs * ps, -1) / r
    moving = np.abs(vr) > cfg.min_radial_speed_mps
    if not moving.any():
        return np.zeros((0, len(cfg.columns)))
    r, az, el, vr, w = r[moving], az[moving], el[moving], vr[moving], w[moving]
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
        - 20 * np.log10(cr / 3.0) + rng.normal(0, 3.0, n)
    keep = rng.random(n) < cfg.detect_prob
    cr = cr + rng.normal(0, cfg.range_sigma_m, n)
    caz = caz + np.deg2rad(rng.normal(0, cfg.azimuth_sigma_deg, n))
    cel = cel + np.deg2rad(rng.normal(0, cfg.elevation_sigma_deg, n))
    xyz = _cartesian(cr, caz, cel)[keep]
    snr, dop = snr[keep], (cvr + rng.normal(0, cfg.doppler_sigma_mps, n))[keep]
    if xyz.shape[0] and rng.random() < cfg.ghost_frame_rate:
        xyz, snr, dop = _add_ghosts(xyz, snr, dop, env, rng)
    order = np.argsort(-snr)[:cfg.max_points]
    xyz, snr, dop = _apply_extrinsic(xyz[order], extrinsic), snr[order], dop[order]
    cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "snr_db": np.clip(snr, *cfg.snr_db), "doppler_mps": dop}
    return np.stack([cols[c] for c in cfg.columns], -1).astype(np.float64)


def _add_ghosts(xyz, snr, dop, env, rng):
    k = int(rng.integers(1, 4))
    src = rng.integers(0, xyz.shape[0], k)
    g = xyz[src].copy()
    floor_z = -(env.camera_height_m - env.radar_offset_m[1])
    mirror = rng.random(k) < 0.5
    g[mirror, 2] = 2 * floor_z - g[mirror, 2]
    g[~mirror] *= rng.uniform(1.15, 1.6, (int((~mirror).sum()), 1))
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


def sequence(joints: np.ndarray, env, rng: np.random.Generator, cfg: MmwaveConfig = MmwaveConfig()) -> list[np.ndarray]:
    """[T,17,3] camera-frame joints (10 Hz) -> list of T float64 [N,5] point clouds."""
    vel = np.gradient(joints, 1.0 / schema.FRAME_RATE_HZ, axis=0)
    extrinsic = draw_extrinsic(rng, cfg)
    return [detect(j, v, env, extrinsic, rng, cfg) for j, v in zip(joints, vel, strict=True)]
