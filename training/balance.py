"""Modality balancing with no extra parameters: none, OGM-GE, uniform proximal term, AWC.

* ``awc`` (DESIGN §4, Eq. 6-8): K-Means (k=2) on the four Shapley scores splits the modalities
  into a superior and an inferior group; inside the learning window (epochs < K) the loss gets
  L_AWC = sum_m alpha_group(m) * sum_i F_ii (theta_i - theta0_i)^2 / 2 over each encoder's
  parameters, theta0 and the diagonal Fisher F taken at the start of the epoch.
* ``uniform``: the same term with F = c_m * I, c_m the mean Fisher diagonal of encoder m (a
  uniform proximal term, close to InfoReg; c_m keeps alpha on the same scale as AWC's).
* ``ogm-ge`` adapted to regression: per-modality coefficient from the single-modality coalition
  profits v({m}) of the batch, k_m = 1 - tanh(alpha * relu(rho_m - 1)), rho_m = v({m}) / mean of
  the other enabled modalities' v; encoder gradients are scaled by k_m and get Gaussian noise
  with the gradient's own std (the GE part), inside the window.
* ``none``: plain joint training.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans

from sensors import schema
from training.config import BalanceConfig
from training.model import PoseModel

SUPERIOR, INFERIOR, DISABLED = "S", "I", "-"


# ----------------------------------------------------------------------------------------------
# Superior / inferior split
# ----------------------------------------------------------------------------------------------
def kmeans_groups(phi: np.ndarray, enabled: tuple[str, ...] = schema.MODALITIES, seed: int = 0,
                  n_init: int = 10) -> list[str]:
    """K-Means (k=2) on the Shapley scores of the enabled modalities -> 'S' / 'I' / '-' per modality.

    phi [4] in schema order. The cluster with the higher mean score is superior. With fewer than
    two enabled modalities, or when all scores are equal, every enabled modality is superior.
    """
    phi = np.asarray(phi, np.float64)
    idx = [schema.MODALITY_INDEX[m] for m in schema.MODALITIES if m in enabled]
    groups = [DISABLED] * schema.N_MODALITIES
    scores = phi[idx]
    if len(idx) < 2 or np.ptp(scores) < 1e-12:
        for i in idx:
            groups[i] = SUPERIOR
        return groups
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when two scores coincide
        labels = KMeans(n_clusters=2, n_init=n_init, random_state=seed).fit_predict(scores.reshape(-1, 1))
    means = [scores[labels == c].mean() if np.any(labels == c) else -np.inf for c in (0, 1)]
    superior = int(np.argmax(means))
    for i, label in zip(idx, labels, strict=True):
        groups[i] = SUPERIOR if label == superior else INFERIOR
    return groups


def group_alphas(groups: list[str], cfg: BalanceConfig) -> dict[str, float]:
    """modality -> alpha of its group (0 for disabled modalities)."""
    a = {SUPERIOR: cfg.alpha_s, INFERIOR: cfg.alpha_i, DISABLED: 0.0}
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

    rho_m = max(v_m, 0) / mean_{j != m} max(v_j, 0); k_m = 1 - tanh(alpha * relu(rho_m - 1)).
    Disabled modalities and lone modalities get 1.
    """
    s = np.clip(np.asarray(single_values, np.float64), 0.0, None) + 1e-6
    idx = [schema.MODALITY_INDEX[m] for m in schema.MODALITIES if m in enabled]
    k = np.ones(schema.N_MODALITIES)
    if len(idx) < 2:
        return k
    for i in idx:
        others = [s[j] for j in idx if j != i]
        rho = s[i] / np.mean(others)
        k[i] = 1.0 - np.tanh(alpha * max(rho - 1.0, 0.0))
    return k


@torch.no_grad()
def modulate_gradients(model: PoseModel, coeffs: np.ndarray, noise: bool, generator: torch.Generator) -> None:
    """OGM-GE: encoder grads *= k_m, then + N(0, std(grad)) on weight tensors (ndim >= 2).

    ``generator`` must be seeded identically on every data-parallel rank so all ranks add the
    same noise to their (already all-reduced) gradients.
    """
    for m, params in model.encoder_parameters().items():
        k = float(coeffs[schema.MODALITY_INDEX[m]])
        for _, p in params:
            if p.grad is None:
                continue
            p.grad.mul_(k)
            if noise and p.grad.dim() >= 2:
                std = float(p.grad.std()) + 1e-8
                draw = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype)  # CPU generator
                p.grad.add_(draw.to(p.grad.device) * std)


def single_modality_values(v: np.ndarray) -> np.ndarray:
    """v [16] coalition values -> v({m}) [4] in schema order."""
    return np.array([v[1 << i] for i in range(schema.N_MODALITIES)])
