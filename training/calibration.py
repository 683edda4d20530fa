"""The contribution baseline of an exported model: the live Shapley shares measured on validation
frames (``CalibrationSet``, ``load_calibration``), with the runtime's own window, and stored in the
ONNX metadata so the runtime can tell drift from normal (docs/export.md). The validation frames are
the training recordings the checkpoint's run held out (``validation_recordings``), or the test
subset where that run validated on it. ``training.export`` re-exports these names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from sensors.core import posemath, schema
from sensors.mmfi import MMFiDataset, MMFiFormatError, SequenceKey
from training.config import Config, model_contract
from training.data import (
    META_KEYS,
    Split,
    Validation,
    hold_out_validation,
    load_split,
    select_frames,
    subsample_training,
)

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
            raise ExportError("calibration set is empty: point --data at a dataset with frames of the configured "
                              "protocol and split, or pass --no-calibration")
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
    result["profit"] = {"label_free": "Pearson profit of each coalition vs the full prediction (docs/runtime.md)",
                        "labelled": "Pearson profit of each coalition vs the ground truth"}
    return result


def load_calibration(cfg: Config, data_root: str | Path | None = None, subset: str = "validation",
                     max_frames: int = CALIBRATION_MAX_FRAMES, window: int = CALIBRATION_WINDOW,
                     progress: bool = True) -> CalibrationSet:
    """Frames for the baseline: the config's dataset settings (root, protocol, split, split seed)
    or ``data_root``; whole sequences spread evenly, only as many as ``max_frames`` frames in
    windows of ``window`` need (each sequence is read once).

    ``subset``: ``validation`` = the training recordings the checkpoint's run held out for
    validation (``validation_recordings``: never trained on); when that run validated on the test
    subset (``data.validation=test``, or too few recordings to hold one out) the test subset stands
    in, with a warning, and ``source`` says so. ``train`` / ``test`` / ``all``: that subset."""
    root = Path(cfg.data.root if data_root is None else data_root)
    if not root.is_dir():
        raise ExportError(f"no calibration data: dataset root {root} not found. Point --data at an MM-Fi-format "
                          f"folder, or pass --no-calibration (the runtime then has no contribution baseline)")
    if not 1 <= window <= schema.FRAMES_PER_SEQUENCE:
        raise ExportError(f"calibration window must be 1..{schema.FRAMES_PER_SEQUENCE} frames, got {window}")
    if subset != "validation":
        ds = _dataset(cfg, root, subset)
        return _read(ds, ds.keys, {**_source(cfg, root, subset), "set": subset}, max_frames, window, progress)
    ds = _dataset(cfg, root, "train")
    held, note = validation_recordings(cfg, ds, progress)
    if note:
        log.warning("contribution baseline on the test subset, not on held-out training recordings: %s", note)
        test = _dataset(cfg, root, "test")
        return _read(test, test.keys, {**_source(cfg, root, "test"), "set": "test", "note": note},
                     max_frames, window, progress)
    keys = [k for k in ds.keys if str(k) in set(held)]
    if not keys:
        raise ExportError(f"none of the held-out recordings {held} is under {root}; point --data at the run's dataset")
    source = {**_source(cfg, root, "train"), "set": "sequences", "validation_fraction": cfg.data.val_fraction,
              "held_out": held}
    return _read(ds, keys, source, max_frames, window, progress)


def validation_recordings(cfg: Config, train: MMFiDataset, progress: bool = True) -> tuple[list[str], str]:
    """(the ``env/subject/action`` recordings the run of ``cfg`` held out of training to validate, "")
    or ([], why that run validated on the test subset instead).

    Derived with the functions ``training fit`` uses, in its order (``training.data``:
    ``subsample_training``, ``select_frames``, ``hold_out_validation``), so they were never trained
    on. Only the per-frame recording names are needed, except for ``data.frames=complete``, which
    reads the training subset's presence."""
    if cfg.data.validation == "test":
        return [], ("the checkpoint's run validated on the test subset (data.validation=test), so its "
                    "training recordings hold no unseen frames")
    _, validation = _trained_frames(cfg, train, progress)
    if validation.source != "sequences":
        return [], validation.note
    return list(validation.sequences), ""


def _trained_frames(cfg: Config, train: MMFiDataset, progress: bool) -> tuple[Split, Validation]:
    """(the frames the run of ``cfg`` trained on, its validation set), as ``training fit`` chose
    them: only the frames' metadata (and presence for ``data.frames=complete``) is read."""
    per = schema.FRAMES_PER_SEQUENCE
    meta = {f: np.repeat(np.array([getattr(k, f) for k in train.keys], dtype=str), per)
            for f in ("env", "subject", "action")}
    meta["frame"] = np.tile(np.arange(per, dtype=np.int64), len(train.keys))
    tensors = {"joints": torch.zeros(len(train.keys) * per, 0)}
    if cfg.data.frames == "complete":
        data = replace(cfg.data, root=str(train.root))
        tensors["presence"] = load_split(replace(cfg, data=data), "train", progress).tensors["presence"]
    split = select_frames(cfg, subsample_training(cfg, Split(tensors, meta)))
    empty = Split({"joints": torch.zeros(0, 0)}, {k: np.zeros(0) for k in META_KEYS})
    return hold_out_validation(cfg.data, split, empty)


def training_facts(cfg: Config, data_root: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """What the run of ``cfg`` trained on, for the model's contract (``ModelContract.trained_*``):
    the protocol, the split, the actions and the number of subjects of the frames it learnt from
    (held-out validation subjects excluded), derived from the dataset as ``training fit`` chose them.
    Where the dataset cannot be read, the protocol's actions and no subject count, with a warning."""
    facts: dict[str, Any] = {"trained_protocol": cfg.data.protocol, "trained_split": cfg.data.split}
    root = Path(cfg.data.root if data_root is None else data_root)
    try:
        trained, _ = _trained_frames(cfg, _dataset(cfg, root, "train"), progress)
    except (ExportError, FileNotFoundError, OSError) as err:
        log.warning("the export records the actions of protocol %s but no subject count: the training data "
                    "cannot be read (%s)", cfg.data.protocol, err)
        return {**facts, "trained_actions": tuple(sorted(schema.PROTOCOLS[cfg.data.protocol]))}
    return {**facts, "trained_actions": tuple(sorted({str(a) for a in trained.meta["action"]})),
            "trained_subjects": len({str(s) for s in trained.meta["subject"]})}


def _dataset(cfg: Config, root: Path, subset: str) -> MMFiDataset:
    try:
        return MMFiDataset(root, protocol=cfg.data.protocol, split=cfg.data.split, subset=subset,
                           seed=cfg.data.split_seed, contract=model_contract(cfg), modalities=schema.MODALITIES)
    except MMFiFormatError as err:
        raise ExportError(f"cannot read calibration data from {root}: {err}. Point --data at a dataset with "
                          f"{cfg.data.protocol}/{cfg.data.split} {subset} frames, or pass --no-calibration") from err


def _source(cfg: Config, root: Path, subset: str) -> dict[str, Any]:
    return {"root": root.name, "protocol": cfg.data.protocol, "split": cfg.data.split,
            "split_seed": cfg.data.split_seed, "subset": subset}


def _read(ds: MMFiDataset, keys: list[SequenceKey], source: dict[str, Any], max_frames: int, window: int,
          progress: bool) -> CalibrationSet:
    """Whole sequences of ``keys``, spread evenly, as many as ``max_frames`` frames need."""
    per_sequence = schema.FRAMES_PER_SEQUENCE // window * window
    n_seq = min(len(keys), max(1, -(-max_frames // per_sequence)))
    chosen = [keys[i] for i in np.linspace(0, len(keys) - 1, n_seq).round().astype(np.int64)]
    parts = [ds.sequence_arrays(k) for k in tqdm(chosen, desc="calibration sequences", unit="seq",
                                                  disable=not progress)]
    inputs = {n: np.concatenate([p[n] for p in parts]) for n in schema.MODEL_INPUTS}
    targets = np.concatenate([p["joints"] for p in parts]).astype(np.float32)
    sequence = np.repeat(np.arange(len(chosen)), schema.FRAMES_PER_SEQUENCE)
    source = {**source, "sequences": len(chosen), "sequences_available": len(keys),
              "recordings": [str(k) for k in chosen]}
    return CalibrationSet(inputs, targets, sequence, source).limit(max_frames, window)
