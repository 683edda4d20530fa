"""Model preprocessing in numpy, shared by training (dataset) and the runtime (live ticks).

Both halves call these same functions, so a frame means the same thing to the trained model
whether it came off disk or off the wire. Pure functions; shapes and units are stated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sensors.core import schema

if TYPE_CHECKING:
    from sensors.core.contract import ModelContract


def normalize_keypoints(kpts: np.ndarray) -> np.ndarray:
    """Pixels -> VideoPose3D screen coordinates.

    kpts: [..., 17, 2] pixels of a 640x480 image. Returns float32 [..., 17, 2] with
    x in [-1, 1] and y in [-h/w, h/w] (aspect ratio kept).
    """
    kpts = np.asarray(kpts, dtype=np.float32)
    w, h = schema.IMAGE_WIDTH, schema.IMAGE_HEIGHT
    out = kpts / np.float32(w) * np.float32(2.0)
    out = out - np.array([1.0, h / w], dtype=np.float32)
    return out.astype(np.float32)


def sample_points(points: np.ndarray, cap: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad or sample a point cloud to ``cap`` points, deterministically.

    points: [N, columns] (N may be 0). Rows with a non-finite value are dropped. When N > cap,
    ``cap`` evenly spaced rows are kept (order preserved: ring order for LiDAR), so training and
    serving pick the same points. Returns (float32 [cap, columns], bool mask [cap]).
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, columns)
    points = points[np.isfinite(points).all(axis=1)]
    n = points.shape[0]
    out = np.zeros((cap, columns), dtype=np.float32)
    mask = np.zeros(cap, dtype=bool)
    if n > cap:
        idx = np.linspace(0, n - 1, cap).round().astype(np.int64)
        out[:] = points[idx]
        mask[:] = True
    elif n > 0:
        out[:n] = points
        mask[:n] = True
    return out, mask


@dataclass(frozen=True)
class LidarCrop:
    """Which LiDAR points are kept as the body (sensor frame: x forward, y left, z up, metres).

    1. Ground plane: the sensor is mounted level, so the floor is the horizontal slab at the
       ``floor_percentile`` height of the cloud; it counts as a floor only if at least
       ``floor_min_fraction`` of the points, and ``floor_min_points`` of them, lie within
       ``floor_band`` of it (a cloud without floor keeps its lowest points). Points up to ``floor_margin`` above it are removed.
    2. Range box: ``x_range`` (MM-Fi subjects stand ~3.2 m from the sensor, the nearest back wall
       is 4.6 m), ``|y| <= y_max``, ``z <= z_max``.
    3. Statistical crop: points farther than ``body_radius`` (horizontally) from the median of
       what is left are stray returns.
    """

    floor_percentile: float = 5.0
    floor_band: float = 0.03
    floor_min_fraction: float = 0.10
    floor_min_points: int = 50
    floor_margin: float = 0.06
    x_range: tuple[float, float] = (0.5, 4.4)
    y_max: float = 1.5
    z_max: float = 1.5
    body_radius: float = 1.0


LIDAR_CROP = LidarCrop()


def crop_lidar(points: np.ndarray, crop: LidarCrop = LIDAR_CROP) -> np.ndarray:
    """LiDAR cloud [N, 3] (finite rows) -> the rows on the body, ring order kept ([M, 3], M <= N)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    if points.shape[0] == 0:
        return points
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    keep = (x >= crop.x_range[0]) & (x <= crop.x_range[1]) & (np.abs(y) <= crop.y_max) & (z <= crop.z_max)
    floor = np.float32(np.percentile(z, crop.floor_percentile))
    on_floor = int(np.count_nonzero(np.abs(z - floor) <= crop.floor_band))
    if on_floor >= crop.floor_min_points and on_floor >= crop.floor_min_fraction * len(z):
        keep &= z > floor + crop.floor_margin
    if keep.any():
        cx, cy = np.median(x[keep]), np.median(y[keep])
        keep &= (x - cx) ** 2 + (y - cy) ** 2 <= crop.body_radius ** 2
    return points[keep]


def point_input(modality: str, points: np.ndarray, cap: int, crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The model input of a point modality: non-finite rows dropped, cropped to the body where the
    modality has a crop setting (``ModalitySpec.crop_key``: LiDAR, ``crop_lidar``; ``crop=False``
    keeps the raw scan, floor and walls, as the official toolbox feeds it), then sampled or padded
    to ``cap`` (``sample_points``). The one rule training and the runtime both use. Returns
    (float32 [cap, columns], bool mask [cap])."""
    spec = schema.MODALITY_SPECS[modality]
    columns = len(spec.columns)
    points = np.asarray(points, dtype=np.float32).reshape(-1, columns)
    points = points[np.isfinite(points).all(axis=1)]
    if spec.crop_key and crop:
        points = crop_lidar(points)
    return sample_points(points, cap, columns)


def clean_csi(values: np.ndarray) -> np.ndarray:
    """Official MM-Fi CSI repair of one frame: inf -> NaN, NaN -> mean of the finite values of the
    same packet slice ``[:, :, p]``, a slice with no finite value -> 0.

    values: [3, 114, P] float. Returns float32 [3, 114, P] with only finite values.
    """
    v = np.array(values, dtype=np.float64, copy=True)
    v[~np.isfinite(v)] = np.nan
    for p in range(v.shape[-1]):
        sl = v[..., p]
        bad = np.isnan(sl)
        if bad.any():
            finite = sl[~bad]
            sl[bad] = finite.mean() if finite.size else 0.0
    return v.astype(np.float32)


def minmax(values: np.ndarray) -> np.ndarray:
    """Per-frame min-max to [0, 1]; a constant frame maps to 0."""
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def wifi_input(amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """CSI amplitude and phase [3, 114, 10] -> model input float32 [3, 114, 20].

    Each is cleaned (``clean_csi``) and min-max normalised per frame, then concatenated along the
    packet axis, amplitude first, as the official MM-Fi toolbox does.
    """
    a = minmax(clean_csi(amp))
    p = minmax(clean_csi(phase))
    return np.concatenate([a, p], axis=-1).astype(np.float32)


def resample_packets(packets: np.ndarray, n: int = schema.WIFI_PACKETS) -> np.ndarray:
    """Resample a run of CSI packets [P, 3, 114] (P >= 1, oldest first) to [3, 114, n].

    Linear interpolation over the packet index; a single packet is repeated. Non-finite values
    pass through (``clean_csi`` repairs them afterwards).
    """
    packets = np.asarray(packets, dtype=np.float32)
    if packets.ndim != 3 or packets.shape[1:] != (schema.WIFI_ANTENNAS, schema.WIFI_SUBCARRIERS):
        raise ValueError(f"CSI packets must be [P, {schema.WIFI_ANTENNAS}, {schema.WIFI_SUBCARRIERS}], "
                         f"got {list(packets.shape)}")
    p = packets.shape[0]
    if p == 0:
        raise ValueError("CSI resampling needs at least one packet")
    if p == n:
        out = packets
    elif p == 1:
        out = np.repeat(packets, n, axis=0)
    else:
        pos = np.linspace(0.0, p - 1.0, n)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, p - 1)
        frac = (pos - lo).astype(np.float32)[:, None, None]
        out = packets[lo] * (1.0 - frac) + packets[hi] * frac
    return np.ascontiguousarray(np.moveaxis(out, 0, -1), dtype=np.float32)


def rgb_window(frames: list[np.ndarray | None], window: int) -> np.ndarray:
    """Causal keypoint window from the most recent frames (oldest first, last = now).

    frames: up to ``window`` items of [17, 2] pixels, or None where no keypoints were seen.
    Missing entries take the nearest later frame, then the nearest earlier one (edge padding, as
    VideoPose3D pads the sequence start). Returns normalised float32 [window, 17, 2]; all zeros
    if no frame is known.
    """
    frames = list(frames)[-window:]
    frames = [None] * (window - len(frames)) + frames
    known = [i for i, f in enumerate(frames) if f is not None]
    out = np.zeros((window, schema.N_KEYPOINTS, 2), dtype=np.float32)
    if not known:
        return out
    for i in range(window):
        later = [k for k in known if k >= i]
        src = later[0] if later else known[-1]
        out[i] = normalize_keypoints(frames[src])
    return out


def frame_inputs(frames: Mapping[str, Any], contract: ModelContract) -> dict[str, np.ndarray]:
    """The model inputs of one frame (``schema.MODEL_INPUTS``, shapes ``contract.shapes`` without
    the batch axis): THE rule from raw frames to what the model sees, used by the MM-Fi reader
    (training, calibration, probes) and the runtime's ticks alike, set by the model's ``contract``.

    frames: modality -> its raw frame(s); a missing key or None = absent. By kind
    (``ModalitySpec.kind``): keypoints, the last <= window frames [17, 2] px, oldest first,
    last = now (None entries where none was seen); points, [N, columns] in ``schema`` column order
    (``MMWAVE_COLUMNS``; reordered here to the contract's); CSI, (amplitude, phase) each
    [3, 114, 10] as MM-Fi stores a frame. A modality is present when its current frame is (for
    points: at least one finite point, so an empty radar frame is absent); absent inputs are all
    zero and the presence mask says 0.
    """
    presence = np.zeros(schema.N_MODALITIES, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for spec in schema.MODALITY_SPECS.values():
        inputs, present = _INPUTS[spec.kind](spec, frames.get(spec.name), contract)
        out.update(inputs)
        presence[spec.index] = present
    out["presence"] = presence
    return {name: out[name] for name in schema.MODEL_INPUTS}


def _keypoint_inputs(spec: schema.ModalitySpec, frames, contract: ModelContract) -> tuple[dict, float]:
    window = contract.size(spec)
    if frames and frames[-1] is not None:
        return {spec.name: rgb_window(list(frames), window)}, 1.0
    return {spec.name: np.zeros((window, *spec.shape), dtype=np.float32)}, 0.0


def _point_inputs(spec: schema.ModalitySpec, points, contract: ModelContract) -> tuple[dict, float]:
    points = np.zeros((0, len(spec.columns)), np.float32) if points is None else np.asarray(points)
    order = contract.columns(spec)
    if order != spec.columns and points.size:
        points = points[:, [spec.columns.index(c) for c in order]]
    values, mask = point_input(spec.name, points, contract.size(spec), contract.crop(spec))
    return {spec.name: values, f"{spec.name}_mask": mask}, float(mask.any())


def _csi_inputs(spec: schema.ModalitySpec, csi, contract: ModelContract) -> tuple[dict, float]:
    if csi is None:
        return {spec.name: np.zeros(schema.input_shapes(spec)[spec.name], dtype=np.float32)}, 0.0
    return {spec.name: wifi_input(*csi)}, 1.0


_INPUTS = {schema.KEYPOINTS: _keypoint_inputs, schema.POINTS: _point_inputs, schema.CSI: _csi_inputs}
