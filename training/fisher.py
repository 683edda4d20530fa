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

from training.data import Split
from training.losses import mpjpe_loss
from training.model import PoseModel

INPUT_NAMES = ("rgb", "lidar", "lidar_mask", "mmwave", "mmwave_mask", "wifi", "presence")
Reduce = Callable[[torch.Tensor], torch.Tensor]


def encoder_names(model: PoseModel) -> dict[str, list[str]]:
    """modality -> full parameter names of its encoder (``encoders.<m>.…``)."""
    return {m: [f"encoders.{m}.{n}" for n, _ in params] for m, params in model.encoder_parameters().items()}


def _per_sample_sum(model: PoseModel, batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Sum over the frames of ``batch`` of squared per-frame gradients, for parameters ``names``."""
    all_params = dict(model.named_parameters())
    params = {n: all_params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in all_params.items() if n not in params}
    buffers = dict(model.named_buffers())

    def loss_one(p, sample):
        inputs = [sample[k].unsqueeze(0) for k in INPUT_NAMES]
        pred = functional_call(model, {**p, **fixed, **buffers}, tuple(inputs))
        return mpjpe_loss(pred, sample["joints"].unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0))(params, batch)
    return {n: g.pow(2).sum(dim=0) for n, g in grads.items()}


def _per_batch_sum(model: PoseModel, batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Squared gradient of the mini-batch loss (one term)."""
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    pred = model(*[batch[k] for k in INPUT_NAMES])
    mpjpe_loss(pred, batch["joints"]).backward()
    out = {n: (params[n].grad.detach().pow(2) if params[n].grad is not None else torch.zeros_like(params[n]))
           for n in names}
    model.zero_grad(set_to_none=True)
    return out


def diagonal_fisher(model: PoseModel, data: Split, indices: torch.Tensor, mode: str = "per_sample",
                    chunk: int = 32, all_reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """Diagonal Fisher {parameter name: tensor like the parameter} over ``indices`` of ``data``.

    ``all_reduce`` sums a tensor over data-parallel ranks (each rank passes its own shard of the
    subset); the result is the mean over all ranks' terms.
    """
    names = [n for group in encoder_names(model).values() for n in group]
    was_training = model.training
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in set(names)}
    terms = 0
    for chunk_idx in torch.split(indices, chunk):
        batch = data.batch(chunk_idx)
        if mode == "per_sample":
            part = _per_sample_sum(model, batch, names)
            terms += len(chunk_idx)
        else:
            part = _per_batch_sum(model, batch, names)
            terms += 1
        for n in names:
            total[n] += part[n]
    model.train(was_training)
    count = torch.tensor([float(terms)])
    if all_reduce is not None:
        flat = all_reduce(torch.cat([t.reshape(-1) for t in total.values()] + [count]))
        count = flat[-1:]
        total = dict(zip(total, torch.split(flat[:-1], [t.numel() for t in total.values()]), strict=True))
        total = {n: t.reshape(model.get_parameter(n).shape) for n, t in total.items()}
    c = max(float(count.item()), 1.0)
    return {n: t / c for n, t in total.items()}


def summarize(fisher: dict[str, torch.Tensor], model: PoseModel) -> dict[str, dict[str, float]]:
    """Per modality: mean, max and sum of the diagonal Fisher (for the log)."""
    out = {}
    for m, names in encoder_names(model).items():
        flat = torch.cat([fisher[n].reshape(-1) for n in names]) if names else torch.zeros(1)
        out[m] = {"mean": float(flat.mean()), "max": float(flat.max()), "sum": float(flat.sum())}
    return out
