"""Torch-free pose math shared by training and the runtime.

* MPJPE and PA-MPJPE exactly as MM-Fi defines them (millimetres).
* The Pearson profit of a coalition (Eq. 4-5 of the AWC paper).
* Exact Shapley values of the four modalities from the 16 coalition values (Eq. 1).
"""

from __future__ import annotations

from math import factorial

import numpy as np

from sensors.core import schema

PEARSON_EPS = 1e-8  # a coordinate whose std is below this gets correlation 0, not NaN


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame mean joint Euclidean error, no root alignment.

    pred, gt: [..., J, 3] metres. Returns [...] millimetres.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) * 1000.0


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame similarity Procrustes of ``pred`` onto ``gt`` (rotation with the reflection fix,
    translation, scale). pred, gt: [F, J, 3]. Returns the aligned pred [F, J, 3]."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mu_x = gt.mean(axis=1, keepdims=True)
    mu_y = pred.mean(axis=1, keepdims=True)
    x0, y0 = gt - mu_x, pred - mu_y
    norm_x = np.sqrt((x0 ** 2).sum(axis=(1, 2), keepdims=True))
    norm_y = np.sqrt((y0 ** 2).sum(axis=(1, 2), keepdims=True))
    norm_x = np.where(norm_x > 0, norm_x, 1.0)
    norm_y = np.where(norm_y > 0, norm_y, 1.0)
    x0, y0 = x0 / norm_x, y0 / norm_y
    h = np.matmul(x0.transpose(0, 2, 1), y0)
    u, s, vt = np.linalg.svd(h)
    v = vt.transpose(0, 2, 1)
    r = np.matmul(v, u.transpose(0, 2, 1))
    # Reflection fix: flip the last singular vector where det(R) < 0.
    sign_det = np.sign(np.expand_dims(np.linalg.det(r), axis=1))
    v[:, :, -1] *= sign_det
    s[:, -1] *= sign_det.flatten()
    r = np.matmul(v, u.transpose(0, 2, 1))
    tr = np.expand_dims(s.sum(axis=1, keepdims=True), axis=2)
    a = tr * norm_x / norm_y
    t = mu_x - a * np.matmul(mu_y, r)
    return a * np.matmul(pred, r) + t


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame MPJPE after similarity Procrustes. pred, gt: [F, J, 3] metres -> [F] mm."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    return mpjpe(procrustes_align(pred, gt), gt)


# ----------------------------------------------------------------------------------------------
# Pearson profit and Shapley values
# ----------------------------------------------------------------------------------------------
def pearson_profits(preds: np.ndarray, target: np.ndarray, eps: float = PEARSON_EPS) -> np.ndarray:
    """Pearson profit of C candidate predictions against one target, in one vectorised pass.

    preds: [B, C, ...] (e.g. [B, 16, 17, 3] coalition poses); target: [B, ...]. For each candidate,
    the sum over coordinates of the Pearson correlation of that coordinate across the batch; a
    coordinate where either side barely varies (std < eps) contributes 0. B < 2 gives 0. -> [C]
    """
    preds, target = np.asarray(preds, np.float64), np.asarray(target, np.float64)
    b, c = preds.shape[:2]
    p = preds.reshape(b, c, -1)
    t = target.reshape(len(target), 1, -1)
    if p.shape[0] != t.shape[0] or p.shape[2] != t.shape[2]:
        raise ValueError(f"predictions {preds.shape} do not match the target {target.shape}: "
                         "expected [B, C, ...] against [B, ...]")
    if b < 2:
        return np.zeros(c)
    p = p - p.mean(axis=0)
    t = t - t.mean(axis=0)
    sp = np.sqrt((p ** 2).mean(axis=0))
    st = np.sqrt((t ** 2).mean(axis=0))
    ok = (sp > eps) & (st > eps)
    cov = (p * t).mean(axis=0)
    r = np.where(ok, cov / np.where(ok, sp * st, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0).sum(axis=-1)


def pearson_profit(pred: np.ndarray, target: np.ndarray, eps: float = PEARSON_EPS) -> float:
    """Sum over coordinates of the Pearson correlation of that coordinate across the batch.

    pred, target: [B, ...] (e.g. [B, 17, 3]: 51 coordinates). A coordinate where either side
    barely varies (std < eps) contributes 0. B < 2 gives 0.
    """
    pred = np.asarray(pred)
    if pred.shape != np.shape(target):
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {np.shape(target)}")
    return float(pearson_profits(pred[:, None], target, eps)[0])


def _shapley_matrix() -> np.ndarray:
    """W [4, 16] with phi = W @ v for coalition values v indexed by bitmask."""
    n = schema.N_MODALITIES
    w = np.zeros((n, schema.N_COALITIONS))
    for m in range(n):
        for s in range(schema.N_COALITIONS):
            if s >> m & 1:
                continue
            size = bin(s).count("1")
            weight = factorial(size) * factorial(n - size - 1) / factorial(n)
            w[m, s | (1 << m)] += weight
            w[m, s] -= weight
    return w


SHAPLEY_MATRIX = _shapley_matrix()


def shapley_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values [4] from coalition values [16] (bitmask order, v[0] = v(empty)).

    The values sum to v[15] - v[0] (efficiency).
    """
    values = np.asarray(values, np.float64)
    if values.shape != (schema.N_COALITIONS,):
        raise ValueError(f"need {schema.N_COALITIONS} coalition values, got shape {values.shape}")
    return SHAPLEY_MATRIX @ values


def coalition_values(coalition_preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson profit of each coalition. coalition_preds: [B, 16, 17, 3]; target: [B, 17, 3].

    v(empty) is 0 by definition, whatever the empty coalition predicts.
    """
    v = pearson_profits(coalition_preds, target)
    if v.shape != (schema.N_COALITIONS,):
        raise ValueError(f"need {schema.N_COALITIONS} coalitions, got {v.shape[0]}")
    v[0] = 0.0
    return v


def contribution_shares(phi: np.ndarray) -> np.ndarray:
    """Shapley values -> shares that sum to 1 (negative values clipped to 0; uniform if all 0)."""
    phi = np.clip(np.asarray(phi, np.float64), 0.0, None)
    total = phi.sum()
    if total <= 0:
        return np.full(phi.shape, 1.0 / phi.size)
    return phi / total
