"""The training loop shared by every balancing method, single process or torchrun/DDP.

Per epoch (the balancing method's hooks, ``training.balance_methods``, in brackets):
  1. [epoch_start] e.g. AWC inside the learning window: diagonal Fisher and anchors at theta0.
  2. mini-batch steps: encode once -> fuse -> L_MPJPE; the 16-coalition Shapley scores of the
     (global) batch from the same features, no grad [observe: AWC regroups the modalities by
     K-Means on the running mean of these step scores]; [loss: L_MPJPE + the method's terms];
     backward [after_backward: gradient modulation]; optimiser step (Adam, or SGD + momentum).
  3. [epoch_end] validation (rank 0), log line, checkpoint.

Validation (``data.validation``, ``training.data.hold_out_validation``): whole training
recordings held out before training (default) or the test subset; it chooses ``best.pt``.
``metrics.json`` is the last-epoch model on the test subset either way.

Outputs in ``cfg.out``: config.yaml, log.jsonl, checkpoint.pt, best.pt, metrics.json, plots/.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from sensors.core import schema
from training import balance_math, balance_methods, distributed
from training import config as config_mod
from training.checkpoint import read_checkpoint, save_checkpoint
from training.config import Config
from training.data import Split, batches, evenly_spaced, hold_out_validation, load_splits, select_frames
from training.evaluate import evaluate_model, predict
from training.losses import mpjpe_loss
from training.model import PoseModel, build_model, count_parameters
from training.shapley import batch_shapley

log = logging.getLogger(__name__)


class StepModule(nn.Module):
    """What DDP wraps: one encoder pass and the fused pose, returning the features too."""

    def __init__(self, model: PoseModel):
        super().__init__()
        self.model = model

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        return self.model.fuse(feats, b["presence"]), feats


def _seed_everything(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


RESUMABLE = ("epochs", "device", "tensorboard")  # train.* keys that may change on --resume


def _config_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """The ``section.key`` settings in which a checkpoint's config and ``cfg`` differ, ignoring
    ``out`` and ``train.{epochs,device,tensorboard}``. The saved config is read back first, so a
    key it predates counts as its ``config.LEGACY`` value (what that run was trained with)."""
    try:
        a = config_mod.from_dict(saved).to_dict()
    except ValueError as err:
        return [f"unreadable saved config ({err})"]
    b = cfg.to_dict()
    diff = []
    for section in sorted(set(a) | set(b)):
        if section == "out":
            continue
        x, y = a.get(section), b.get(section)
        if not (isinstance(x, dict) and isinstance(y, dict)):
            diff += [section] if x != y else []
            continue
        diff += [f"{section}.{k}" for k in sorted(set(x) | set(y))
                 if not (section == "train" and k in RESUMABLE)
                 and json.dumps(x.get(k), sort_keys=True) != json.dumps(y.get(k), sort_keys=True)]
    return diff


class Trainer:
    def __init__(self, cfg: Config, train: Split, test: Split, dist: distributed.DistInfo, progress: bool = True):
        self.cfg, self.train, self.test, self.dist = cfg, train, test, dist
        self.progress = progress and dist.is_main
        # held-out recordings leave the training frames before anything is fitted on them
        train, self.validation = hold_out_validation(cfg.data, train, test)
        if self.validation.note and dist.is_main:
            log.warning("%s", self.validation.note)
        self.val = self.validation.frames
        self.train_probe = train.take(evenly_spaced(len(train), min(len(train), max(len(self.val), 256))))
        self.out = Path(cfg.out)
        self.device = torch.device(dist.device)
        self.model = build_model(cfg.model)
        self.model.set_mean_pose(train.tensors["joints"].mean(dim=0))
        self.model.to(self.device)
        self.ctx = balance_methods.Context(self.model, cfg, train, self.device, gather=self._gather,
                                     reduce=self._reduce if dist.enabled else None, shard=self._shard,
                                     world=dist.world)
        self.balancer = balance_methods.make(self.ctx)
        self.train = self.ctx.train = self.balancer.split_training_set(train)
        params = list(self.model.parameters()) + self.balancer.extra_parameters()
        tc = cfg.train
        self.optimizer = (torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay) if tc.optimizer == "adam"
                          else torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.train.lr_step, cfg.train.lr_gamma)
        self.step_module: nn.Module = StepModule(self.model)
        if dist.enabled:
            ids = [dist.local_rank] if self.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.history: list[dict[str, Any]] = []
        self.best = math.inf
        self.best_epoch: int | None = None
        self.start_epoch = 0

    # -- helpers ---------------------------------------------------------------------------------
    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_gather_cat(t, self.dist)

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(t, self.dist)

    def _shard(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.tensor_split(idx, self.dist.world)[self.dist.rank]

    def resume(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.exists():
            log.info("no %s to resume from: starting from scratch", path)
            return
        state = read_checkpoint(path)
        diff = _config_differences(state["config"], self.cfg)
        if diff:
            raise ValueError(f"{path} was trained with a different config ({', '.join(diff)} differ; only "
                             f"train.epochs may change on --resume); use a new --out or the same config")
        self.model.load_state_dict(state["model"])
        bal = self.out / "balancer.pt"
        if bal.exists():
            self.balancer.load_state_dict(torch.load(bal, map_location=self.device, weights_only=False))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.history = list(state["history"])
        self.best = float(state["best"]) if state["best"] is not None else math.inf
        best = [r for r in self.history if r.get("val_mpjpe") == self.best]
        self.best_epoch = int(best[0]["epoch"]) if best else None
        log.info("resumed %s at epoch %d", path, self.start_epoch)

    # -- one epoch ---------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, bal = self.cfg, self.balancer
        times: dict[str, float] = defaultdict(float)
        t_start = time.perf_counter()
        rec: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update(bal.epoch_start(epoch))
        rec["in_window"] = bool(bal.active)
        self.model.train()
        order = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        sums = defaultdict(float)
        phi_sum, n_shapley = np.zeros(schema.N_MODALITIES), 0
        steps = batches(len(self.train), cfg.train.batch_size, order, True, self.dist.rank, self.dist.world)
        n_steps = max(1, math.ceil(len(self.train) / cfg.train.batch_size))
        for step, idx in enumerate(tqdm(steps, total=n_steps, desc=f"epoch {epoch}", leave=False,
                                        disable=not self.progress)):
            t_data = time.perf_counter()
            b = {k: v.to(self.device, non_blocking=True) for k, v in self.train.batch(idx).items()}
            t0 = time.perf_counter()
            pose, feats = self.step_module(b)
            task = mpjpe_loss(pose, b["joints"])
            t1 = time.perf_counter()
            if step % cfg.balance.shapley_every == 0:
                phi, v = batch_shapley(self.model, feats, b["presence"], b["joints"], self._gather)
                phi_sum += phi
                n_shapley += 1
                bal.observe(phi, v)
            t2 = time.perf_counter()
            loss = bal.loss(task, feats, b)
            t3 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bal.after_backward()
            self.optimizer.step()
            t4 = time.perf_counter()
            times["data"] += t0 - t_data
            times["forward"] += (t1 - t0) + (t3 - t2)
            times["shapley"] += t2 - t1
            times["backward"] += t4 - t3
            sums["task"] += float(task.detach())
            sums["balance"] += float(loss.detach()) - float(task.detach())
            sums["steps"] += 1
            sums["frames"] += len(idx)
        self.scheduler.step()
        totals = self._reduce(torch.tensor([sums["task"], sums["balance"], sums["steps"]], dtype=torch.float64,
                                           device=self.device)).cpu()
        steps_done = max(float(totals[2]) / self.dist.world, 1.0)
        times["train"] = time.perf_counter() - t_start
        rec.update(steps=int(steps_done), loss_task=float(totals[0]) / self.dist.world / steps_done,
                   loss_balance=float(totals[1]) / self.dist.world / steps_done,
                   shapley=dict(zip(schema.MODALITIES, (phi_sum / max(n_shapley, 1)).tolist(), strict=True)))
        rec.update(bal.epoch_end())
        for phase, seconds in bal.take_times().items():  # the method's own phases (Fisher, theta0 scores)
            times[phase] += seconds
        if "groups" not in rec:
            groups = balance_math.kmeans_groups(phi_sum / max(n_shapley, 1), cfg.model.modalities)
            rec["groups"] = dict(zip(schema.MODALITIES, groups, strict=True))
        rec["time"] = dict(times)
        # frames of this rank per second of the whole epoch (Fisher and theta0 scores included): the
        # figure that shows a slowdown late in a run (study report: "late/early epoch time")
        rec["frames_per_s"] = sums["frames"] / times["train"] if times["train"] > 0 else 0.0
        return rec

    def validate(self, rec: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        val = evaluate_model(self.model, self.val, with_shapley=False)
        tr = evaluate_model(self.model, self.train_probe, with_shapley=False)
        rec.update(val_mpjpe=val["mpjpe"], val_pa_mpjpe=val["pa_mpjpe"], val_set=self.validation.source,
                   train_mpjpe=tr["mpjpe"], train_pa_mpjpe=tr["pa_mpjpe"])
        rec["time"]["eval"] = time.perf_counter() - t0
        t = rec["time"]
        rec["shapley_fraction"] = t["shapley"] / t["train"] if t["train"] > 0 else 0.0
        rec["fisher_fraction"] = t.get("fisher", 0.0) / t["train"] if t["train"] > 0 else 0.0

    # -- outputs -----------------------------------------------------------------------------------
    def _write_epoch(self, rec: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "w") as f:
            for r in self.history:
                f.write(json.dumps(r) + "\n")
        extra = self.balancer.state_dict()
        if extra:  # written before the checkpoint that refers to this epoch
            tmp = self.out / "balancer.pt.tmp"
            torch.save(extra, tmp)
            tmp.replace(self.out / "balancer.pt")
        metrics = {"val_mpjpe": rec["val_mpjpe"], "val_pa_mpjpe": rec["val_pa_mpjpe"], "val_set": rec["val_set"]}
        save_checkpoint(self.out / "checkpoint.pt", self.model, self.cfg, rec["epoch"], self.optimizer,
                        self.scheduler, metrics, self.history, min(self.best, rec["val_mpjpe"]))
        if rec["val_mpjpe"] < self.best:
            self.best, self.best_epoch = rec["val_mpjpe"], rec["epoch"]
            save_checkpoint(self.out / "best.pt", self.model, self.cfg, rec["epoch"], None, None, metrics,
                            self.history, self.best)

    def finish(self) -> dict[str, Any]:
        """Final test metrics of the last-epoch model, summary timings, plots; ``best_val_mpjpe``
        and ``best_epoch`` are best.pt's, on the validation set ``validation`` describes."""
        result = evaluate_model(self.model, self.test)
        hist = self.history
        total = {k: sum(r["time"].get(k, 0.0) for r in hist) for k in
                 ("train", "data", "forward", "backward", "shapley", "fisher", "eval")}
        in_w = [r["time"]["train"] for r in hist if r["in_window"]]
        out_w = [r["time"]["train"] for r in hist if not r["in_window"]]
        result.update(
            config_hash=config_mod.config_hash(self.cfg), epochs=len(hist), parameters=count_parameters(self.model),
            best_val_mpjpe=self.best, best_epoch=self.best_epoch, validation=self.validation.describe(), time=total,
            shapley_fraction=total["shapley"] / total["train"] if total["train"] else 0.0,
            fisher_fraction=total["fisher"] / total["train"] if total["train"] else 0.0,
            epoch_time_in_window=float(np.mean(in_w)) if in_w else None,
            epoch_time_after_window=float(np.mean(out_w)) if out_w else None,
        )
        (self.out / "metrics.json").write_text(json.dumps(result, indent=2))
        if self.cfg.train.plots:
            from training import plots

            frames = evenly_spaced(len(self.test), self.cfg.train.plot_frames)
            pred, _ = predict(self.model, self.test.take(frames))
            plots.plot_run(self.out, hist, pred, self.test.tensors["joints"][frames].numpy(),
                           [str(a) for a in self.test.meta["action"][frames]],
                           run_id=f"{self.out.name} ({config_mod.config_hash(self.cfg)})")
        return result

    def fit(self) -> dict[str, Any]:
        tb = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            config_mod.save(self.cfg, self.out / "config.yaml")
            if self.cfg.train.tensorboard:
                from training import plots

                tb = plots.tensorboard_writer(self.out)
            n = len(self.validation.sequences)
            held = (f"{n} held-out training recording{'s' if n != 1 else ''}"
                    if self.validation.source == "sequences" else "the test subset")
            if self.validation.source == "sequences" and self.validation.unit == "subject":
                k = len({r.rsplit("/", 1)[0] for r in self.validation.sequences})
                held += f" of {k} whole subject{'s' if k != 1 else ''}"
            log.info("training %s: %d parameters, %d train / %d val frames (%s), balance=%s fusion=%s "
                     "modalities=%s", self.out, count_parameters(self.model), len(self.train), len(self.val), held,
                     self.cfg.balance.method, self.cfg.model.fusion, ",".join(self.cfg.model.modalities))
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            rec = self.train_epoch(epoch)
            if self.dist.is_main:
                self.validate(rec)
                self.history.append(rec)
                self._write_epoch(rec)
                if tb is not None:
                    plots.tensorboard_epoch(tb, rec)
                log.info("epoch %d: loss %.4f (balance %+.4f) val (%s) MPJPE %.1f PA %.1f mm, shapley %s, "
                         "%.1f s (%.0f frames/s, eval %.1f s)", epoch, rec["loss_task"], rec["loss_balance"],
                         rec["val_set"], rec["val_mpjpe"], rec["val_pa_mpjpe"],
                         " ".join(f"{m}={v:.2f}" for m, v in rec["shapley"].items()), rec["time"]["train"],
                         rec["frames_per_s"], rec["time"]["eval"])
            distributed.barrier(self.dist)
        if tb is not None:
            tb.close()
        result = self.finish() if self.dist.is_main else {}
        distributed.barrier(self.dist)
        return result


def fit(cfg: Config, train: Split | None = None, test: Split | None = None, resume: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Train per ``cfg``; data is read from cfg.data unless given. Returns the final metrics
    (rank 0; {} on other ranks)."""
    dist = distributed.setup(cfg.train.device)
    try:
        _seed_everything(cfg)
        if train is None or test is None:
            train, test = load_splits(cfg, progress=progress and dist.is_main)
        train, test = select_frames(cfg, train), select_frames(cfg, test)
        trainer = Trainer(cfg, train, test, dist, progress)
        if resume:
            trainer.resume()
        return trainer.fit()
    finally:
        distributed.cleanup(dist)
