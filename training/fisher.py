"""Diagonal empirical Fisher of the task loss over the modality encoders' parameters.

F_ii = mean over a fixed subset of training frames of (d L_MPJPE / d theta_i)^2, at theta0 (the
epoch start), model in eval mode. Two estimators:

* ``per_sample`` (default): exact per-frame gradients, batched with ``torch.func`` (vmap of grad
  over chunks of ``fisher_chunk`` frames). This is the empirical Fisher of the paper.
* ``per_batch``: squared gradients of mini-batches of ``fisher_chunk`` frames. Cheaper (one
  ordinary backward per mini-batch) but it estimates ``g_mean^2 + Var(g)/chunk``: the noise part
  shrinks by the mini-batch size, so the values are smaller and α must be larger (x ~chunk).

Only encoder parameters are included (the fusion head is not constrained by AWC).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import functional_call, grad, vmap

from sensors.core import schema
from training.data import Split
from training.losses import mpjpe_loss
from training.model import PoseModel
from training.shapley import coalition_masks

Reduce = Callable[[torch.Tensor], torch.Tensor]


def encoder_names(model: PoseModel) -> dict[str, list[str]]:
    """modality -> full parameter names of its encoder (``encoders.<m>.…``)."""
    return {m: [f"encoders.{m}.{n}" for n, _ in params] for m, params in model.encoder_parameters().items()}


class _WithCoalitions(torch.nn.Module):
    """forward(inputs..., presence) -> (pose [B,17,3], coalition poses [B,16,17,3], no grad)."""

    def __init__(self, model: PoseModel):
        super().__init__()
        self.model = model

    def forward(self, *inputs):   # schema.MODEL_INPUTS
        *tensors, presence = inputs
        feats = self.model.encode(*tensors)
        coal = self.model.fuse_coalitions({m: f.detach() for m, f in feats.items()}, coalition_masks(presence))
        return self.model.fuse(feats, presence), coal.detach()


def _per_sample_sum(model: PoseModel, batch: dict[str, torch.Tensor], names: list[str]
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(sum over the frames of ``batch`` of squared per-frame gradients of parameters ``names``,
    coalition poses [n, 16, 17, 3] from the same forward pass)."""
    wrapper = _WithCoalitions(model)
    all_params = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
    params = {f"model.{n}": all_params[f"model.{n}"] for n in names}
    fixed = {n: p for n, p in all_params.items() if n not in params}
    buffers = {f"model.{n}": b for n, b in model.named_buffers()}

    def loss_one(p, sample):
        inputs = tuple(sample[k].unsqueeze(0) for k in schema.MODEL_INPUTS)
        pred, coal = functional_call(wrapper, {**p, **fixed, **buffers}, inputs)
        return mpjpe_loss(pred, sample["joints"].unsqueeze(0)), coal[0]

    grads, coal = vmap(grad(loss_one, has_aux=True), in_dims=(None, 0))(params, batch)
    return {n[len("model."):]: g.pow(2).sum(dim=0) for n, g in grads.items()}, coal


def _per_batch_sum(model: PoseModel, batch: dict[str, torch.Tensor], names: list[str]
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(squared gradient of the mini-batch loss (one term), coalition poses [n, 16, 17, 3])."""
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    pred, coal = _WithCoalitions(model)(*[batch[k] for k in schema.MODEL_INPUTS])
    mpjpe_loss(pred, batch["joints"]).backward()
    out = {n: (params[n].grad.detach().pow(2) if params[n].grad is not None else torch.zeros_like(params[n]))
           for n in names}
    model.zero_grad(set_to_none=True)
    return out, coal


def fisher_and_coalitions(model: PoseModel, data: Split, indices: torch.Tensor, mode: str = "per_sample",
                          chunk: int = 32, all_reduce: Reduce | None = None
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(diagonal Fisher {parameter name: tensor like the parameter} over ``indices`` of ``data``,
    this rank's coalition poses [n, 16, 17, 3] from the same forward passes, for the Shapley
    scores at theta0).

    ``all_reduce`` sums a tensor over data-parallel ranks (each rank passes its own shard of the
    subset); the Fisher is the mean over all ranks' terms.
    """
    names = [n for group in encoder_names(model).values() for n in group]
    was_training = model.training
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in set(names)}
    coals = []
    terms = 0
    device = model.mean_pose.device
    for chunk_idx in torch.split(indices, chunk):
        batch = {k: v.to(device) for k, v in data.batch(chunk_idx).items()}
        if mode == "per_sample":
            part, coal = _per_sample_sum(model, batch, names)
            terms += len(chunk_idx)
        else:
            part, coal = _per_batch_sum(model, batch, names)
            terms += 1
        coals.append(coal)
        for n in names:
            total[n] += part[n]
    model.train(was_training)
    count = torch.tensor([float(terms)], device=device)
    if all_reduce is not None:
        flat = all_reduce(torch.cat([t.reshape(-1) for t in total.values()] + [count]))
        count = flat[-1:]
        total = dict(zip(total, torch.split(flat[:-1], [t.numel() for t in total.values()]), strict=True))
        total = {n: t.reshape(model.get_parameter(n).shape) for n, t in total.items()}
    c = max(float(count.item()), 1.0)
    return {n: t / c for n, t in total.items()}, torch.cat(coals)


def diagonal_fisher(model: PoseModel, data: Split, indices: torch.Tensor, mode: str = "per_sample",
                    chunk: int = 32, all_reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """Diagonal Fisher only (see ``fisher_and_coalitions``)."""
    return fisher_and_coalitions(model, data, indices, mode, chunk, all_reduce)[0]


def summarize(fisher: dict[str, torch.Tensor], model: PoseModel) -> dict[str, dict[str, float]]:
    """Per modality: mean, max and sum of the diagonal Fisher (for the log)."""
    out = {}
    for m, names in encoder_names(model).items():
        flat = torch.cat([fisher[n].reshape(-1) for n in names]) if names else torch.zeros(1)
        out[m] = {"mean": float(flat.mean()), "max": float(flat.max()), "sum": float(flat.sum())}
    return out
