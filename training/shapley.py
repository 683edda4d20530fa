"""Exact Shapley contributions of the four modalities (Eq. 1, 4-5 of the AWC paper).

A coalition S is evaluated by zeroing the features of the modalities not in S; its value is
the Pearson profit v(S) = sum over the 51 pose coordinates of the Pearson correlation between
prediction and ground truth across the batch, v(empty) = 0. The encoders run once; only the
fusion head runs over the 16 coalitions, without gradients.

The math shared with the runtime (Shapley weights, the numpy profit) lives in the torch-free
``sensors.core.posemath``; ``pearson_profit`` here is its torch twin (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sensors.core import posemath, schema

COALITION_MASKS = torch.from_numpy(schema.COALITION_MASKS)  # [16, 4] float32, bitmask order


def pearson_profit(pred: torch.Tensor, target: torch.Tensor, eps: float = posemath.PEARSON_EPS) -> torch.Tensor:
    """Batched torch version of ``posemath.pearson_profit``.

    pred [..., B, 17, 3] (any leading dims), target [B, 17, 3] -> profit [...] (float64): the sum
    over coordinates of the Pearson correlation across B. Coordinates where either side has
    std < eps contribute 0; B < 2 gives 0.
    """
    b = target.shape[0]
    p = pred.reshape(*pred.shape[:-3], b, -1).double()
    t = target.reshape(b, -1).double()
    if b < 2:
        return p.new_zeros(p.shape[:-2])
    p = p - p.mean(dim=-2, keepdim=True)
    t = t - t.mean(dim=0, keepdim=True)
    sp = p.pow(2).mean(dim=-2).sqrt()  # [..., 51]
    st = t.pow(2).mean(dim=0).sqrt()  # [51]
    ok = (sp > eps) & (st > eps)
    cov = (p * t).mean(dim=-2)
    r = torch.where(ok, cov / torch.where(ok, sp * st, torch.ones_like(sp)), torch.zeros_like(cov))
    return r.clamp(-1.0, 1.0).sum(dim=-1)


def coalition_masks(presence: torch.Tensor) -> torch.Tensor:
    """presence [B, 4] -> effective coalition masks [B, 16, 4] = COALITION_MASKS * presence."""
    return COALITION_MASKS.to(presence.device, presence.dtype).unsqueeze(0) * presence.unsqueeze(1)


def coalition_values(coalition_poses: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """coalition_poses [B, 16, 17, 3], target [B, 17, 3] -> v [16] (float64), v[0] = 0."""
    v = pearson_profit(coalition_poses.transpose(0, 1), target).cpu().numpy()
    v[0] = 0.0
    return v


Gather = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def batch_shapley(model, feats: dict[str, torch.Tensor], presence: torch.Tensor, target: torch.Tensor,
                  gather: Gather | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shapley scores of one batch from features already computed by ``model.encode``.

    feats: modality -> [B, D] (detached here); presence [B, 4]; target [B, 17, 3] metres.
    ``gather`` concatenates a tensor over data-parallel ranks (the profit is not additive over
    shards, so it is computed on the global batch). Returns (phi [4], v [16]).
    """
    feats = {m: f.detach() for m, f in feats.items()}
    poses = model.fuse_coalitions(feats, coalition_masks(presence))  # [B, 16, 17, 3]
    if gather is not None:
        poses, target = gather(poses.contiguous()), gather(target.contiguous())
    v = coalition_values(poses, target)
    return posemath.shapley_values(v), v
