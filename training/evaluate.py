"""MPJPE / PA-MPJPE (mm, exactly as MM-Fi defines them) per action and overall, plus the test
Shapley contributions, for a model on a split; and the ``training evaluate`` command.

    training evaluate --checkpoint runs/NAME/best.pt [--data DIR] --protocol P1 --split S1
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sensors.core import posemath, schema
from training.data import Split, evenly_spaced
from training.shapley import coalition_masks, coalition_values

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model, data: Split, batch_size: int = 256, coalitions: bool = False
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (poses [N, 17, 3] metres, coalition poses [N, 16, 17, 3] or None)."""
    was_training = model.training
    model.eval()
    poses, coal = [], []
    device = model.mean_pose.device
    for idx in torch.split(torch.arange(len(data)), batch_size):
        b = {k: v.to(device) for k, v in data.batch(idx).items()}
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        poses.append(model.fuse(feats, b["presence"]).cpu())
        if coalitions:
            coal.append(model.fuse_coalitions(feats, coalition_masks(b["presence"])).cpu())
    model.train(was_training)
    return torch.cat(poses).numpy(), (torch.cat(coal).numpy() if coalitions else None)


def metrics(pred: np.ndarray, gt: np.ndarray, actions: np.ndarray | None = None) -> dict[str, Any]:
    """pred, gt [N, 17, 3] metres -> {mpjpe, pa_mpjpe (mm), frames, per_action{A..: {...}}}."""
    e = posemath.mpjpe(pred, gt)
    pa = posemath.pa_mpjpe(pred, gt)
    out: dict[str, Any] = {"mpjpe": float(e.mean()), "pa_mpjpe": float(pa.mean()), "frames": int(len(e))}
    if actions is not None and len(actions) == len(e):
        out["per_action"] = {str(a): {"mpjpe": float(e[actions == a].mean()), "pa_mpjpe": float(pa[actions == a].mean()),
                                      "frames": int((actions == a).sum())}
                             for a in sorted(set(actions.tolist())) if a}
    return out


def evaluate_model(model, data: Split, batch_size: int = 256, with_shapley: bool = True) -> dict[str, Any]:
    """Metrics of ``model`` on ``data``; with_shapley adds the coalition values and Shapley scores
    over the whole split (one global batch)."""
    pred, coal = predict(model, data, batch_size, coalitions=with_shapley)
    gt = data.tensors["joints"].numpy()
    out = metrics(pred, gt, data.meta.get("action"))
    if with_shapley:
        v = coalition_values(torch.from_numpy(coal), torch.from_numpy(gt))
        phi = posemath.shapley_values(v)
        out["coalition_values"] = v.tolist()
        out["shapley"] = {m: float(p) for m, p in zip(schema.MODALITIES, phi, strict=True)}
        out["single_modality_mpjpe"] = {m: float(posemath.mpjpe(coal[:, 1 << i], gt).mean())
                                        for i, m in enumerate(schema.MODALITIES)}
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'action':<8} {'name':<30} {'frames':>7} {'MPJPE':>8} {'PA-MPJPE':>9}"]
    for a, r in result.get("per_action", {}).items():
        lines.append(f"{a:<8} {schema.ACTION_NAMES.get(a, ''):<30} {r['frames']:>7} {r['mpjpe']:>8.2f} "
                     f"{r['pa_mpjpe']:>9.2f}")
    lines.append(f"{'all':<8} {'':<30} {result['frames']:>7} {result['mpjpe']:>8.2f} {result['pa_mpjpe']:>9.2f}")
    if "shapley" in result:
        lines.append("Shapley (Pearson profit): " + ", ".join(f"{m} {v:.2f}" for m, v in result["shapley"].items()))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run's best.pt or checkpoint.pt")
    p.add_argument("--data", help="MM-Fi-format root (default: the one the model was trained on)")
    p.add_argument("--protocol", help="P1, P2 or P3 (default: the training protocol)")
    p.add_argument("--split", help="S1, S2 or S3 (default: the training split)")
    p.add_argument("--max-frames", type=int, default=0, help="evaluate an evenly spaced subset (0 = all)")
    p.add_argument("--report", "--out", dest="out",
                   help="JSON file (default: eval-<protocol>-<split>.json beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("--device", default="auto", help="auto (the GPU if torch sees one), cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from training import device as device_mod
    from training.checkpoint import load_checkpoint
    from training.data import load_split

    model, cfg, info = load_checkpoint(args.checkpoint)   # the file first: its error before any device line
    device = device_mod.resolve(args.device)
    model.to(device)
    if args.data:
        cfg.data.root = args.data
    cfg.data.protocol = args.protocol or cfg.data.protocol
    cfg.data.split = args.split or cfg.data.split
    cfg.validate()
    test = load_split(cfg, "test")
    test = test.take(evenly_spaced(len(test), args.max_frames))
    result = evaluate_model(model, test)
    result.update(checkpoint=str(args.checkpoint), epoch=info.get("epoch"), config_hash=info.get("config_hash"),
                  protocol=cfg.data.protocol, split=cfg.data.split, data=str(cfg.data.root), device=device)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{cfg.data.protocol}-{cfg.data.split}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0
