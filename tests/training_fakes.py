"""A small in-memory MM-Fi-like dataset for training tests (keys as sensors.mmfi.load_arrays).

Every modality carries a noisy view of the same latent pose, RGB and LiDAR cleanly, mmWave and
WiFi noisily, so a model can learn and the modalities differ in quality.
"""

from __future__ import annotations

import numpy as np

from sensors.core import schema
from training.config import ModelConfig
from training.data import Split, from_arrays


def fake_arrays(n: int, cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6)).astype(np.float32)
    basis = rng.normal(scale=0.05, size=(6, schema.N_JOINTS * 3)).astype(np.float32)
    rest = np.zeros((schema.N_JOINTS, 3), np.float32)
    rest[:, 1] = np.linspace(-0.8, 0.8, schema.N_JOINTS)
    rest[:, 2] = 3.2
    joints = rest + (z @ basis).reshape(n, schema.N_JOINTS, 3)
    rgb = np.repeat(joints[:, None, :, :2] * 0.5, cfg.rgb_window, axis=1)
    rgb = rgb + rng.normal(scale=0.01, size=rgb.shape).astype(np.float32)
    lidar = np.zeros((n, cfg.lidar_cap, 3), np.float32)
    lidar_mask = np.zeros((n, cfg.lidar_cap), bool)
    k = min(cfg.lidar_cap, schema.N_JOINTS)
    lidar[:, :k] = joints[:, :k][:, :, [2, 0, 1]] + rng.normal(scale=0.02, size=(n, k, 3))
    lidar_mask[:, :k] = True
    mmwave = rng.normal(size=(n, cfg.mmwave_cap, 5)).astype(np.float32)
    mmwave[:, :, :3] += joints[:, :1, [2, 0, 1]]
    mmwave_mask = np.zeros((n, cfg.mmwave_cap), bool)
    mmwave_mask[:, : cfg.mmwave_cap // 2] = True
    mmwave[~mmwave_mask] = 0.0
    wifi = rng.uniform(size=(n, *schema.WIFI_INPUT_SHAPE)).astype(np.float32)
    wifi[:, 0, :6, 0] += z * 0.2
    presence = np.ones((n, schema.N_MODALITIES), np.float32)
    presence[::7, schema.MODALITY_INDEX["mmwave"]] = 0.0
    mmwave_mask[::7] = False
    mmwave[::7] = 0.0
    actions = np.array([schema.PROTOCOLS["P1"][i % 3] for i in range(n)])
    return {"rgb": rgb.astype(np.float32), "lidar": lidar, "lidar_mask": lidar_mask, "mmwave": mmwave,
            "mmwave_mask": mmwave_mask, "wifi": wifi, "presence": presence, "joints": joints.astype(np.float32),
            "env": np.array(["E01"] * n), "subject": np.array(["S01"] * n), "action": actions,
            "frame": np.arange(n)}


def fake_split(n: int, cfg: ModelConfig, seed: int = 0) -> Split:
    return from_arrays(fake_arrays(n, cfg, seed), cfg.modalities)
