"""The balancing methods as hooks of the training loop (the math is in ``training.balance_math``).

The loop (``training.trainer``) calls, per epoch and per mini-batch:

    b.epoch_start(epoch)            -> log fields   (theta0, Fisher, anchors, held-out losses ...)
    b.observe(phi, v)                               (the batch's Shapley scores / coalition values)
    loss = b.loss(task, feats, batch)               (task loss + the method's terms)
    loss.backward(); b.after_backward()             (gradient modulation)
    b.epoch_end()                   -> log fields

``make(ctx)`` builds the one ``ctx.cfg.balance.method`` names (``METHODS``, the registry); every
method keeps its own state and reads its own config section (``balance.awc``, ``balance.ogm_ge``
...), nothing is shared.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from sensors.core import posemath, schema
from training import balance_math
from training.config import Config
from training.data import Split, evenly_spaced, holdout_sequences
from training.fisher import fisher_and_coalitions
from training.fisher import summarize as fisher_summary
from training.losses import mpjpe_loss
from training.model import PoseModel, mlp
from training.shapley import coalition_values

Tensor = torch.Tensor


def _named(values) -> dict[str, float]:
    return dict(zip(schema.MODALITIES, map(float, values), strict=True))


@dataclass
class Context:
    """What a balancer may use: the model, the config, the training data, the data-parallel helpers."""

    model: PoseModel
    cfg: Config
    train: Split
    device: torch.device
    gather: Callable[[Tensor], Tensor] = lambda t: t
    reduce: Callable[[Tensor], Tensor] | None = None
    shard: Callable[[Tensor], Tensor] = lambda t: t
    world: int = 1


class Balancer:
    """Plain joint training (``none``); the base every method overrides."""

    active = False

    def __init__(self, ctx: Context):
        self.ctx, self.cfg, self.bc = ctx, ctx.cfg, ctx.cfg.balance
        self.enabled = ctx.cfg.model.modalities
        self._times: dict[str, float] = defaultdict(float)  # seconds spent in the hooks, by phase

    def take_times(self) -> dict[str, float]:
        """Seconds this method spent in its own phases (fisher, shapley) since the last call."""
        out, self._times = dict(self._times), defaultdict(float)
        return out

    def split_training_set(self, train: Split) -> Split:
        """The frames the optimiser sees (G-Blending holds some out)."""
        return train

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained beside the model's (not exported)."""
        return []

    def epoch_start(self, epoch: int) -> dict[str, Any]:
        return {}

    def observe(self, phi: np.ndarray, v: np.ndarray) -> None:
        pass

    def loss(self, task: Tensor, feats: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return task

    def after_backward(self) -> None:
        pass

    def epoch_end(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What must survive a ``--resume`` (state carried from one epoch to the next)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Proximal(Balancer):
    """``awc`` (Fisher weights) and ``uniform`` (c_m * I): L_AWC inside the learning window, with
    the superior/inferior groups from the step scores (Algorithm 1), from theta0, or frozen from the
    first window epoch's scores (``awc.group_by=first_epoch``: that epoch trains unconstrained).

    Logged per window epoch: ``penalty_grad_ratio``, the norm of L_AWC's gradient over the norm of
    the task loss's gradient on each group's encoders (mean over the steps), which says what an
    alpha means on this loss and Fisher estimator."""

    def __init__(self, ctx: Context, weighting: str):
        super().__init__(ctx)
        self.weighting = weighting
        self.fisher_idx = torch.from_numpy(evenly_spaced(len(ctx.train), self.bc.awc.fisher_samples))
        self.anchors = self.weights = self.alphas = None
        self.frozen: list[str] | None = None   # awc.group_by=first_epoch: the groups once measured

    def _set_groups(self, phi: np.ndarray) -> None:
        self.groups = balance_math.kmeans_groups(phi, self.enabled)
        self.alphas = balance_math.group_alphas(self.groups, self.bc)

    def epoch_start(self, epoch: int) -> dict[str, Any]:
        self.active = epoch < self.bc.window
        self.phi_sum, self.n, self.superior_steps, self.changes = np.zeros(schema.N_MODALITIES), 0, \
            np.zeros(schema.N_MODALITIES), 0
        self.grad_sq = {balance_math.SUPERIOR: np.zeros(2), balance_math.INFERIOR: np.zeros(2)}   # penalty, task
        self.ratio_sum, self.ratio_n = defaultdict(float), defaultdict(int)
        if not self.active or (self.bc.awc.group_by == "first_epoch" and self.frozen is None):
            self.anchors = None   # outside the window, or the measuring epoch of first_epoch
            return {}
        ctx, t0 = self.ctx, time.perf_counter()
        shard = ctx.shard(self.fisher_idx)
        fisher, coal = fisher_and_coalitions(ctx.model, ctx.train, shard, self.bc.awc.fisher_mode, self.bc.awc.fisher_chunk,
                                             ctx.reduce)
        self.weights = fisher if self.weighting == "fisher" else balance_math.uniform_weights(fisher, ctx.model)
        self.anchors = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if n in self.weights}
        t1 = time.perf_counter()
        self._times["fisher"] += t1 - t0
        v = coalition_values(ctx.gather(coal), ctx.gather(ctx.train.tensors["joints"][shard].to(ctx.device)))
        phi0 = posemath.shapley_values(v)
        if self.frozen is not None:
            self.groups, self.alphas = self.frozen, balance_math.group_alphas(self.frozen, self.bc)
        else:
            self._set_groups(phi0)
        self._times["shapley"] += time.perf_counter() - t1
        return {"shapley_theta0": _named(phi0), "groups_theta0": dict(zip(schema.MODALITIES, self.groups, strict=True)),
                "fisher": fisher_summary(fisher, ctx.model)}

    def observe(self, phi: np.ndarray, v: np.ndarray) -> None:
        if not self.active:
            return
        self.phi_sum += phi
        self.n += 1
        if self.anchors is None:   # first_epoch's measuring epoch: scores only
            return
        if self.bc.awc.group_by == "step":
            before = self.groups
            self._set_groups(self.phi_sum / self.n)
            self.changes += int(before != self.groups)
        self.superior_steps += [g == balance_math.SUPERIOR for g in self.groups]

    def loss(self, task: Tensor, feats: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        if self.anchors is None:
            return task
        self.penalty = balance_math.awc_loss(self.ctx.model, self.anchors, self.weights, self.alphas)
        return task + self.penalty

    @torch.no_grad()
    def after_backward(self) -> None:
        """Accumulate |grad L_AWC|^2 and |grad L_task|^2 per group: the penalty's gradient is
        alpha F (theta - theta0) in closed form, the task's is what backward left minus it."""
        if self.anchors is None:
            return
        for m, params in self.ctx.model.encoder_parameters().items():
            group = self.groups[schema.MODALITY_INDEX[m]]
            if group not in self.grad_sq:
                continue
            a = self.alphas[m]
            for n, p in params:
                if p.grad is None:
                    continue
                name = f"encoders.{m}.{n}"
                pen = a * self.weights[name] * (p - self.anchors[name])
                self.grad_sq[group] += [float(pen.pow(2).sum()), float((p.grad - pen).pow(2).sum())]
        for g, (pen, task) in self.grad_sq.items():
            if task > 0:
                self.ratio_sum[g] += float(np.sqrt(pen / task))
                self.ratio_n[g] += 1
        self.grad_sq = {g: np.zeros(2) for g in self.grad_sq}

    def epoch_end(self) -> dict[str, Any]:
        if not self.active:
            return {}
        if self.anchors is None:   # first_epoch: freeze this epoch's groups for the rest of the window
            self.frozen = balance_math.kmeans_groups(self.phi_sum / max(self.n, 1), self.enabled)
            self.groups, self.alphas = self.frozen, balance_math.group_alphas(self.frozen, self.bc)
            return {"groups": dict(zip(schema.MODALITIES, self.groups, strict=True)), "groups_frozen": True,
                    "alphas": dict(self.alphas), "constrained": False}
        ratio = {g: self.ratio_sum[g] / self.ratio_n[g] for g in self.ratio_sum}
        return {"groups": dict(zip(schema.MODALITIES, self.groups, strict=True)),
                "superior_fraction": _named(self.superior_steps / max(self.n, 1)), "group_changes": self.changes,
                "alphas": dict(self.alphas), "penalty_grad_ratio": ratio}

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen} if self.frozen is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = state.get("frozen")


class OgmGe(Balancer):
    """OGM-GE: the dominant modality's weight gradients scaled by 1 - tanh(alpha (rho - 1)), Gaussian
    noise on every encoder's weight gradients, in epochs < ``ogm_ge.window``."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.noise = torch.Generator()

    def epoch_start(self, epoch: int) -> dict[str, Any]:
        self.active = self.bc.ogm_ge.window < 0 or epoch < self.bc.ogm_ge.window
        self.noise.manual_seed(self.cfg.train.seed * 7_919 + epoch)
        self.k_sum, self.n, self.coeffs = np.zeros(schema.N_MODALITIES), 0, None
        return {}

    def observe(self, phi: np.ndarray, v: np.ndarray) -> None:
        self.coeffs = balance_math.ogm_coefficients(balance_math.single_modality_values(v), self.enabled, self.bc.ogm_ge.alpha)

    def after_backward(self) -> None:
        if self.active and self.coeffs is not None:
            balance_math.modulate_gradients(self.ctx.model, self.coeffs, self.bc.ogm_ge.noise, self.noise)
            self.k_sum += self.coeffs
            self.n += 1

    def epoch_end(self) -> dict[str, Any]:
        return {"ogm_coefficients": _named(self.k_sum / self.n)} if self.n else {}


class Agm(Balancer):
    """AGM: every encoder's gradient scaled by exp(-alpha * relative deviation of its running
    Shapley score from the mean), every epoch."""

    active = True

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.running: np.ndarray | None = None

    def epoch_start(self, epoch: int) -> dict[str, Any]:
        self.k_sum, self.n, self.coeffs = np.zeros(schema.N_MODALITIES), 0, None
        return {}

    def observe(self, phi: np.ndarray, v: np.ndarray) -> None:
        mom = self.bc.agm.momentum
        self.running = phi.copy() if self.running is None else mom * self.running + (1.0 - mom) * phi
        self.coeffs = balance_math.agm_coefficients(self.running, self.enabled, self.bc.agm.alpha)

    def after_backward(self) -> None:
        if self.coeffs is not None:
            balance_math.scale_encoder_gradients(self.ctx.model, self.coeffs)
            self.k_sum += self.coeffs
            self.n += 1

    def epoch_end(self) -> dict[str, Any]:
        return {"agm_coefficients": _named(self.k_sum / self.n)} if self.n else {}

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running = state["running"]


class GBlending(Balancer):
    """G-Blending (online): one uni-modal head per enabled modality beside the fused head; the loss
    is sum_k w_k L_k over the branches, w re-estimated every ``g_blending.super_epoch`` epochs from the
    losses on ``g_blending.holdout`` held-out training frames and as many training frames at the start and
    end of that super-epoch (w_k ∝ G_k / O_k^2)."""

    active = True

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        mc = ctx.cfg.model
        self.heads = nn.ModuleDict({m: mlp([mc.dim, mc.hidden, schema.N_JOINTS * 3]) for m in self.enabled})
        self.heads.to(ctx.device)
        self.branches = ["fused", *self.enabled]
        self.w = np.full(len(self.branches), 1.0 / len(self.branches))
        self.prev: tuple[np.ndarray, np.ndarray] | None = None

    def split_training_set(self, train: Split) -> Split:
        """Hold out whole sequences, so the held-out loss stands for unseen recordings as the paper's
        held-out split does (frames interleaved with trained ones are near-copies of them at 10 Hz,
        and their loss tracks the training loss: O ~ 0 and G / O^2 explodes). ``g_blending.holdout`` frames
        spread over ceil(holdout / 16) sequences are measured; the rest of those sequences is
        not trained on either. Fewer than 4 sequences: frames, as a fallback."""
        hold, rest = holdout_sequences(train, self.bc.g_blending.holdout)
        self.holdout, self.probe = train.take(hold), train.take(rest[evenly_spaced(len(rest), len(hold))])
        return train.take(rest)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def _branch_poses(self, feats: dict[str, Tensor], presence: Tensor) -> list[Tensor]:
        model = self.ctx.model
        out = [model.fuse(feats, presence)]
        for m in self.enabled:
            out.append(model.mean_pose + self.heads[m](feats[m]).reshape(-1, schema.N_JOINTS, 3))
        return out

    @torch.no_grad()
    def _losses(self, data: Split) -> np.ndarray:
        model = self.ctx.model
        was = model.training
        model.eval()
        b = {k: v.to(self.ctx.device) for k, v in data.batch(torch.arange(len(data))).items()}
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        out = np.array([float(mpjpe_loss(p, b["joints"])) for p in self._branch_poses(feats, b["presence"])])
        model.train(was)
        return out

    def epoch_start(self, epoch: int) -> dict[str, Any]:
        if epoch % self.bc.g_blending.super_epoch != 0 and self.prev is not None:
            return {"gblend_weights": dict(zip(self.branches, map(float, self.w), strict=True))}
        now = (self._losses(self.holdout), self._losses(self.probe))
        if self.prev is not None:
            self.w = balance_math.gblend_weights(self.prev[0], self.prev[1], now[0], now[1])
        self.prev = now
        return {"gblend_weights": dict(zip(self.branches, map(float, self.w), strict=True)),
                "gblend_holdout_loss": dict(zip(self.branches, map(float, now[0]), strict=True))}

    def loss(self, task: Tensor, feats: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        total = float(self.w[0]) * task
        for i, m in enumerate(self.enabled, start=1):
            pose = self.ctx.model.mean_pose + self.heads[m](feats[m]).reshape(-1, schema.N_JOINTS, 3)
            present = batch["presence"][:, schema.MODALITY_INDEX[m]] > 0
            err = (pose - batch["joints"]).pow(2).sum(-1).add(1e-12).sqrt().mean(-1)  # [B] metres
            total = total + float(self.w[i]) * (err * present).sum() / present.sum().clamp(min=1)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"heads": self.heads.state_dict(), "w": self.w, "prev": self.prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.heads.load_state_dict(state["heads"])
        self.w, self.prev = state["w"], state["prev"]

    def after_backward(self) -> None:
        if self.ctx.world > 1 and self.ctx.reduce is not None:  # the heads are outside DDP
            for p in self.heads.parameters():
                if p.grad is not None:
                    p.grad.copy_(self.ctx.reduce(p.grad) / self.ctx.world)


class ModalityLevel(Balancer):
    """Modality-level resampling: at each epoch start inside the window the modality-level Shapley
    scores (the Fisher subset, no gradients) pick the lowest-contributing modality and a fraction
    p of every batch; those frames are fed again with that modality alone and their loss added."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.idx = torch.from_numpy(evenly_spaced(len(ctx.train), self.bc.modality_level.samples))
        self.gen = torch.Generator()

    @torch.no_grad()
    def _scores(self) -> np.ndarray:
        model, ctx = self.ctx.model, self.ctx
        was = model.training
        model.eval()
        b = {k: v.to(ctx.device) for k, v in ctx.train.batch(ctx.shard(self.idx)).items()}
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        from training.shapley import coalition_masks

        coal = model.fuse_coalitions(feats, coalition_masks(b["presence"]))
        model.train(was)
        return posemath.shapley_values(coalition_values(ctx.gather(coal), ctx.gather(b["joints"])))

    def epoch_start(self, epoch: int) -> dict[str, Any]:
        self.active = epoch < self.bc.window
        self.gen.manual_seed(self.cfg.train.seed * 104_729 + epoch)
        if not self.active:
            return {}
        t0 = time.perf_counter()
        phi = self._scores()
        self._times["shapley"] += time.perf_counter() - t0
        self.low, self.p = balance_math.resample_plan(phi, self.enabled, self.bc.modality_level.gamma)
        return {"resample": {"modality": schema.MODALITIES[self.low], "fraction": self.p, "scores": _named(phi)}}

    def loss(self, task: Tensor, feats: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        if not self.active or self.p <= 0.0:
            return task
        n = int(batch["joints"].shape[0])
        pick = torch.rand(n, generator=self.gen) < self.p
        pick = pick.to(batch["joints"].device) & (batch["presence"][:, self.low] > 0)
        if not bool(pick.any()):
            return task
        alone = torch.zeros_like(batch["presence"][pick])
        alone[:, self.low] = 1.0
        pose = self.ctx.model.fuse({m: f[pick] for m, f in feats.items()}, alone)
        return task + mpjpe_loss(pose, batch["joints"][pick]) * (float(pick.sum()) / n)


# The one registry of balancing methods: name -> training hooks. The names, their order and the
# config section each reads are ``training.config.METHOD_SECTIONS`` (torch-free, for the config
# layer); tests/test_balancers.py checks that the two list the same methods.
METHODS: dict[str, Callable[[Context], Balancer]] = {
    "none": Balancer,
    "awc": lambda ctx: Proximal(ctx, "fisher"),
    "ogm-ge": OgmGe,
    "g-blending": GBlending,
    "agm": Agm,
    "modality-level": ModalityLevel,
    "uniform": lambda ctx: Proximal(ctx, "uniform"),
}


def make(ctx: Context) -> Balancer:
    """The balancer of ``ctx.cfg.balance.method``."""
    return METHODS[ctx.cfg.balance.method](ctx)
