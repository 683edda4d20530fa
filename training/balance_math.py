"""Modality balancing: the math of each method, pure functions (the training hooks that call
them are in ``training.balance_methods``).

* ``awc`` (docs/training.md, "Balancing"; the paper's Eq. 6-8): K-Means (k=2) on the Shapley
  scores splits the modalities into a superior and an inferior group; inside the learning window (epochs < K) the loss gets
  L_AWC = sum_m alpha_group(m) * sum_i F_ii (theta_i - theta0_i)^2 / 2 over each encoder's
  parameters, theta0 and the diagonal Fisher F taken at the start of the epoch.
* ``uniform``: the same term with F = c_m * I, c_m the mean Fisher diagonal of encoder m (an
  ablation: a uniform proximal term, close to InfoReg; c_m keeps alpha on AWC's scale).
* ``ogm-ge`` (Peng et al., CVPR 2022) adapted to regression: only the dominant modality is slowed.
* ``agm`` (Li et al., ICCV 2023): every encoder's gradient scaled by exp(-alpha * deviation of its
  running Shapley score from the mean).
* ``g-blending`` (Wang et al., CVPR 2020): uni-modal heads beside the fused one, losses blended
  with weights from the overfitting-to-generalisation ratio.
* ``modality-level`` resampling (Wei et al., CVPR 2024): the low-contributing modality is trained
  again, alone, on a fraction of each batch that grows with the contribution gap.
"""

from __future__ import annotations

import numpy as np
import torch

from sensors.core import schema
from training.config import BalanceConfig
from training.model import PoseModel

SUPERIOR, INFERIOR, DISABLED = "S", "I", "-"


def _enabled_index(enabled: tuple[str, ...]) -> list[int]:
    return [schema.MODALITY_INDEX[m] for m in schema.MODALITIES if m in enabled]


# ----------------------------------------------------------------------------------------------
# Superior / inferior split
# ----------------------------------------------------------------------------------------------
def kmeans_groups(phi: np.ndarray, enabled: tuple[str, ...] = schema.MODALITIES) -> list[str]:
    """K-Means (k=2) on the Shapley scores of the enabled modalities -> 'S' / 'I' / '-' per modality.

    phi [4] in schema order. In one dimension the optimal 2-means partition is a split of the
    sorted scores into a low and a high run, so trying the n - 1 splits gives the exact minimum
    of the K-Means objective (Lloyd's iterations only approximate it; a test checks scikit-learn
    agrees) in microseconds, cheap enough to regroup after every mini-batch. The high cluster is
    superior. With fewer than two enabled modalities, or equal scores, all enabled are superior.
    """
    phi = np.asarray(phi, np.float64)
    idx = _enabled_index(enabled)
    groups = [DISABLED] * schema.N_MODALITIES
    scores = phi[idx]
    if len(idx) < 2 or np.ptp(scores) < 1e-12:
        for i in idx:
            groups[i] = SUPERIOR
        return groups
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    costs = [((s[:k] - s[:k].mean()) ** 2).sum() + ((s[k:] - s[k:].mean()) ** 2).sum() for k in range(1, len(s))]
    split = 1 + int(np.argmin(costs))
    for rank, j in enumerate(order):
        groups[idx[j]] = SUPERIOR if rank >= split else INFERIOR
    return groups


def group_alphas(groups: list[str], cfg: BalanceConfig) -> dict[str, float]:
    """modality -> alpha of its group (0 for disabled modalities)."""
    a = {SUPERIOR: cfg.awc.alpha_s, INFERIOR: cfg.awc.alpha_i, DISABLED: 0.0}
    return {m: a[g] for m, g in zip(schema.MODALITIES, groups, strict=True)}


# ----------------------------------------------------------------------------------------------
# AWC / uniform penalty
# ----------------------------------------------------------------------------------------------
def uniform_weights(fisher: dict[str, torch.Tensor], model: PoseModel) -> dict[str, torch.Tensor]:
    """F -> c_m * I per encoder, c_m = mean of encoder m's Fisher diagonal."""
    out = {}
    for m, params in model.encoder_parameters().items():
        names = [f"encoders.{m}.{n}" for n, _ in params]
        c = torch.cat([fisher[n].reshape(-1) for n in names]).mean()
        out.update({n: torch.full_like(fisher[n], float(c)) for n in names})
    return out


def awc_loss(model: PoseModel, anchors: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
             alphas: dict[str, float]) -> torch.Tensor:
    """L_AWC = sum_m alpha_m * sum_i F_ii (theta_i - theta0_i)^2 / 2 (scalar, loss units).

    anchors: theta0 per parameter name; weights: F (or c*I) per parameter name; alphas per modality.
    """
    total = model.mean_pose.new_zeros(())
    for m, params in model.encoder_parameters().items():
        if alphas.get(m, 0.0) == 0.0:
            continue
        term = model.mean_pose.new_zeros(())
        for n, p in params:
            name = f"encoders.{m}.{n}"
            term = term + (weights[name] * (p - anchors[name]).pow(2)).sum()
        total = total + alphas[m] * term / 2.0
    return total


# ----------------------------------------------------------------------------------------------
# OGM-GE for regression
# ----------------------------------------------------------------------------------------------
def ogm_coefficients(single_values: np.ndarray, enabled: tuple[str, ...], alpha: float) -> np.ndarray:
    """single_values [4]: v({m}) of each modality alone (Pearson profit) -> coefficients [4] in (0, 1].

    As published, only the dominant modality (the highest score) is slowed:
    rho = s_dom / mean of the other enabled modalities' scores, k_dom = 1 - tanh(alpha (rho - 1))
    when rho > 1; every other modality gets 1. Scores are clipped at 0 (+1e-6).
    """
    s = np.clip(np.asarray(single_values, np.float64), 0.0, None) + 1e-6
    idx = _enabled_index(enabled)
    k = np.ones(schema.N_MODALITIES)
    if len(idx) < 2:
        return k
    dom = max(idx, key=lambda i: s[i])
    rho = s[dom] / np.mean([s[j] for j in idx if j != dom])
    if rho > 1.0:
        k[dom] = 1.0 - np.tanh(alpha * (rho - 1.0))
    return k


@torch.no_grad()
def modulate_gradients(model: PoseModel, coeffs: np.ndarray, noise: bool, generator: torch.Generator) -> None:
    """OGM-GE on the encoders' weight tensors (ndim >= 2, as the reference code modulates only conv
    weights): grad <- k_m * grad + N(0, std(grad)) (the noise drawn with the std of the gradient
    before scaling, for every modality, k_m = 1 included). Biases and norms are left alone.

    ``generator`` must be seeded identically on every data-parallel rank so all ranks add the
    same noise to their (already all-reduced) gradients.
    """
    for m, params in model.encoder_parameters().items():
        k = float(coeffs[schema.MODALITY_INDEX[m]])
        for _, p in params:
            if p.grad is None or p.grad.dim() < 2:
                continue
            std = float(p.grad.std()) + 1e-8
            p.grad.mul_(k)
            if noise:
                draw = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype)  # CPU generator
                p.grad.add_(draw.to(p.grad.device) * std)


def single_modality_values(v: np.ndarray) -> np.ndarray:
    """v [16] coalition values -> v({m}) [4] in schema order."""
    return np.array([v[1 << i] for i in range(schema.N_MODALITIES)])


# ----------------------------------------------------------------------------------------------
# AGM
# ----------------------------------------------------------------------------------------------
def agm_coefficients(scores: np.ndarray, enabled: tuple[str, ...], alpha: float, clip: float = 10.0) -> np.ndarray:
    """Running Shapley scores [4] -> gradient coefficients [4]: k_m = exp(-alpha (s_m - mean s) / mean |s|)
    over the enabled modalities (the deviation is relative, so alpha has no units), clipped to
    [1/clip, clip]: above-mean modalities are slowed, below-mean ones sped up. Others get 1."""
    s = np.asarray(scores, np.float64)
    idx = _enabled_index(enabled)
    k = np.ones(schema.N_MODALITIES)
    if len(idx) < 2:
        return k
    mean, scale = s[idx].mean(), np.abs(s[idx]).mean() + 1e-9
    k[idx] = np.clip(np.exp(-alpha * (s[idx] - mean) / scale), 1.0 / clip, clip)
    return k


@torch.no_grad()
def scale_encoder_gradients(model: PoseModel, coeffs: np.ndarray) -> None:
    """Every encoder parameter's gradient *= k_m (= scaling the gradient reaching its feature)."""
    for m, params in model.encoder_parameters().items():
        k = float(coeffs[schema.MODALITY_INDEX[m]])
        for _, p in params:
            if p.grad is not None:
                p.grad.mul_(k)


# ----------------------------------------------------------------------------------------------
# G-Blending
# ----------------------------------------------------------------------------------------------
def gblend_weights(prev_val: np.ndarray, prev_train: np.ndarray, val: np.ndarray, train: np.ndarray,
                   eps: float = 1e-8) -> np.ndarray:
    """Per-branch losses (held-out and training) at the start and end of a super-epoch -> blending
    weights summing to 1: w_k ∝ G_k / O_k^2, G_k = prev_val - val (generalisation gained, clipped
    at 0), O_k = (val - train) - (prev_val - prev_train) (overfitting gained, |.| floored at eps).
    All-zero G -> uniform weights."""
    g = np.clip(np.asarray(prev_val) - np.asarray(val), 0.0, None)
    o = (np.asarray(val) - np.asarray(train)) - (np.asarray(prev_val) - np.asarray(prev_train))
    ratio = g / np.maximum(o ** 2, eps)
    if not np.isfinite(ratio).all() or ratio.sum() <= 0:
        return np.full(len(g), 1.0 / len(g))
    return ratio / ratio.sum()


# ----------------------------------------------------------------------------------------------
# Modality-level resampling
# ----------------------------------------------------------------------------------------------
def resample_plan(phi: np.ndarray, enabled: tuple[str, ...], gamma: float) -> tuple[int, float]:
    """Modality-level Shapley scores [4] -> (index of the lowest-contributing enabled modality,
    fraction of each batch re-fed with that modality alone): min(1, gamma * (max - min) / sum |phi|)."""
    phi = np.asarray(phi, np.float64)
    idx = _enabled_index(enabled)
    low = min(idx, key=lambda i: phi[i])
    if len(idx) < 2:
        return low, 0.0
    gap = (phi[idx].max() - phi[low]) / (np.abs(phi[idx]).sum() + 1e-9)
    return low, float(min(1.0, max(0.0, gamma * gap)))
