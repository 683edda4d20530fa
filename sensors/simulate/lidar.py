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

from sensors import schema
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


def _near_body(d: np.ndarray, joints_s: np.ndarray, margin: float) -> np.ndarray:
    """Rays [R] inside the body's angular bounding box widened by ``margin`` metres (a cheap cull)."""
    rng_ = np.linalg.norm(joints_s, axis=-1)
    az = np.arctan2(joints_s[:, 1], joints_s[:, 0])
    el = np.arcsin(joints_s[:, 2] / rng_)
    pad = margin / rng_.min()
    ray_az = np.arctan2(d[:, 1], d[:, 0])
    ray_el = np.arcsin(np.clip(d[:, 2], -1, 1))
    return ((ray_az > az.min() - pad) & (ray_az < az.max() + pad)
            & (ray_el > el.min() - pad) & (ray_el < el.max() + pad))


def _body_hits(d: np.ndarray, a: np.ndarray, b: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest capsule hit range [R] (inf = miss) and the rays' smallest clearance [R] outside a capsule."""
    e = b - a                                   # [C,3]
    bb = d @ e.T                                # [R,C] d.e
    da = d @ a.T                                # [R,C] d.A
    ea = np.sum(e * a, -1)[None]                # [1,C]
    cc = np.sum(e * e, -1)[None]
    s = np.clip((bb * da - ea) / np.maximum(cc - bb * bb, 1e-9), 0.0, 1.0)
    t = np.maximum(da + s * bb, 0.0)
    closest = t[..., None] * d[:, None, :] - a[None] - s[..., None] * e[None]
    dist2 = np.sum(closest * closest, -1)
    inside = dist2 < r[None] ** 2
    t_hit = np.where(inside, t - np.sqrt(np.maximum(r[None] ** 2 - dist2, 0.0)), np.inf)
    clearance = np.min(np.sqrt(dist2) - r[None], axis=1)
    return t_hit.min(axis=1), clearance


def scan(joints_cam: np.ndarray, env, rng: np.random.Generator, cfg: LidarConfig = LidarConfig(),
         bone_radius: dict[str, float] | None = None) -> np.ndarray:
    """One frame: ground-truth joints [17,3] (camera frame, m) -> points float64 [N,3] sensor frame."""
    js = camera_to_sensor(joints_cam, env.lidar_offset_m)
    height = env.camera_height_m - env.lidar_offset_m[1]  # floor is at z = -height
    wall_x = None if env.back_wall_m is None else env.back_wall_m - env.lidar_offset_m[2]
    side_y = env.side_walls_m
    grid, _ = ray_grid(cfg, float(np.arctan2(js[0, 1], js[0, 0])))
    d = grid.reshape(-1, 3)
    a, b, r = _capsules(js, bone_radius or BONE_RADIUS_M)
    near = _near_body(d, js, margin=0.3)
    t_body = np.full(d.shape[0], np.inf)
    clearance = np.full(d.shape[0], np.inf)
    t_body[near], clearance[near] = _body_hits(d[near], a, b, r)
    t_bg = _background(d, height, wall_x, side_y)
    t = np.minimum(t_body, t_bg)
    edge = (clearance >= 0) & (clearance < cfg.edge_margin_m) & (rng.random(t.shape) < cfg.edge_mix_rate)
    mix = rng.uniform(0.2, 0.8, t.shape)
    depth_body = d @ js[0]                      # ~range of the body along the ray
    t = np.where(edge & np.isfinite(t_bg), mix * depth_body + (1 - mix) * t_bg, t)
    t = t + cfg.range_sigma_m * rng.standard_normal(t.shape)
    keep = np.isfinite(t) & (t > cfg.min_range_m) & (t < cfg.max_range_m) & (rng.random(t.shape) >= cfg.dropout_rate)
    pts = d[keep] * t[keep, None]               # ring by ring (top beam first), column order
    if rng.random() < cfg.stray_burst_rate:
        pts = np.concatenate([pts, _stray_burst(rng, js[0], cfg)])
    return pts.astype(np.float64)


def _stray_burst(rng: np.random.Generator, centre: np.ndarray, cfg: LidarConfig) -> np.ndarray:
    """A cluster of spurious points somewhere in the window (dust, reflections, other people)."""
    n = int(rng.integers(cfg.stray_points[0], cfg.stray_points[1] + 1))
    where = centre * rng.uniform(0.3, 1.3) + rng.normal(0, [0.2, 0.6, 0.4])
    return where + rng.normal(0, rng.uniform(0.05, 0.3), (n, 3))


def sequence(joints: np.ndarray, env, rng: np.random.Generator, cfg: LidarConfig = LidarConfig(),
             bone_radius: dict[str, float] | None = None) -> list[np.ndarray]:
    """All frames: [T,17,3] camera-frame joints -> list of T float64 [N,3] clouds."""
    return [scan(j, env, rng, cfg, bone_radius) for j in joints]
