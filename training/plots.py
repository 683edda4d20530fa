"""Run plots (matplotlib, Agg): curves, per-modality contributions over epochs, 3D skeletons.

Written into ``<run>/plots/``:
  curves.png         task / AWC loss and train/val MPJPE, PA-MPJPE per epoch
  contributions.png  per-modality Shapley scores over epochs, learning window shaded (paper Fig. 4)
  skeletons.png      predicted vs ground-truth 3D poses of a few test frames (paper Fig. 5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sensors import schema  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [r["loss_task"] for r in history], label="L_MPJPE (m)")
    if any(r["loss_balance"] for r in history):
        a.plot(ep, [r["loss_balance"] for r in history], label="balancing term")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.set_yscale("log")
    a.legend()
    for key, style in (("train_mpjpe", "C0--"), ("val_mpjpe", "C0-"), ("train_pa_mpjpe", "C1--"),
                       ("val_pa_mpjpe", "C1-")):
        b.plot(ep, [r[key] for r in history], style, label=key.replace("_", " "))
    b.set_xlabel("epoch")
    b.set_ylabel("mm")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_contributions(history: list[dict[str, Any]], path: Path) -> None:
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in schema.MODALITIES:
        ax.plot(ep, [r["shapley"][m] for r in history], marker="o", ms=3, label=m)
    window = [r["epoch"] for r in history if r["in_window"]]
    if window:
        ax.axvspan(min(window) - 0.5, max(window) + 0.5, color="0.9", label="learning window")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Shapley score (Pearson profit)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_skeletons(pred: np.ndarray, gt: np.ndarray, titles: list[str], path: Path) -> None:
    """pred, gt [F, 17, 3] metres, camera frame (drawn with y up = -y)."""
    n = len(pred)
    fig = plt.figure(figsize=(4 * max(n, 1), 4))
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1, projection="3d")
        for pose, color, label in ((gt[i], "k", "ground truth"), (pred[i], "C3", "prediction")):
            for j, (a, b) in enumerate(schema.SKELETON_EDGES):
                ax.plot([pose[a, 0], pose[b, 0]], [pose[a, 2], pose[b, 2]], [-pose[a, 1], -pose[b, 1]],
                        color=color, label=label if j == 0 else None)
        c = gt[i].mean(axis=0)
        for setter, centre in ((ax.set_xlim, c[0]), (ax.set_ylim, c[2]), (ax.set_zlim, -c[1])):
            setter(centre - 1.0, centre + 1.0)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
        ax.set_zlabel("-y (m)")
        ax.set_title(titles[i] if i < len(titles) else "")
        if i == 0:
            ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_run(out: Path, history: list[dict[str, Any]], pred: np.ndarray, gt: np.ndarray, actions: list[str]) -> Path:
    d = Path(out) / "plots"
    d.mkdir(parents=True, exist_ok=True)
    plot_curves(history, d / "curves.png")
    plot_contributions(history, d / "contributions.png")
    plot_skeletons(pred, gt, [f"{a} {schema.ACTION_NAMES.get(a, '')}" for a in actions], d / "skeletons.png")
    return d
