"""The MM-Fi file formats: one raw reader per modality, the ground truth, and the policies for
empty, missing and malformed files (docs/mmfi.md). ``sensors.mmfi`` re-exports all of it; this is
where the bytes on disk are turned into arrays.

* ``read_frame(seq_dir, modality, frame)`` -> the frame as stored, or None when the modality is
  absent for that frame: ``rgb`` float32 [17, 2] pixels (COCO-17), ``lidar`` float64 [N, 3],
  ``mmwave`` float64 [N, 5] (disk column order), ``wifi`` ``CSIFrame(amp, phase)`` each float64
  [3, 114, 10].
* ``read_ground_truth(seq_dir)`` -> float32 [297, 17, 3] metres (H36M-17, camera frame).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from sensors.core import schema

log = logging.getLogger("sensors.mmfi")

MISSING_POLICIES: tuple[str, ...] = ("absent", "error")
FRAME_STATUSES: tuple[str, ...] = ("ok", "empty", "missing")  # empty = 0-byte .bin (no detections)
CSI_KEYS = ("CSIamp", "CSIphase")
_BYTES_PER_VALUE = 8  # raw float64 .bin files


class MMFiFormatError(ValueError):
    """A file or folder of an MM-Fi-format dataset is not what the format says it must be."""


class MMFiLayoutError(MMFiFormatError):
    """The folder tree is wrong (subject under the wrong environment, missing folder, nothing found)."""


class MMFiMissingFileError(MMFiFormatError):
    """A file the reader needs does not exist."""


class CSIFrame(NamedTuple):
    """One WiFi CSI frame as stored: amplitude and phase, each float64 [3, 114, 10]."""

    amp: np.ndarray
    phase: np.ndarray


# ----------------------------------------------------------------------------------------------
# Raw readers
# ----------------------------------------------------------------------------------------------
def frame_path(seq_dir: str | Path, modality: str, frame: int) -> Path:
    """Path of 0-based frame ``frame`` of ``modality`` in a sequence folder."""
    if modality not in schema.MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(schema.MODALITIES)}")
    if not 0 <= frame < schema.FRAMES_PER_SEQUENCE:
        raise IndexError(f"frame index must be in 0..{schema.FRAMES_PER_SEQUENCE - 1}, got {frame}")
    return Path(seq_dir) / schema.MMFI_FOLDERS[modality] / schema.frame_file_name(modality, frame)


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MMFiFormatError(f"{path}: expected a numpy .npy array, the file cannot be read ({err})") from err
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise MMFiFormatError(f"{path}: expected a numeric .npy array, got {getattr(arr, 'dtype', type(arr))}")
    return arr


def _plausible_fraction(values: np.ndarray) -> float:
    """Fraction of values that look like physical quantities: finite, and 0 or 1e-3 <= |v| <= 1e3."""
    if not values.size:
        return 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.abs(values.astype(np.float64))
        ok = np.isfinite(a) & ((a == 0) | ((a >= 1e-3) & (a <= 1e3)))
    return float(ok.mean())


def _column_spread(values: np.ndarray, columns: int) -> float:
    """Mean within-column variance over the total variance: low when ``columns`` is the file's real
    column count (each column its own distribution), near 1 when rows straddle columns."""
    rows = values.reshape(-1, columns)
    rows = rows[np.isfinite(rows).all(axis=1)]
    with np.errstate(invalid="ignore", over="ignore"):
        total = float(np.var(rows)) if rows.size else 0.0
        return float(np.var(rows, axis=0).mean() / total) if total > 0 and np.isfinite(total) else 1.0


def point_file_problem(raw: bytes, modality: str) -> str | None:
    """Why the bytes of a ``.bin`` point file are not MM-Fi's float64 [N, columns] (None when they
    look right): float32 values (half the expected width), or another column count (a 5-column
    radar file where LiDAR's 3 columns belong, or the reverse). Heuristics on the values: run on
    files of at least 8 rows."""
    columns = len(schema.MODALITY_SPECS[modality].columns)
    if len(raw) % 4 or len(raw) < 8 * 8 * columns:
        return None
    f32, f64 = np.frombuffer(raw, "<f4"), np.frombuffer(raw, "<f8") if len(raw) % 8 == 0 else None
    if f64 is None or (_plausible_fraction(f32) >= 0.99 and _plausible_fraction(f64) < 0.9):
        return (f"the values look like float32 (read as float32 they are plausible, as float64 they are "
                f"not); MM-Fi point files are raw float64 x {columns} columns: convert with "
                f"np.fromfile(path, '<f4').astype('<f8').tofile(path)")
    for other in (3, 5):
        if other != columns and len(raw) % (8 * other) == 0 and len(raw) // (8 * other) >= 8:
            if _column_spread(f64, other) < 0.5 * _column_spread(f64, columns):
                return (f"the values look like {other} columns per point, {modality} has {columns} "
                        f"({', '.join(schema.MODALITY_SPECS[modality].columns)}); is this another sensor's file?")
    return None


def read_keypoints(path: str | Path, modality: str | None = None) -> np.ndarray:
    """``rgb/frameNNN.npy`` -> float32 [17, 2] pixels of a 640x480 image, COCO-17 order
    (``modality``: a keypoint modality of the table, the first one by default)."""
    path = Path(path)
    arr = _load_npy(path)
    expected = (schema.MODALITY_SPECS[modality] if modality else schema.of_kind(schema.KEYPOINTS)[0]).shape
    if arr.shape != expected:
        raise MMFiFormatError(f"{path}: expected RGB keypoints of shape {expected} (COCO-17 x (u, v) pixels), "
                              f"got {arr.shape}")
    return arr.astype(np.float32)


def read_points(path: str | Path, modality: str) -> np.ndarray | None:
    """``lidar/mmwave frameNNN.bin`` (raw little-endian float64) -> float64 [N, columns]; a 0-byte
    file (no detections) -> None."""
    path = Path(path)
    spec = schema.MODALITY_SPECS[modality]
    columns = len(spec.columns)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise MMFiFormatError(f"{path}: the file cannot be read ({err.strerror or err})") from err
    if size == 0:
        return None
    row = _BYTES_PER_VALUE * columns
    if size % row:
        raise MMFiFormatError(f"{path}: expected raw float64 {modality} points with {columns} columns "
                              f"(file size a multiple of {row} bytes), got {size} bytes; the file is "
                              "truncated or not an MM-Fi point cloud")
    n = size // row
    if n > spec.max_points:
        raise MMFiFormatError(f"{path}: expected at most {spec.max_points} {modality} points "
                              f"(schema.MAX_*_POINTS), got {n}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MMFiFormatError(f"{path}: the file cannot be read ({err.strerror or err}); check its permissions") from err
    problem = point_file_problem(raw, modality)
    if problem:
        raise MMFiFormatError(f"{path}: {problem}")
    return np.frombuffer(raw, dtype="<f8").reshape(n, columns).copy()


def read_csi(path: str | Path, modality: str | None = None) -> CSIFrame:
    """``wifi-csi/frameNNN.mat`` (MATLAB 5, keys CSIamp and CSIphase) -> CSIFrame of float64
    [3, 114, 10] arrays, unrepaired (NaN/inf kept; ``preprocess.clean_csi`` repairs them)
    (``modality``: a CSI modality of the table, the first one by default)."""
    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=CSI_KEYS)
    except (MatReadError, ValueError, TypeError, OSError, EOFError) as err:
        raise MMFiFormatError(f"{path}: expected a MATLAB 5 .mat file with {' and '.join(CSI_KEYS)}, "
                              f"the file cannot be read ({err})") from err
    missing = [k for k in CSI_KEYS if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise MMFiFormatError(f"{path}: expected variables {', '.join(CSI_KEYS)}, missing {', '.join(missing)} "
                              f"(found {', '.join(found) or 'none'})")
    expected = (schema.MODALITY_SPECS[modality] if modality else schema.of_kind(schema.CSI)[0]).shape
    out = []
    for k in CSI_KEYS:
        arr = np.asarray(mat[k])
        if arr.shape != expected or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise MMFiFormatError(f"{path}: expected {k} real {expected} (antennas x subcarriers x packets), "
                                  f"got {arr.dtype} {arr.shape}")
        out.append(arr.astype(np.float64))
    return CSIFrame(*out)


def read_frame_status(seq_dir: str | Path, modality: str, frame: int) -> tuple[Any, str]:
    """(value, status) of one frame: status "ok" (value as ``read_frame``), "empty" (0-byte .bin,
    value None), "missing" (no such file, value None) or "invalid" (keypoints with NaN/inf: no
    detection to use, value None). Malformed files raise MMFiFormatError."""
    path = frame_path(seq_dir, modality, frame)
    if not path.is_file():
        return None, "missing"
    kind = schema.MODALITY_SPECS[modality].kind
    if kind == schema.KEYPOINTS:
        kpts = read_keypoints(path, modality)
        return (kpts, "ok") if np.isfinite(kpts).all() else (None, "invalid")
    if kind == schema.CSI:
        return read_csi(path, modality), "ok"
    points = read_points(path, modality)
    return points, ("empty" if points is None else "ok")


_warned_missing: set[tuple[str, str]] = set()


def _missing_frame(seq_dir: str | Path, modality: str, frame: int, policy: str) -> None:
    """Apply the missing-frame policy: raise, or log once per (sequence folder, modality)."""
    path = frame_path(seq_dir, modality, frame)
    if policy == "error":
        raise MMFiMissingFileError(f"{path}: frame file missing (every sequence has "
                                   f"{schema.FRAMES_PER_SEQUENCE} frames); restore it, or read with "
                                   "missing='absent' to treat missing frames as absent")
    key = (str(Path(seq_dir)), modality)
    if key not in _warned_missing:
        _warned_missing.add(key)
        log.warning("%s missing: %s frames of this sequence that have no file are treated as absent "
                    "(presence 0); further misses here are counted, not logged", path, modality)


def _check_policy(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing-frame policy must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")


def read_frame(seq_dir: str | Path, modality: str, frame: int, missing: str = "absent") -> Any:
    """One raw frame of ``modality`` (0-based ``frame``) or None when absent.

    rgb -> float32 [17, 2] pixels; lidar -> float64 [N, 3] m; mmwave -> float64 [N, 5] (disk column
    order); wifi -> ``CSIFrame(amp, phase)`` float64 [3, 114, 10]. None for a 0-byte .bin (no
    detections) and, with ``missing="absent"``, for a missing file (logged once per sequence folder
    and modality); ``missing="error"`` raises ``MMFiMissingFileError`` instead.
    """
    _check_policy(missing)
    value, status = read_frame_status(seq_dir, modality, frame)
    if status == "missing":
        _missing_frame(seq_dir, modality, frame, missing)
    return value


def read_ground_truth(seq_dir: str | Path) -> np.ndarray:
    """``ground_truth.npy`` -> float32 [297, 17, 3] metres, H36M-17, camera frame (y down, z depth)."""
    path = Path(seq_dir) / schema.MMFI_GT_FILE
    if not path.is_file():
        raise MMFiMissingFileError(f"{path}: ground truth missing; every MM-Fi sequence folder has "
                                   f"{schema.MMFI_GT_FILE}")
    arr = _load_npy(path)
    expected = (schema.FRAMES_PER_SEQUENCE, schema.N_JOINTS, 3)
    if arr.shape != expected:
        raise MMFiFormatError(f"{path}: expected ground truth of shape {expected} (frames x H36M-17 joints x "
                              f"xyz metres), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise MMFiFormatError(f"{path}: expected finite joint positions, got "
                              f"{int((~np.isfinite(arr)).sum())} NaN/inf values")
    return arr.astype(np.float32)


def mmwave_permutation(columns: Sequence[str]) -> list[int]:
    """Column indices that turn mmWave points stored in ``columns`` order into
    ``schema.MMWAVE_COLUMNS`` order (MM-Fi's column order is disputed: keep it a setting)."""
    if sorted(columns) != sorted(schema.MMWAVE_COLUMNS):
        raise ValueError(f"mmwave_columns must be an ordering of {schema.MMWAVE_COLUMNS}, got {tuple(columns)}")
    return [list(columns).index(c) for c in schema.MMWAVE_COLUMNS]
