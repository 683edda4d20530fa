"""LiDAR: ray-cast an Ouster-style scan grid against the body (capsules), floor and walls.

MM-Fi's ``lidar/frameNNN.bin`` is raw float64 ``reshape(-1, 3)`` in the sensor frame (x forward =
range, y left, z up), ~1,000-1,400 points per frame, not tightly cropped (floor points present),
ring by ring with the top beam first. The model casts a 512-column x 32-beam grid inside an
azimuth window around the subject, adds range noise, dropouts, mixed points at silhouette edges
and occasional bursts of stray points. O(rays x capsules) per frame, vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.core import schema
from sensors.simulate.body import BONE_RADIUS_M

J = schema.JOINT_INDEX
# Extra torso capsules (hip -> shoulder on each side) give the trunk its width.
TORSO_SIDES = ((J["left_hip"], J["left_shoulder"]), (J["right_hip"], J["right_shoulder"]))
TORSO_SIDE_RADIUS_M = 0.09


@dataclass(frozen=True)
class LidarConfig:
    columns_per_rev: int = 512             # 0.703 deg azimuth step (seen on a real frame)
    beams: int = 32
    elevation_deg: tuple[float, float] = (-30.0, 12.0)  # lowest / highest beam
    window_columns: int = 40               # azimuth window around the subject (~28 deg)
    min_range_m: float = 0.3
    max_range_m: float = 12.0
    range_sigma_m: float = 0.015
    dropout_rate: float = 0.02
    edge_margin_m: float = 0.025           # rays passing this close outside a capsule may mix
    edge_mix_rate: float = 0.5
    stray_burst_rate: float = 0.04         # per frame
    stray_points: tuple[int, int] = (15, 60)

    def __post_init__(self) -> None:
        lo, hi = self.elevation_deg
        if not -90 < lo < hi < 90 or self.beams < 2 or not 8 <= self.window_columns <= self.columns_per_rev:
            raise ValueError("LidarConfig: need -90 < elevation low < high < 90, beams >= 2 and "
                             f"8 <= window_columns <= columns_per_rev; got {self}")
        if not 0 <= self.dropout_rate < 0.5:
            raise ValueError(f"dropout_rate must be in [0, 0.5), got {self.dropout_rate}")


def camera_to_sensor(points: np.ndarray, origin_cam: tuple[float, float, float]) -> np.ndarray:
    """Camera frame (x right, y down, z depth) -> sensor frame (x forward, y left, z up), metres."""
    p = points - np.asarray(origin_cam)
    return np.stack([p[..., 2], -p[..., 0], -p[..., 1]], -1)


def _capsules(joints_s: np.ndarray, bone_radius: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments (A [C,3], B [C,3]) and radii [C] of the body in the sensor frame."""
    edges = list(schema.SKELETON_EDGES) + list(TORSO_SIDES)
    radii = [bone_radius[schema.EDGE_BONE[e]] for e in schema.SKELETON_EDGES] + [TORSO_SIDE_RADIUS_M] * 2
    a = joints_s[[e[0] for e in edges]]
    b = joints_s[[e[1] for e in edges]]
    return a, b, np.asarray(radii)


def ray_grid(cfg: LidarConfig, centre_azimuth: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions [beams, window, 3], top beam first, and their column azimuths (rad)."""
    step = 2 * np.pi / cfg.columns_per_rev
    c0 = int(np.round(centre_azimuth / step)) - cfg.window_columns // 2
    az = (c0 + np.arange(cfg.window_columns)) * step
    el = np.deg2rad(np.linspace(cfg.elevation_deg[1], cfg.elevation_deg[0], cfg.beams))
    ce = np.cos(el)[:, None]
    d = np.stack([ce * np.cos(az)[None], ce * np.sin(az)[None], np.broadcast_to(np.sin(el)[:, None], ce.shape
                                                                                * np.array([1, len(az)]))], -1)
    return d, az


def _background(d: np.ndarray, height: float, wall_x: float | None, side_y: float | None) -> np.ndarray:
    """Range [R] to the floor / back wall / side walls along unit rays d [R,3] (inf = no return)."""
    t = np.full(d.shape[0], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[:, 2] < 0, np.minimum(t, -height / d[:, 2]), t)
        if wall_x is not None:
            t = np.where(d[:, 0] > 0, np.minimum(t, wall_x / d[:, 0]), t)
        if side_y is not None:
            t = np.where(d[:, 1] != 0, np.minimum(t, side_y / np.abs(d[:, 1])), t)
    return t


def _body_hits(d: np.ndarray, a: np.ndarray, b: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays d [K,R,3] (unit, from the origin) against capsules A, B [K,C,3], radii [C].

    Returns the nearest hit range [K,R] (inf = miss) and each ray's smallest clearance outside a
    capsule [K,R]."""
    d, a, b, r = (np.asarray(v, dtype=np.float32) for v in (d, a, b, r))  # float32: 3 m ranges need no more
    e = b - a                                                   # [K,C,3]
    bb = d @ e.transpose(0, 2, 1)                               # [K,R,C] d.e
    da = d @ a.transpose(0, 2, 1)                               # d.A
    ea = np.sum(e * a, -1)[:, None]                             # [K,1,C]
    cc = np.sum(e * e, -1)[:, None]
    s = np.clip((bb * da - ea) / np.maximum(cc - bb * bb, 1e-9), 0.0, 1.0)
    t = np.maximum(da + s * bb, 0.0)
    # |t d - A - s e|^2 expanded (d unit): avoids a [K,R,C,3] temporary
    aa = np.sum(a * a, -1)[:, None]
    dist2 = np.maximum(t * t + aa + s * s * cc - 2 * t * da - 2 * t * s * bb + 2 * s * ea, 0.0)
    r2 = (r * r)[None, None]
    t_hit = np.where(dist2 < r2, t - np.sqrt(np.maximum(r2 - dist2, 0.0)), np.float32(np.inf))
    clearance = np.min(np.sqrt(dist2) - r[None, None], axis=2)
    return t_hit.min(axis=2).astype(np.float64), clearance.astype(np.float64)


def scan_frames(joints_cam: np.ndarray, env, rng: np.random.Generator, cfg: LidarConfig = LidarConfig(),
                bone_radius: dict[str, float] | None = None) -> list[np.ndarray]:
    """Frames: ground-truth joints [K,17,3] (camera frame, m) -> K float64 [N,3] clouds, sensor frame."""
    js = camera_to_sensor(joints_cam, env.lidar_offset_m)                           # [K,17,3]
    height = env.camera_height_m - env.lidar_offset_m[1]  # floor is at z = -height
    wall_x = None if env.back_wall_m is None else env.back_wall_m - env.lidar_offset_m[2]
    d = np.stack([ray_grid(cfg, float(np.arctan2(j[0, 1], j[0, 0])))[0].reshape(-1, 3) for j in js])  # [K,R,3]
    caps = [_capsules(j, bone_radius or BONE_RADIUS_M) for j in js]
    a, b = np.stack([c[0] for c in caps]), np.stack([c[1] for c in caps])          # [K,C,3]
    t_body, clearance = _body_hits(d, a, b, caps[0][2])
    t_bg = _background(d.reshape(-1, 3), height, wall_x, env.side_walls_m).reshape(t_body.shape)
    t = np.minimum(t_body, t_bg)
    edge = (clearance >= 0) & (clearance < cfg.edge_margin_m) & (rng.random(t.shape) < cfg.edge_mix_rate)
    mix = rng.uniform(0.2, 0.8, t.shape)
    depth_body = np.einsum("krd,kd->kr", d, js[:, 0])                               # ~range of the body
    t = np.where(edge & np.isfinite(t_bg), mix * depth_body + (1 - mix) * t_bg, t)
    t = t + cfg.range_sigma_m * rng.standard_normal(t.shape)
    keep = np.isfinite(t) & (t > cfg.min_range_m) & (t < cfg.max_range_m) & (rng.random(t.shape) >= cfg.dropout_rate)
    clouds = []
    for k in range(js.shape[0]):
        pts = d[k][keep[k]] * t[k, keep[k], None]   # ring by ring (top beam first), column order
        if rng.random() < cfg.stray_burst_rate:
            pts = np.concatenate([pts, _stray_burst(rng, js[k, 0], cfg)])
        clouds.append(pts.astype(np.float64))
    return clouds


def _stray_burst(rng: np.random.Generator, centre: np.ndarray, cfg: LidarConfig) -> np.ndarray:
    """A cluster of spurious points somewhere in the window (dust, reflections, other people)."""
    n = int(rng.integers(cfg.stray_points[0], cfg.stray_points[1] + 1))
    where = centre * rng.uniform(0.3, 1.3) + rng.normal(0, [0.2, 0.6, 0.4])
    return where + rng.normal(0, rng.uniform(0.05, 0.3), (n, 3))


def scan(joints_cam: np.ndarray, env, rng: np.random.Generator, cfg: LidarConfig = LidarConfig(),
         bone_radius: dict[str, float] | None = None) -> np.ndarray:
    """One frame: joints [17,3] (camera frame, m) -> points float64 [N,3] in the sensor frame."""
    return scan_frames(joints_cam[None], env, rng, cfg, bone_radius)[0]


def sequence(joints: np.ndarray, env, rng: np.random.Generator, cfg: LidarConfig = LidarConfig(),
             bone_radius: dict[str, float] | None = None, chunk: int = 50) -> list[np.ndarray]:
    """All frames: [T,17,3] camera-frame joints -> list of T float64 [N,3] clouds."""
    out: list[np.ndarray] = []
    for i in range(0, joints.shape[0], chunk):
        out += scan_frames(joints[i:i + chunk], env, rng, cfg, bone_radius)
    return out
