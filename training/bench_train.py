"""``training bench``: training speed early and late in a run, side by side, with and without
subnormal floats flushed to zero.

    training bench --checkpoint runs/NAME/checkpoint.pt [--data DIR] [--steps 40] [--threads 1]

From one run's checkpoint (its config, data and, for "late", its trained state) the bench times
``--steps`` real training steps of the run's own ``Trainer`` for each of

* ``early``: the model as initialised (the run's seed), epoch 0 (inside AWC's window: the Fisher
  pass is timed too);
* ``late``: the checkpoint's model, optimiser, scheduler and balancer state, the epoch after it;

once as shipped (``flush``: subnormals flushed, what ``training`` sets on import) and once with
IEEE subnormals kept (``keep``: what ran before), so the ratios come from one process on one
machine. It prints frames per second, seconds per step, the share of each phase (data loading,
forward, Shapley, backward, Fisher), the thread count and how many of the state's values are
subnormal. Figures are this machine's: quote them with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from sensors.core.settings import ConfigError
from training import config as config_mod
from training import data as data_mod
from training import distributed
from training.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

PHASES = ("data", "forward", "shapley", "backward", "fisher")
STATES = ("early", "late")
MODES = ("keep", "flush")


def subnormal_fraction(tensors: list[torch.Tensor]) -> float:
    """Fraction of the float32 values in ``tensors`` that are subnormal (0 < |x| < 1.18e-38),
    read from the bits (a float comparison would itself read them as zero once they are flushed)."""
    n = bad = 0
    for t in tensors:
        if t.dtype == torch.float32:
            bits = t.detach().contiguous().view(torch.int32)
            bad += int(((bits & 0x7F800000) == 0).logical_and_((bits & 0x007FFFFF) != 0).sum())
            n += bits.numel()
    return bad / max(n, 1)


def state_tensors(state: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
    """The checkpoint's weights and Adam moments (SGD: momentum buffers), for the subnormal count."""
    moments = [v for s in (state.get("optimizer") or {}).get("state", {}).values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0]
    return {"weights": list(state["model"].values()), "optimizer": moments}


def bench_config(state: dict[str, Any], data: str | None, steps: int, threads: int) -> config_mod.Config:
    """The run's config, timing exactly ``steps`` steps: no recordings held out of them, no plots."""
    cfg = config_mod.from_dict(state["config"])
    if data:
        cfg.data.root = data
    cfg.data.validation = "test"
    cfg.data.max_train = steps * cfg.train.batch_size
    cfg.train.threads = threads
    cfg.train.device = "cpu"
    cfg.train.plots = False
    return cfg


def measure(cfg: config_mod.Config, state: dict[str, Any] | None, train, test, mode: str) -> dict[str, Any]:
    """One timed epoch of ``cfg.data.max_train`` frames: early (``state`` None) or late."""
    from training.trainer import Trainer

    torch.set_flush_denormal(mode == "flush")
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, train, test, distributed.setup("cpu"), progress=False)
    epoch = 0
    if state is not None:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if state.get("balancer"):
            trainer.balancer.load_state_dict(state["balancer"])
        epoch = min(int(state["epoch"]) + 1, cfg.train.epochs - 1)
    try:
        rec = trainer.train_epoch(epoch)
    finally:
        torch.set_flush_denormal(True)   # what the package sets on import
    t = rec["time"]
    frames = rec["steps"] * cfg.train.batch_size
    return {"epoch": epoch, "steps": rec["steps"], "frames": frames, "seconds": t["train"],
            "frames_per_s": frames / t["train"], "step_s": t["train"] / max(rec["steps"], 1),
            "share": {p: t.get(p, 0.0) / t["train"] for p in PHASES}, "in_window": rec["in_window"]}


def run_bench(checkpoint: str, data: str | None = None, steps: int = 40, threads: int = 1,
              states: tuple[str, ...] = STATES, modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    state = read_checkpoint(checkpoint)
    bal = Path(checkpoint).with_name("balancer.pt")
    if bal.is_file():
        state["balancer"] = torch.load(bal, map_location="cpu", weights_only=False)
    cfg = bench_config(state, data, steps, threads)
    torch.set_num_threads(threads)
    train, test = data_mod.load_splits(cfg, progress=False)
    train = data_mod.select_frames(cfg, train)
    test = test.take(data_mod.evenly_spaced(len(test), 64))
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "checkpoint_epoch": int(state["epoch"]), "threads": threads,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "balance": cfg.balance.method, "batch": cfg.train.batch_size, "steps": steps,
        "subnormal": {k: subnormal_fraction(v) for k, v in state_tensors(state).items()}, "runs": {}}
    for s in states:
        for m in modes:
            r = measure(cfg, state if s == "late" else None, train, test, m)
            report["runs"][f"{s}/{m}"] = r
            log.info("%s/%s: %.0f frames/s", s, m, r["frames_per_s"])
    runs = report["runs"]
    for m in modes:
        if f"early/{m}" in runs and f"late/{m}" in runs:
            report[f"late_over_early_{m}"] = runs[f"late/{m}"]["step_s"] / runs[f"early/{m}"]["step_s"]
    for s in states:
        if f"{s}/keep" in runs and f"{s}/flush" in runs:
            report[f"speedup_{s}"] = runs[f"{s}/keep"]["step_s"] / runs[f"{s}/flush"]["step_s"]
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [f"training bench: {r['checkpoint']} (epoch {r['checkpoint_epoch']}), balance {r['balance']}, "
             f"batch {r['batch']}, {r['steps']} steps per measurement, {r['torch_threads']} torch thread(s) "
             f"on {r['cpus']} CPUs, torch {r['torch']}",
             f"subnormal values in the checkpoint: weights {r['subnormal']['weights']:.2%}, optimiser state "
             f"{r['subnormal']['optimizer']:.2%}",
             f"{'state/denormals':<16} {'epoch':>5} {'frames/s':>9} {'s/step':>7}  "
             + " ".join(f"{p:>8}" for p in PHASES)]
    for name, x in r["runs"].items():
        lines.append(f"{name:<16} {x['epoch']:>5} {x['frames_per_s']:>9.0f} {x['step_s']:>7.3f}  "
                     + " ".join(f"{x['share'][p]:>8.1%}" for p in PHASES))
    for m in MODES:
        if f"late_over_early_{m}" in r:
            lines.append(f"late / early time per step, subnormals {'flushed' if m == 'flush' else 'kept'}: "
                         f"{r[f'late_over_early_{m}']:.2f}x")
    for s in STATES:
        if f"speedup_{s}" in r:
            lines.append(f"{s}: flushing subnormals is {r[f'speedup_{s}']:.2f}x faster than keeping them")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint.pt (late in the run: a converged state)")
    p.add_argument("--data", help="dataset root (default: the run's data.root)")
    p.add_argument("--steps", type=int, default=40, help="training steps per measurement (default 40)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as train.threads)")
    p.add_argument("--states", default="early,late", help="early, late or both (default early,late)")
    p.add_argument("--denormals", default="keep,flush", help="keep, flush or both (default keep,flush)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="accepted for symmetry; the bench prints no bars")


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    got = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        raise ConfigError(f"{flag} takes {', '.join(allowed)} (comma-separated), got {text!r}")
    return got


def run(args: argparse.Namespace) -> int:
    if args.steps < 2 or args.threads < 1:
        raise ConfigError(f"--steps must be >= 2 and --threads >= 1, got {args.steps} and {args.threads}")
    report = run_bench(args.checkpoint, args.data, args.steps, args.threads,
                       _choices(args.states, STATES, "--states"), _choices(args.denormals, MODES, "--denormals"))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0
