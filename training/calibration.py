"""The contribution baseline of an exported model: the live Shapley shares measured on validation
frames (``CalibrationSet``, ``load_calibration``), with the runtime's own window, and stored in the
ONNX metadata so the runtime can tell drift from normal (docs/export.md). ``training.export``
re-exports these names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from sensors import posemath, schema
from sensors.mmfi import MMFiDataset, MMFiFormatError
from training.config import Config

log = logging.getLogger("training.export")

# Frames per window: the runtime's sliding window (runtime.contributions.ContributionConfig.window_ticks,
# 30 ticks = 3 s at 10 Hz; a test keeps the two equal), so baseline and live shares compare like for like.
CALIBRATION_WINDOW = 30
CALIBRATION_MAX_FRAMES = 4096


class ExportError(RuntimeError):
    """The export cannot proceed; the message says what to change."""


@dataclass
class CalibrationSet:
    """Validation frames in time order for the contribution baseline.

    inputs: model inputs with N frames each; targets: [N, 17, 3] metres; sequence: [N] id of the
    sequence of each frame (windows never cross sequences); source: where the frames came from.
    """

    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    sequence: np.ndarray
    source: dict[str, Any]

    def __post_init__(self):
        n = len(self.targets)
        if n == 0:
            raise ExportError("calibration set is empty: point --data at a dataset with test frames")
        bad = {k: v.shape[0] for k, v in self.inputs.items() if v.shape[0] != n}
        if bad or len(self.sequence) != n or set(self.inputs) != set(schema.MODEL_INPUTS):
            raise ExportError(f"calibration arrays disagree: {n} targets, sequence {len(self.sequence)}, "
                              f"inputs {sorted(self.inputs)} with mismatching lengths {bad}")

    def windows(self, window: int) -> list[np.ndarray]:
        """Index arrays of consecutive, non-overlapping windows inside each sequence."""
        out = []
        for seq in dict.fromkeys(self.sequence.tolist()):
            idx = np.flatnonzero(self.sequence == seq)
            out.extend(idx[s:s + window] for s in range(0, len(idx) - window + 1, window))
        return out

    def limit(self, max_frames: int, window: int) -> CalibrationSet:
        """Keep at most ``max_frames`` frames as evenly spread whole windows (all sequences alike)."""
        windows = self.windows(window)
        keep = max(1, max_frames // window)
        if len(windows) <= keep:
            return self
        chosen = np.linspace(0, len(windows) - 1, keep).round().astype(np.int64)
        idx = np.concatenate([windows[i] for i in chosen])
        source = {**self.source, "frames_used": int(len(idx))}
        return CalibrationSet({k: v[idx] for k, v in self.inputs.items()}, self.targets[idx],
                              self.sequence[idx], source)


def measure_baseline(model_bytes: bytes, calibration: CalibrationSet, window: int = CALIBRATION_WINDOW,
                     threads: int = 2) -> dict[str, Any]:
    """Mean per-modality Shapley values and shares over windows of ``window`` consecutive frames.

    Runs the exported graph itself (onnxruntime) so the baseline is that of the served artifact.
    Label-free profit: each coalition's prediction vs the full prediction; labelled: vs the truth.
    """
    windows = calibration.windows(window)
    if not windows:
        raise ExportError(f"no sequence has {window} consecutive calibration frames; use more data")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    phis: dict[str, list[np.ndarray]] = {"label_free": [], "labelled": []}
    for idx in tqdm(windows, desc="calibration windows", unit="win", leave=False):
        feed = {n: np.ascontiguousarray(calibration.inputs[n][idx]) for n in schema.MODEL_INPUTS}
        pose, coalition_poses = session.run(list(schema.MODEL_OUTPUTS), feed)
        for kind, target in (("label_free", pose), ("labelled", calibration.targets[idx])):
            values = posemath.coalition_values(coalition_poses, target)
            phis[kind].append(posemath.shapley_values(values))
    result: dict[str, Any] = {"available": True, "window": window, "n_windows": len(windows),
                              "n_frames": int(sum(len(i) for i in windows)), "source": calibration.source}
    for kind, rows in phis.items():
        phi = np.stack(rows)  # [W, 4]
        shares = np.stack([posemath.contribution_shares(p) for p in phi])
        result[kind] = {"shapley": phi.mean(axis=0).tolist(),
                        "shares": posemath.contribution_shares(phi.mean(axis=0)).tolist(),
                        "share_std": shares.std(axis=0).tolist()}
    result["profit"] = {"label_free": "Pearson profit of each coalition vs the full prediction (DESIGN 5)",
                        "labelled": "Pearson profit of each coalition vs the ground truth"}
    return result


def load_calibration(cfg: Config, data_root: str | Path | None = None, subset: str = "test",
                     max_frames: int = CALIBRATION_MAX_FRAMES, window: int = CALIBRATION_WINDOW,
                     progress: bool = True) -> CalibrationSet:
    """Validation frames for the baseline: the config's dataset settings (root, protocol, split,
    split seed) or ``data_root``; whole sequences spread evenly over the subset, only as many as
    ``max_frames`` frames in windows of ``window`` need (each sequence is read once)."""
    root = Path(cfg.data.root if data_root is None else data_root)
    if not root.is_dir():
        raise ExportError(f"no calibration data: dataset root {root} not found. Point --data at an MM-Fi-format "
                          f"folder, or pass --no-calibration (the runtime then has no contribution baseline)")
    if not 1 <= window <= schema.FRAMES_PER_SEQUENCE:
        raise ExportError(f"calibration window must be 1..{schema.FRAMES_PER_SEQUENCE} frames, got {window}")
    m = cfg.model
    try:
        ds = MMFiDataset(root, protocol=cfg.data.protocol, split=cfg.data.split, subset=subset,
                         seed=cfg.data.split_seed, rgb_window=m.rgb_window, lidar_cap=m.lidar_cap,
                         mmwave_cap=m.mmwave_cap, modalities=schema.MODALITIES)
    except MMFiFormatError as err:
        raise ExportError(f"cannot read calibration data from {root}: {err}. Point --data at a dataset with "
                          f"{cfg.data.protocol}/{cfg.data.split} {subset} frames, or pass --no-calibration") from err
    per_sequence = schema.FRAMES_PER_SEQUENCE // window * window
    n_seq = min(len(ds.keys), max(1, -(-max_frames // per_sequence)))
    keys = [ds.keys[i] for i in np.linspace(0, len(ds.keys) - 1, n_seq).round().astype(np.int64)]
    parts = [ds.sequence_arrays(k) for k in tqdm(keys, desc="calibration sequences", unit="seq",
                                                  disable=not progress)]
    inputs = {n: np.concatenate([p[n] for p in parts]) for n in schema.MODEL_INPUTS}
    targets = np.concatenate([p["joints"] for p in parts]).astype(np.float32)
    sequence = np.repeat(np.arange(len(keys)), schema.FRAMES_PER_SEQUENCE)
    source = {"root": root.name, "protocol": cfg.data.protocol, "split": cfg.data.split,
              "split_seed": cfg.data.split_seed, "subset": subset, "sequences": len(keys),
              "sequences_in_subset": len(ds.keys)}
    return CalibrationSet(inputs, targets, sequence, source).limit(max_frames, window)
