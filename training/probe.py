"""``training probe``: how much pose each modality's encoder has learnt inside a trained model.

Linear evaluation of frozen encoders, the balancing literature's test for under-optimised
modalities (Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML
2023; Peng et al., OGM-GE, CVPR 2022, compare encoders of jointly trained models with uni-modally
trained ones the same way): one modality's encoder output features [N, D] of a checkpoint ->
ridge regression (scikit-learn ``Ridge`` on standardised features, α chosen by 5-fold
cross-validation over whole training recordings) -> the 51 ground-truth coordinates; scored by MPJPE (mm) on
the test frames. The run's own training frames fit the probe, its test frames score it.

Read against the same probe of a model trained on that modality alone: a fused model whose
weak-modality probe is far worse than the uni-modal one has an under-optimised encoder (the
imbalance AWC, OGM-GE and the others target); one that is as good has nothing to recover.
A disabled modality is skipped. Frames where a modality is absent are kept (its encoder sees what
the model sees there), so the probe's error includes them, alike for every model.

    training probe runs/study/P1/all-none-s0 runs/study/P1/mmwave-s0 ... --data data/mmfi-study \\
        --json probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from sensors.core import posemath, schema

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-3, 5, 17)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (with checkpoint.pt) or checkpoint files")
    p.add_argument("--checkpoint", default="checkpoint.pt",
                   help="file inside each run directory (default: the last epoch's, as the study reports)")
    p.add_argument("--data", help="dataset root (default: each run's data.root)")
    p.add_argument("--test-frames", type=int, default=4000, help="evenly spaced test frames (the study's 4,000)")
    p.add_argument("--train-frames", type=int, default=0,
                   help="evenly spaced training frames to fit on (default 0: all the run trained on)")
    p.add_argument("--json", metavar="FILE", help="write the figures here as JSON")
    p.add_argument("--no-progress", action="store_true")


def features(model, split, batch_size: int = 512) -> dict[str, np.ndarray]:
    """modality -> encoder outputs [N, D] of ``model`` (eval mode, no gradient) for the enabled ones."""
    import torch

    out: dict[str, list[np.ndarray]] = {m: [] for m in model.encoders}
    with torch.no_grad():
        for idx in torch.split(torch.arange(len(split)), batch_size):
            b = split.batch(idx)
            feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
            for m in out:
                out[m].append(feats[m].numpy())
    return {m: np.concatenate(v) for m, v in out.items()}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 groups: np.ndarray | None = None, folds: int = 5) -> dict[str, float]:
    """Ridge from features to joints [N, 17, 3] metres -> {mpjpe, pa_mpjpe (mm), alpha}.

    α is chosen by cross-validation over whole recordings (``groups``: one id per training frame,
    ``GroupKFold``): frames of one recording are near-copies of each other at 10 Hz, so a split
    between frames (leave-one-out) rewards fitting each recording's own state and picks almost no
    regularisation, which then does not transfer to the test recordings."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_groups = len(np.unique(groups)) if groups is not None else 0
    cv = GroupKFold(min(folds, n_groups)) if n_groups >= 2 else KFold(folds)
    # SVD: encoder features are often collinear (dead or duplicated units), which the small alphas
    # of the grid leave ill-conditioned for a Cholesky solve
    search = GridSearchCV(make_pipeline(StandardScaler(), Ridge(solver="svd")), {"ridge__alpha": ALPHAS}, cv=cv,
                          scoring="neg_mean_squared_error")
    search.fit(train_x, train_y.reshape(len(train_y), -1), groups=groups)
    pred = search.predict(test_x).reshape(test_y.shape)
    return {"mpjpe": float(posemath.mpjpe(pred, test_y).mean()),   # posemath: metres in, mm out
            "pa_mpjpe": float(posemath.pa_mpjpe(pred, test_y).mean()),
            "alpha": float(search.best_params_["ridge__alpha"])}


def probe_run(path: Path, checkpoint: str, data: str | None, test_frames: int, train_frames: int,
              loaded: dict[tuple, Any], progress: bool) -> dict[str, Any]:
    from training.checkpoint import load_checkpoint
    from training.config import model_contract
    from training.data import evenly_spaced, load_splits, select_frames, sequence_ids

    ckpt = path / checkpoint if path.is_dir() else path
    model, cfg, info = load_checkpoint(ckpt)
    if data:
        cfg.data.root = data
    key = (cfg.data.root, cfg.data.protocol, cfg.data.split, cfg.data.split_seed, cfg.data.max_train,
           cfg.data.frames, tuple(cfg.model.modalities), repr(model_contract(cfg).preprocessing_settings()))
    if key not in loaded:
        loaded.clear()
        train, test = load_splits(cfg, progress=progress)
        train, test = select_frames(cfg, train), select_frames(cfg, test)
        if train_frames:
            train = train.take(evenly_spaced(len(train), train_frames))
        loaded[key] = (train, test.take(evenly_spaced(len(test), test_frames)))
    train, test = loaded[key]
    t0 = time.perf_counter()
    ftr, fte = features(model, train), features(model, test)
    ytr, yte = train.tensors["joints"].numpy(), test.tensors["joints"].numpy()
    _, recording = sequence_ids(train)
    probes = {m: linear_probe(ftr[m], ytr, fte[m], yte, groups=recording) for m in schema.MODALITIES if m in ftr}
    mean_pose = float(posemath.mpjpe(np.broadcast_to(ytr.mean(axis=0), yte.shape), yte).mean())
    return {"run": str(path), "checkpoint": ckpt.name, "epoch": int(info["epoch"]),
            "protocol": cfg.data.protocol, "split": cfg.data.split, "modalities": list(cfg.model.modalities),
            "balance": cfg.balance.method, "fusion": cfg.model.fusion, "train_frames": len(train),
            "test_frames": len(test), "probe": probes, "mean_pose_mpjpe": mean_pose, "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per run, the probe MPJPE (mm) of each modality's encoder and, for scale,
    the training frames' mean pose scored on the same test frames."""
    lines = ["| run | " + " | ".join(schema.MODALITIES) + " | mean pose |",
             "|---|" + "---|" * (len(schema.MODALITIES) + 1)]
    for r in rows:
        cells = [f"{r['probe'][m]['mpjpe']:.1f}" if m in r["probe"] else "—" for m in schema.MODALITIES]
        lines.append(f"| {Path(r['run']).name} | " + " | ".join(cells) + f" | {r['mean_pose_mpjpe']:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows, loaded = [], {}
    for i, raw in enumerate(args.runs):
        path = Path(raw)
        target = path / args.checkpoint if path.is_dir() else path
        if not target.is_file():
            raise FileNotFoundError(f"{target}: no checkpoint (give a run directory with {args.checkpoint}, or a "
                                    f".pt file)")
        row = probe_run(path, args.checkpoint, args.data, args.test_frames, args.train_frames, loaded,
                        not args.no_progress)
        log.info("[%d/%d] %s: %s", i + 1, len(args.runs), path,
                 ", ".join(f"{m} {p['mpjpe']:.1f}" for m, p in row["probe"].items()))
        rows.append(row)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0
