"""Run plots (matplotlib, Agg): curves, per-modality contributions over epochs, 3D skeletons;
and the optional TensorBoard log.

Written into ``<run>/plots/``, each as PNG and SVG (vector, for papers), titled with the run id:
  curves         task / AWC loss and train/val MPJPE, PA-MPJPE per epoch
  contributions  per-modality Shapley scores over epochs, learning window shaded (paper Fig. 4)
  skeletons      predicted vs ground-truth 3D poses of a few test frames with their error (paper Fig. 5)

Readable from the first epoch: every series has markers (one epoch is one visible point), epochs
are integers, and the loss axis is logarithmic only over positive values — the balancing term (L_AWC)
is 0 outside the learning window and is left out there instead of diving to the bottom of a log axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sensors.core import posemath, schema  # noqa: E402

FORMATS = ("png", "svg")
# Human3.6M-17: left side 4-6 (leg) and 11-13 (arm), right side 1-3 and 14-16, the rest centre.
LEFT = frozenset({4, 5, 6, 11, 12, 13})
RIGHT = frozenset({1, 2, 3, 14, 15, 16})
SIDE_COLORS = {"left": "tab:blue", "right": "tab:red", "centre": "0.25"}


def edge_side(a: int, b: int) -> str:
    """"left" / "right" when the bone's child joint is on that side, else "centre"."""
    child = max(a, b)
    return "left" if child in LEFT else "right" if child in RIGHT else "centre"


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(f".{ext}") for ext in FORMATS]
    for p in paths:
        fig.savefig(p, dpi=100)
    plt.close(fig)
    return paths


def _epoch_axis(ax, epochs: list[int]) -> None:
    ax.set_xlabel("epoch")
    if 0 < len(set(epochs)) <= 12:
        ax.set_xticks(sorted(set(epochs)))       # few epochs: exactly them
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def _positive(values: list[float]) -> np.ndarray:
    """Values for a log axis: non-positive ones become NaN (not drawn)."""
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)


def plot_curves(history: list[dict[str, Any]], stem: Path, run_id: str = "") -> list[Path]:
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, _positive([r["loss_task"] for r in history]), "o-", ms=4, label="L_MPJPE (m)")
    balance = [r["loss_balance"] for r in history]
    if any(x > 0 for x in balance):
        a.plot(ep, _positive(balance), "s-", ms=4, label="balancing term (drawn where > 0: the learning window)")
    a.set_ylabel("loss (log)")
    a.set_yscale("log")
    _epoch_axis(a, ep)
    a.legend(fontsize=8)
    for key, style in (("train_mpjpe", "C0o--"), ("val_mpjpe", "C0o-"), ("train_pa_mpjpe", "C1s--"),
                       ("val_pa_mpjpe", "C1s-")):
        b.plot(ep, [r[key] for r in history], style, ms=4, label=key.replace("_", " "))
    b.set_ylabel("mm")
    _epoch_axis(b, ep)
    b.legend(fontsize=8)
    fig.suptitle(f"{run_id}: training curves" if run_id else "training curves")
    fig.tight_layout()
    return _save(fig, stem)


def plot_contributions(history: list[dict[str, Any]], stem: Path, run_id: str = "") -> list[Path]:
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in schema.MODALITIES:
        ax.plot(ep, [r["shapley"][m] for r in history], marker="o", ms=4, label=m)
    window = [r["epoch"] for r in history if r["in_window"]]
    if window:
        ax.axvspan(min(window) - 0.5, max(window) + 0.5, color="0.9", label="learning window")
    _epoch_axis(ax, ep)
    ax.set_ylabel("Shapley score (Pearson profit)")
    ax.legend(fontsize=8)
    ax.set_title(f"{run_id}: contributions" if run_id else "contributions")
    fig.tight_layout()
    return _save(fig, stem)


def _cube(poses: np.ndarray, margin: float = 0.1) -> tuple[np.ndarray, float]:
    """Centre and half-width of the smallest cube around ``poses`` [.., 17, 3] (plot axes)."""
    pts = poses.reshape(-1, 3)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2, float((hi - lo).max()) / 2 + margin


def plot_skeletons(pred: np.ndarray, gt: np.ndarray, titles: list[str], stem: Path, run_id: str = ""
                   ) -> list[Path]:
    """pred, gt [F, 17, 3] metres, camera frame (drawn with y up = -y). Left limbs blue, right red;
    prediction solid, ground truth thin and dashed; equal axes around both poses; per-frame MPJPE."""
    n = len(pred)
    err = posemath.mpjpe(pred, gt) if n else np.zeros(0)   # per frame, mm
    fig = plt.figure(figsize=(4 * max(n, 1), 4.4))
    for i in range(n):
        ax = fig.add_subplot(1, n, i + 1, projection="3d")
        for pose, style, width, alpha in ((gt[i], "--", 1.2, 0.6), (pred[i], "-", 2.2, 1.0)):
            for a, b in schema.SKELETON_EDGES:
                ax.plot([pose[a, 0], pose[b, 0]], [pose[a, 2], pose[b, 2]], [-pose[a, 1], -pose[b, 1]], style,
                        color=SIDE_COLORS[edge_side(a, b)], lw=width, alpha=alpha)
        centre, half = _cube(np.stack([pred[i], gt[i]]))
        for setter, c in ((ax.set_xlim, centre[0]), (ax.set_ylim, centre[2]), (ax.set_zlim, -centre[1])):
            setter(c - half, c + half)
        ax.set_box_aspect((1, 1, 1))
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
        ax.set_zlabel("-y (m)")
        title = titles[i] if i < len(titles) else ""
        ax.set_title(f"{title}\nMPJPE {err[i]:.1f} mm", fontsize=9)
    handles = [plt.Line2D([], [], color=SIDE_COLORS["left"], label="left"),
               plt.Line2D([], [], color=SIDE_COLORS["right"], label="right"),
               plt.Line2D([], [], color="0.3", lw=2.2, label="prediction"),
               plt.Line2D([], [], color="0.3", ls="--", lw=1.2, label="ground truth")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{run_id}: test frames" if run_id else "test frames")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.14, top=0.85, wspace=0.05)
    return _save(fig, stem)


def plot_run(out: Path, history: list[dict[str, Any]], pred: np.ndarray, gt: np.ndarray, actions: list[str],
             run_id: str = "") -> Path:
    d = Path(out) / "plots"
    d.mkdir(parents=True, exist_ok=True)
    run_id = run_id or Path(out).name
    plot_curves(history, d / "curves", run_id)
    plot_contributions(history, d / "contributions", run_id)
    plot_skeletons(pred, gt, [f"{a} {schema.ACTION_NAMES.get(a, '')}" for a in actions], d / "skeletons", run_id)
    return d


# ----------------------------------------------------------------------------------------------
# TensorBoard (train.tensorboard / --tensorboard)
# ----------------------------------------------------------------------------------------------
def tensorboard_writer(out: Path):
    """A SummaryWriter on ``<out>/tensorboard``; a clear error when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise RuntimeError("train.tensorboard (--tensorboard) needs the tensorboard package: "
                           "pip install 'awc-pose[tensorboard]' (or drop --tensorboard)") from err
    return SummaryWriter(log_dir=str(Path(out) / "tensorboard"))


def tensorboard_epoch(writer, rec: dict[str, Any]) -> None:
    """One epoch record as scalars: losses, MPJPE/PA-MPJPE, Shapley per modality, seconds per phase."""
    step = int(rec["epoch"])
    for key in ("loss_task", "loss_balance"):
        writer.add_scalar(f"loss/{key}", rec[key], step)
    for key in ("train_mpjpe", "val_mpjpe", "train_pa_mpjpe", "val_pa_mpjpe"):
        if key in rec:
            writer.add_scalar(f"mm/{key}", rec[key], step)
    for m, v in rec.get("shapley", {}).items():
        writer.add_scalar(f"shapley/{m}", v, step)
    for phase, seconds in rec.get("time", {}).items():
        writer.add_scalar(f"seconds/{phase}", seconds, step)
    writer.flush()
