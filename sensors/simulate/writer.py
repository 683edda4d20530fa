"""Write one sequence in MM-Fi's exact layout and formats.

``ROOT/Exx/Syy/Azz/{rgb,lidar,mmwave,wifi-csi}/frame001..frame297.*`` plus ``ground_truth.npy``:

* rgb ``.npy``: (17, 2) float64 pixels, COCO-17;
* lidar ``.bin``: raw float64 (N, 3), sensor frame;
* mmwave ``.bin``: raw float64 (N, 5); a 0-byte file when nothing was detected;
* wifi-csi ``.mat``: MATLAB 5 file (scipy ``savemat(..., format='5')``, fixed header date) with
  ``CSIamp`` and ``CSIphase`` float64 (3, 114, 10);
* ``ground_truth.npy``: (297, 17, 3) float32 metres, camera frame;
* ``rehab_truth.json``: the true repetitions and joint-angle channels (``truth.py``), a side file
  MM-Fi's reader ignores.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from sensors.core import schema
from sensors.mmfi_files import CSI_KEYS
from sensors.simulate.truth import write_truth


@dataclass
class SequenceData:
    """Everything of one sequence, in memory. T = 297 frames."""

    ground_truth: np.ndarray          # float32 [T,17,3] metres, camera frame
    rgb: np.ndarray                   # float64 [T,17,2] pixels
    lidar: list[np.ndarray]           # T x float64 [N,3]
    mmwave: list[np.ndarray]          # T x float64 [N,5]
    csi_amp: np.ndarray               # float64 [T,3,114,10]
    csi_phase: np.ndarray             # float64 [T,3,114,10]
    rehab_truth: dict | None = None   # true repetitions and angle channels (sensors.simulate.truth)

    def check(self) -> None:
        t = schema.FRAMES_PER_SEQUENCE
        shapes = {
            "ground_truth": (self.ground_truth.shape, (t, schema.N_JOINTS, 3)),
            "rgb keypoints": (self.rgb.shape, (t, schema.N_KEYPOINTS, 2)),
            "csi_amp": (self.csi_amp.shape, (t, schema.WIFI_ANTENNAS, schema.WIFI_SUBCARRIERS, schema.WIFI_PACKETS)),
            "csi_phase": (self.csi_phase.shape, (t, schema.WIFI_ANTENNAS, schema.WIFI_SUBCARRIERS, schema.WIFI_PACKETS)),
            "lidar frames": ((len(self.lidar),), (t,)), "mmwave frames": ((len(self.mmwave),), (t,)),
        }
        bad = {k: f"got {got}, expected {want}" for k, (got, want) in shapes.items() if tuple(got) != want}
        if bad:
            raise ValueError(f"sequence arrays have the wrong shapes: {bad}")

    def frame(self, spec: schema.ModalitySpec, t: int):
        """Frame ``t`` of a modality as MM-Fi stores it: the field of the modality's name (keypoints,
        points), or (amplitude, phase) for CSI."""
        if spec.kind == schema.CSI:
            return self.csi_amp[t], self.csi_phase[t]
        if not hasattr(self, spec.name):
            raise ValueError(f"the generator makes no {spec.name} frames: add its sensors/simulate module and "
                             f"its field here (docs/architecture.md, Adding a modality)")
        return getattr(self, spec.name)[t]


# scipy writes the wall-clock time into the 116-byte MAT header text; a fixed text keeps a dataset
# byte-identical for a seed. Same layout as scipy's (and the real MM-Fi files'): NUL padded.
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file Platform: posix, Created on: Thu Jan  1 00:00:00 1970"
MAT_HEADER_BYTES = 116


def mat_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A MATLAB 5 file (``scipy.io.savemat(..., format='5')``) with a reproducible header."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, arrays, format="5")
    data = bytearray(buf.getvalue())
    data[:MAT_HEADER_BYTES] = MAT_HEADER_TEXT.ljust(MAT_HEADER_BYTES, b"\0")
    return bytes(data)


def dataset_kind(root) -> str:
    """"synthetic" when ``root`` was written by this generator (its sequences carry the
    ``rehab_truth.json`` side file, which real MM-Fi has not), "real" for an MM-Fi layout without
    it, "unknown" when ``root`` holds no MM-Fi layout at all. Exports record it (awc_build_info)."""
    root = Path(root)
    first = next(iter(sorted(root.glob("E0[1-4]/S[0-4][0-9]/A[0-2][0-9]"))), None) if root.is_dir() else None
    if first is None:
        return "unknown"
    return "synthetic" if (first / "rehab_truth.json").is_file() else "real"


def sequence_dir(root: Path, subject: str, action: str) -> Path:
    return Path(root) / schema.environment_of(subject) / subject / action


def _write_npy(path: Path, frame) -> None:
    np.save(path, np.ascontiguousarray(frame, np.float64))


def _write_bin(path: Path, frame) -> None:
    np.ascontiguousarray(frame, np.float64).tofile(path)


def _write_mat(path: Path, frame) -> None:
    path.write_bytes(mat_bytes({key: np.ascontiguousarray(v, np.float64) for key, v in zip(CSI_KEYS, frame)}))


# How each kind of modality is stored (MM-Fi's formats, docs/mmfi.md).
WRITERS = {schema.KEYPOINTS: _write_npy, schema.POINTS: _write_bin, schema.CSI: _write_mat}


def write_sequence(seq_dir: Path, data: SequenceData) -> int:
    """Write all files of one sequence; returns the bytes written."""
    data.check()
    folders = {m: Path(seq_dir) / spec.mmfi_folder for m, spec in schema.MODALITY_SPECS.items()}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for t in range(schema.FRAMES_PER_SEQUENCE):
        for m, spec in schema.MODALITY_SPECS.items():
            WRITERS[spec.kind](folders[m] / schema.frame_file_name(m, t), data.frame(spec, t))
    np.save(Path(seq_dir) / schema.MMFI_GT_FILE, data.ground_truth.astype(np.float32))
    write_truth(seq_dir, data.rehab_truth)
    return sum(f.stat().st_size for f in Path(seq_dir).rglob("*") if f.is_file())
