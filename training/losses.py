"""Task loss and torch metrics. Pure functions; shapes and units stated."""

from __future__ import annotations

import torch

SQRT_EPS = 1e-12  # keeps the gradient of the Euclidean norm finite at zero error


def joint_errors(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred, gt [..., 17, 3] metres -> Euclidean error per joint [..., 17] metres."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    return ((pred - gt).pow(2).sum(dim=-1) + SQRT_EPS).sqrt()


def mpjpe_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L_MPJPE: [B, 17, 3] metres -> scalar metres (mean over frames and joints)."""
    return joint_errors(pred, gt).mean()
