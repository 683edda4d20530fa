"""Synced tick -> model inputs (batch 1), through ``sensors.preprocess`` only.

Per modality (absent -> zero-filled input and presence 0, the same mask as a Shapley coalition):

* rgb: the causal window of the last R ticks' keypoints (``preprocess.rgb_window``; ticks without
  keypoints are edge-padded from their neighbours) -> [1, R, 17, 2];
* lidar / mmwave: ``preprocess.point_input`` (LiDAR cropped to the body, then ``sample_points``) to the model's caps -> [1, C, k] + mask [1, C];
  mmWave columns are reordered to the model's ``mmwave_columns`` when they differ from the wire's;
  an empty cloud (no detections, a normal radar frame) is present as a message but, as in
  training, absent to the model (presence 0);
* wifi: the CSI packets of the sync window (amplitude and phase [P, 3, 114]) resampled to 10
  (``preprocess.resample_packets``), then cleaned and min-max normalised (``preprocess.wifi_input``)
  -> [1, 3, 114, 20].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sensors import preprocess, schema


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
                 mmwave_columns: tuple[str, ...] = schema.MMWAVE_COLUMNS):
        if min(rgb_window, lidar_cap, mmwave_cap) < 1:
            raise ValueError(f"rgb_window, lidar_cap and mmwave_cap must be >= 1, got {rgb_window}, "
                             f"{lidar_cap}, {mmwave_cap}")
        unknown = set(mmwave_columns) - set(schema.MMWAVE_COLUMNS)
        if unknown or len(mmwave_columns) != len(schema.MMWAVE_COLUMNS):
            raise ValueError(f"model mmwave_columns {list(mmwave_columns)} must be a permutation of the wire's "
                             f"{list(schema.MMWAVE_COLUMNS)}")
        self.rgb_window, self.lidar_cap, self.mmwave_cap = rgb_window, lidar_cap, mmwave_cap
        self._mmwave_order = [schema.MMWAVE_COLUMNS.index(c) for c in mmwave_columns]
        self._rgb_history: deque[np.ndarray | None] = deque(maxlen=rgb_window)

    @classmethod
    def from_metadata(cls, meta) -> FeatureBuilder:
        return cls(meta.rgb_window, meta.lidar_cap, meta.mmwave_cap, tuple(meta.mmwave_columns))

    def build(self, tick) -> TickFeatures:
        """tick: TickInputs (``samples``: modality -> SyncedSample | None, ``wifi_packets``)."""
        presence = np.zeros(schema.N_MODALITIES, np.float32)
        rgb = tick.samples.get("rgb")
        self._rgb_history.append(None if rgb is None else np.asarray(rgb.arrays["kpts"], np.float32))
        inputs = {"rgb": np.zeros((1, self.rgb_window, schema.N_KEYPOINTS, 2), np.float32)}
        if rgb is not None:
            inputs["rgb"][0] = preprocess.rgb_window(list(self._rgb_history), self.rgb_window)
            presence[schema.MODALITY_INDEX["rgb"]] = 1.0
        for m, cap in (("lidar", self.lidar_cap), ("mmwave", self.mmwave_cap)):
            cols = len(schema.MODALITY_SPECS[m].columns)
            sample = tick.samples.get(m)
            pts = np.zeros((0, cols), np.float32) if sample is None else np.asarray(sample.arrays["points"])
            if m == "mmwave" and pts.size:
                pts = pts[:, self._mmwave_order]
            points, mask = preprocess.point_input(m, pts, cap)
            inputs[m], inputs[f"{m}_mask"] = points[None], mask[None]
            # As in training (sensors.mmfi.model_inputs): a cloud without any finite point is absent.
            presence[schema.MODALITY_INDEX[m]] = float(mask.any())
        inputs["wifi"] = np.zeros((1, *schema.WIFI_INPUT_SHAPE), np.float32)
        packets = wifi_packets_of(tick)
        if packets is not None:
            amp = preprocess.resample_packets(packets[0], schema.WIFI_PACKETS)
            phase = preprocess.resample_packets(packets[1], schema.WIFI_PACKETS)
            inputs["wifi"][0] = preprocess.wifi_input(amp, phase)
            presence[schema.MODALITY_INDEX["wifi"]] = 1.0
        inputs["presence"] = presence[None].copy()
        return TickFeatures({k: inputs[k] for k in schema.MODEL_INPUTS}, presence)
