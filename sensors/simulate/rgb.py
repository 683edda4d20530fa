"""RGB camera: Human3.6M joints -> COCO-17 pixel keypoints of a 2D detector on a 640x480 image.

MM-Fi's ``rgb/frameNNN.npy`` holds (17, 2) float64 detector keypoints in pixels, COCO-17 order, no
confidence. The model: face points from the nose/head joints with small 3D offsets, pinhole
projection, and detector-like errors: AR(1) time-correlated jitter per joint (larger at wrists
and hips), misses (a keypoint thrown far off) and left/right swaps that persist a few frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.core import schema

# Detector jitter s.d. (pixels at the reference focal length and 3.2 m) per COCO keypoint:
# nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
JITTER_PX = np.array([3.0, 3.5, 3.5, 4.5, 4.5, 6.0, 6.0, 9.0, 9.0, 14.0, 14.0, 12.0, 12.0,
                      8.0, 8.0, 9.0, 9.0])
# Face offsets (metres) of COCO face points: (along the shoulder line to the subject's left, up).
FACE_OFFSET_M = {1: (0.035, 0.035), 2: (-0.035, 0.035), 3: (0.075, 0.0), 4: (-0.075, 0.0)}


@dataclass(frozen=True)
class RgbConfig:
    focal_px: float = 520.0          # fx = fy (assumed; RealSense colour at 640x480 is 460-615)
    centre_px: tuple[float, float] = (320.0, 240.0)
    jitter_scale: float = 1.0        # multiplies JITTER_PX
    jitter_rho: float = 0.8          # AR(1) correlation frame to frame (10 Hz)
    miss_rate: float = 0.04          # per keypoint and frame: thrown far off
    miss_offset_px: tuple[float, float] = (40.0, 160.0)
    swap_rate: float = 0.012         # per left/right pair and frame: start of a swap episode
    swap_frames: tuple[int, int] = (2, 6)

    def __post_init__(self) -> None:
        if not 300 <= self.focal_px <= 1200:
            raise ValueError(f"focal_px should be a 640x480 camera's 300-1200 px, got {self.focal_px}")
        if not 0 <= self.jitter_rho < 1:
            raise ValueError(f"jitter_rho must be in [0, 1), got {self.jitter_rho}")
        if not (0 <= self.miss_rate < 0.5 and 0 <= self.swap_rate < 0.5):
            raise ValueError("miss_rate and swap_rate are per-frame probabilities in [0, 0.5)")


def coco_points_3d(joints: np.ndarray) -> np.ndarray:
    """joints [T,17,3] H36M (camera frame, m) -> COCO-17 3D points [T,17,3] with face offsets."""
    pts = joints[:, list(schema.COCO_FROM_H36M)].copy()
    J = schema.JOINT_INDEX
    lateral = joints[:, J["left_shoulder"]] - joints[:, J["right_shoulder"]]
    lateral /= np.linalg.norm(lateral, axis=-1, keepdims=True)
    up = joints[:, J["head"]] - joints[:, J["neck_nose"]]
    up /= np.linalg.norm(up, axis=-1, keepdims=True)
    for k, (side, high) in FACE_OFFSET_M.items():
        pts[:, k] = joints[:, J["neck_nose"]] + 0.6 * (joints[:, J["head"]] - joints[:, J["neck_nose"]]) \
            + side * lateral + high * up
    return pts


def project(points: np.ndarray, cfg: RgbConfig) -> np.ndarray:
    """Pinhole projection: points [...,3] camera frame (m) -> pixels [...,2]."""
    z = np.maximum(points[..., 2:3], 0.1)
    return points[..., :2] / z * cfg.focal_px + np.asarray(cfg.centre_px)


def ar1_noise(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary AR(1) noise with unit variance along axis 0: [T, ...]."""
    eps = rng.standard_normal(shape)
    out = np.empty(shape)
    out[0] = eps[0]
    k = np.sqrt(1 - rho * rho)
    for t in range(1, shape[0]):
        out[t] = rho * out[t - 1] + k * eps[t]
    return out


def _swap_mask(rng: np.random.Generator, n: int, cfg: RgbConfig) -> np.ndarray:
    """[T, 17] bool: keypoints whose left/right partner is reported instead."""
    mask = np.zeros((n, schema.N_KEYPOINTS), dtype=bool)
    pairs = [(i, f) for i, f in enumerate(schema.COCO_FLIP) if i < f]
    starts = rng.random((n, len(pairs))) < cfg.swap_rate
    for t, p in zip(*np.nonzero(starts), strict=True):
        length = rng.integers(cfg.swap_frames[0], cfg.swap_frames[1] + 1)
        mask[t:t + length, list(pairs[p])] = True
    return mask


def keypoints(joints: np.ndarray, rng: np.random.Generator, cfg: RgbConfig = RgbConfig()) -> np.ndarray:
    """Detector keypoints float64 [T,17,2] (pixels, COCO-17) from ground truth [T,17,3] (m)."""
    n = joints.shape[0]
    pts3 = coco_points_3d(joints)
    uv = project(pts3, cfg)
    scale = cfg.focal_px / np.maximum(joints[:, :1, 2:3], 0.1) / (520.0 / 3.2)  # person-size factor
    uv = uv + ar1_noise(rng, (n, schema.N_KEYPOINTS, 2), cfg.jitter_rho) * JITTER_PX[None, :, None] \
        * cfg.jitter_scale * scale
    swap = _swap_mask(rng, n, cfg)
    uv = np.where(swap[..., None], uv[:, list(schema.COCO_FLIP)], uv)
    miss = rng.random((n, schema.N_KEYPOINTS)) < cfg.miss_rate
    angle = rng.uniform(0, 2 * np.pi, miss.shape)
    dist = rng.uniform(*cfg.miss_offset_px, miss.shape)
    off = np.stack([np.cos(angle), np.sin(angle)], -1) * dist[..., None]
    uv = np.where(miss[..., None], uv + off, uv)
    uv[..., 0] = np.clip(uv[..., 0], 0.0, schema.IMAGE_WIDTH - 1.0)
    uv[..., 1] = np.clip(uv[..., 1], 0.0, schema.IMAGE_HEIGHT - 1.0)
    return uv.astype(np.float64)
