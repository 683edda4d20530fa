"""Synced tick -> model inputs (batch 1), by ``sensors.core.preprocess.frame_inputs``, the same rule
the MM-Fi reader uses for training.

What the runtime adds around it: the RGB keypoints of the last R ticks (the causal window; ticks
without keypoints are edge-padded from their neighbours), mmWave columns reordered from the wire's
to the model's ``mmwave_columns`` when they differ, and the CSI packets of the sync window
([P, 3, 114], any P >= 1) resampled to one frame of 10 (``preprocess.resample_packets``).
Absent modalities are zero-filled with presence 0 (the same mask as a Shapley coalition); an
empty point cloud (no detections, a normal radar frame) arrived but is absent to the model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sensors.core import preprocess, schema


@dataclass(frozen=True)
class TickFeatures:
    inputs: dict[str, np.ndarray]   # schema.MODEL_INPUTS, batch 1
    presence: np.ndarray            # float32 [4]


def wifi_packets_of(tick) -> tuple[np.ndarray, np.ndarray] | None:
    """(amp [P, 3, 114], phase [P, 3, 114]) of the tick's CSI window (``runtime.sync`` puts the
    packets of the window in the wifi sample), or None when absent."""
    sample = tick.samples.get("wifi")
    if sample is None:
        return None
    amp, phase = np.asarray(sample.arrays["amp"]), np.asarray(sample.arrays["phase"])
    if amp.ndim != 3 or amp.shape[0] == 0 or amp.shape != phase.shape:
        return None
    return amp, phase


class FeatureBuilder:
    """Holds the RGB keypoint history; ``build`` once per tick, in tick order."""

    def __init__(self, rgb_window: int = schema.DEFAULT_RGB_WINDOW, lidar_cap: int = schema.DEFAULT_LIDAR_CAP,
                 mmwave_cap: int = schema.DEFAULT_MMWAVE_CAP,
                 mmwave_columns: tuple[str, ...] = schema.MMWAVE_COLUMNS, lidar_crop: bool = True):
        if min(rgb_window, lidar_cap, mmwave_cap) < 1:
            raise ValueError(f"rgb_window, lidar_cap and mmwave_cap must be >= 1, got {rgb_window}, "
                             f"{lidar_cap}, {mmwave_cap}")
        unknown = set(mmwave_columns) - set(schema.MMWAVE_COLUMNS)
        if unknown or len(mmwave_columns) != len(schema.MMWAVE_COLUMNS):
            raise ValueError(f"model mmwave_columns {list(mmwave_columns)} must be a permutation of the wire's "
                             f"{list(schema.MMWAVE_COLUMNS)}")
        self.rgb_window, self.lidar_cap, self.mmwave_cap = rgb_window, lidar_cap, mmwave_cap
        self.lidar_crop = bool(lidar_crop)
        self._mmwave_order = [schema.MMWAVE_COLUMNS.index(c) for c in mmwave_columns]
        self._rgb_history: deque[np.ndarray | None] = deque(maxlen=rgb_window)

    @classmethod
    def from_metadata(cls, meta) -> FeatureBuilder:
        return cls(meta.rgb_window, meta.lidar_cap, meta.mmwave_cap, tuple(meta.mmwave_columns), meta.lidar_crop)

    def build(self, tick) -> TickFeatures:
        """tick: TickInputs (``samples``: modality -> SyncedSample | None, ``wifi_packets``)."""
        rgb = tick.samples.get("rgb")
        self._rgb_history.append(None if rgb is None else np.asarray(rgb.arrays["kpts"], np.float32))
        points = {}
        for m in ("lidar", "mmwave"):
            sample = tick.samples.get(m)
            pts = None if sample is None else np.asarray(sample.arrays["points"])
            if m == "mmwave" and pts is not None and pts.size:
                pts = pts[:, self._mmwave_order]
            points[m] = pts
        wifi = None
        packets = wifi_packets_of(tick)
        if packets is not None:
            wifi = tuple(preprocess.resample_packets(p, schema.WIFI_PACKETS) for p in packets)
        inputs = preprocess.frame_inputs(list(self._rgb_history), points["lidar"], points["mmwave"], wifi,
                                         rgb_window=self.rgb_window, lidar_cap=self.lidar_cap,
                                         mmwave_cap=self.mmwave_cap, lidar_crop=self.lidar_crop)
        return TickFeatures({k: v[None] for k, v in inputs.items()}, inputs["presence"].copy())
