"""The fair test of AWC (``training study --plan fair``): the paper's own input pipeline, a budget
that lets a learning-window method work, and every choice made on held-out validation recordings
of the training subjects, never on test frames. docs/results.md holds the pre-registration.

Stages (``--stage``), each one's decision written down before the next starts:

* ``bench``: P1, seed 0, each modality alone on the raw LiDAR scan (the MM-Fi toolbox's pipeline,
  ``model.lidar_crop=false``) with the LiDAR sampled to each of ``CAPS`` points. ``select_cap``:
  the cap whose LiDAR / RGB ratio of validation MPJPE is nearest the paper's 1.05 inside its
  +-25 % band, written to ``<out>/bench.json``; every later stage trains at that cap.
* ``alpha``: P1, seed 0: AWC at the paper's alpha x 1, 0.1, 0.01, 0.001 (window = the paper's
  proportion), AWC x 1 with the per-batch Fisher, then the window at 900 and 1,800 steps at the best
  alpha. ``select_alpha``: the lowest validation MPJPE -> ``<out>/choice.json``.
* ``main``: P1 and P2, seeds 0-2: plain, AWC at the paper's alpha, AWC at the validated alpha and
  window, the frozen-groups variant, uniform, modality-level, RGB + LiDAR, each modality alone.
* ``s2``: P1 cross-subject (S2), seeds 0-2: plain, validated AWC, the variant.
* ``lag``: P1, seed 0: plain and AWC (paper alpha) with the lr drop postponed.

The schedule is set in optimiser steps (``StepSchedule``) and turned into epochs once the run's
training frames are known (``prepare``), so runs with different numbers of training frames get
the same number of steps.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sensors.core import schema
from training import config as config_mod
from training.study_arms import Arm, run_dir

CAPS = (64, 96, 128, 192)
PAPER_RATIO = {"lidar": (1.05, 0.79, 1.31), "mmwave": (1.62, 1.22, 2.03), "wifi": (2.62, 1.97, 3.28)}
ALPHA_SCALES = (1.0, 0.1, 0.01, 0.001)
WINDOWS = (900, 1800)          # steps, beside the paper-proportion window of the schedule
MAX_TRAIN = 21_600             # frames before the validation recordings leave: >= 300 steps of 64 after
MAX_VAL = 1000                 # held-out validation frames evaluated per epoch
PAPER_STEPS = 34_650           # MM-Fi P1 S1: 14 actions x 32 subjects x 297 frames / batch 192 x 50 epochs
STAGES = ("bench", "alpha", "main", "s2", "lag")


@dataclass(frozen=True)
class StepSchedule:
    """A schedule in optimiser steps: ``total`` steps, AWC's learning window the first ``window``,
    lr x gamma after ``lr_step`` (the paper: 50 / 20 / 30 epochs; here the window keeps the paper's
    40 % and at least as many full-rate steps follow the window as it holds)."""

    total: int = 7500
    window: int = 3000
    lr_step: int = 6000

    def __post_init__(self) -> None:
        if not 0 < self.window <= self.lr_step - self.window and self.lr_step <= self.total:
            raise ValueError(f"a schedule needs 0 < window <= lr_step - window and lr_step <= total steps, "
                             f"got window {self.window}, lr_step {self.lr_step}, total {self.total}")

    def in_epochs(self, steps_per_epoch: int) -> dict[str, int]:
        """Epochs, window and lr step of a run with ``steps_per_epoch`` steps (rounded; the window
        never longer than the full-rate epochs after it)."""
        spe = max(1, int(steps_per_epoch))
        epochs = max(1, round(self.total / spe))
        window = max(1, round(self.window / spe))
        lr_step = max(2 * window, round(self.lr_step / spe))
        return {"epochs": max(epochs, lr_step), "window": window, "lr_step": lr_step}


SCHEDULE = StepSchedule()
LATE_LR = StepSchedule(total=9000, window=3000, lr_step=7500)


@dataclass(frozen=True)
class FairArm(Arm):
    """An arm of the fair plan: its stage, protocols, seeds and step schedule."""

    stage: str = "main"
    protocols: tuple[str, ...] = ("P1", "P2")
    seeds: tuple[int, ...] = (0, 1, 2)
    schedule: StepSchedule | None = None   # None: the plan's SCHEDULE


def _alpha(scale: float, base: config_mod.BalanceConfig) -> tuple[str, ...]:
    return (f"balance.awc.alpha_s={scale * base.awc.alpha_s:g}", f"balance.awc.alpha_i={scale * base.awc.alpha_i:g}")


def _window(steps: int) -> tuple[str, ...]:
    return (f"schedule.window={steps}",)


def bench_arms() -> list[FairArm]:
    one = {"stage": "bench", "protocols": ("P1",), "seeds": (0,)}
    arms = [FairArm("rgb", ("rgb",), "none", **one)]
    arms += [FairArm(f"lidar-cap{c}", ("lidar",), "none", overrides=(f"model.lidar_cap={c}",), **one) for c in CAPS]
    return arms + [FairArm(m, (m,), "none", **one) for m in ("mmwave", "wifi")]


def alpha_arms(base: config_mod.BalanceConfig, choice: dict[str, Any] | None) -> list[FairArm]:
    one = {"stage": "alpha", "protocols": ("P1",), "seeds": (0,)}
    all4 = schema.MODALITIES
    arms = [FairArm(f"awc-x{s:g}", all4, "awc", overrides=_alpha(s, base), note=f"alpha x{s:g}", **one)
            for s in ALPHA_SCALES[1:]]
    arms.append(FairArm("awc-per-batch", all4, "awc", note="per-batch Fisher (chunk = batch), alpha x1",
                        overrides=("balance.awc.fisher_mode=per_batch", "balance.awc.fisher_chunk=64"), **one))
    if choice and "alpha_scale" in choice:
        s = choice["alpha_scale"]
        arms += [FairArm(f"awc-best-w{w}", all4, "awc", overrides=_alpha(s, base) + _window(w),
                         note=f"alpha x{s:g}, window {w} steps", **one) for w in WINDOWS]
    return arms


def main_arms(base: config_mod.BalanceConfig, choice: dict[str, Any] | None, cap: int) -> list[FairArm]:
    all4 = schema.MODALITIES
    arms = [FairArm("all-none", all4, "none"), FairArm("all-awc", all4, "awc", note="paper alpha, window 40 %"),
            FairArm("all-modality-level", all4, "modality-level"), FairArm("rgb+lidar", ("rgb", "lidar"), "none"),
            FairArm("rgb", ("rgb",), "none"), FairArm(f"lidar-cap{cap}", ("lidar",), "none"),
            FairArm("mmwave", ("mmwave",), "none"), FairArm("wifi", ("wifi",), "none")]
    if choice and "window" in choice:
        val = _alpha(choice["alpha_scale"], base) + _window(choice["window"])
        frozen = (f"balance.awc.alpha_s={choice['alpha_scale'] * base.awc.alpha_s:g}", "balance.awc.alpha_i=0",
                  "balance.awc.group_by=first_epoch", *_window(choice["window"]))
        arms += [FairArm("all-awc-val", all4, "awc", overrides=val, note="validated alpha and window"),
                 FairArm("all-awc-frozen", all4, "awc", overrides=frozen, note="groups of epoch 0 frozen, alpha_I 0"),
                 FairArm("all-uniform", all4, "uniform", overrides=val, note="validated alpha and window")]
        s2 = {"split": "S2", "protocols": ("P1",), "stage": "s2"}
        arms += [FairArm("all-none-S2", all4, "none", **s2),
                 FairArm("all-awc-val-S2", all4, "awc", overrides=val, **s2),
                 FairArm("all-awc-frozen-S2", all4, "awc", overrides=frozen, **s2)]
    lag = {"stage": "lag", "protocols": ("P1",), "seeds": (0,), "schedule": LATE_LR}
    return arms + [FairArm("all-none-late-lr", all4, "none", **lag), FairArm("all-awc-late-lr", all4, "awc", **lag)]


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def all_arms(args: argparse.Namespace) -> list[FairArm]:
    """Every arm the decisions so far allow: the bench, and the main rows that no decision touches
    (RGB and WiFi alone: neither the LiDAR cap nor a radar calibration changes their inputs) before
    ``bench.json``; the alpha stage and the other rows at fixed settings after it; the rows at the
    validated alpha and window after ``choice.json``. A name may appear in two stages (the bench's
    uni-modal P1 runs are main rows)."""
    out = Path(args.out)
    bench, choice = read_json(out / "bench.json"), read_json(out / "choice.json")
    base = config_mod.resolve(args.preset, args.config, overrides=args.set).balance
    arms = bench_arms()
    if bench and bench.get("cap"):
        return arms + alpha_arms(base, choice) + main_arms(base, choice, bench["cap"])
    return arms + [a for a in main_arms(base, None, 0) if a.name in UNDECIDED_ROWS]


UNDECIDED_ROWS = ("rgb", "wifi")   # main rows whose inputs no decision of the plan changes


def arm_names() -> set[str]:
    """Every arm name the plan can hold, whatever its decisions."""
    base, choice = config_mod.BalanceConfig(), {"alpha_scale": 1.0, "window": SCHEDULE.window}
    arms = bench_arms() + alpha_arms(base, choice)
    for cap in CAPS:
        arms += main_arms(base, choice, cap)
    return {a.name for a in arms}


def jobs(args: argparse.Namespace) -> list[tuple[str, FairArm, int]]:
    """(protocol, arm, seed) of the chosen stages in training order: stage by stage, seed by seed;
    a run two stages share is listed once."""
    stages = STAGES if args.stage == "all" else (args.stage,)
    arms = [a for a in all_arms(args) if a.stage in stages and (not args.arms or a.name in args.arms)]
    if not arms and args.stage != "bench":
        raise FileNotFoundError(f"--stage {args.stage}: nothing to plan yet; {args.out}/bench.json (the bench "
                                f"stage's decision) or choice.json (the alpha stage's) is missing")
    out, seen = [], set()
    for stage in stages:
        for seed in args.seeds:
            for p in args.protocols:
                for a in arms:
                    if a.stage == stage and p in a.protocols and seed in a.seeds and (p, a.name, seed) not in seen:
                        seen.add((p, a.name, seed))
                        out.append((p, a, seed))
    return out


def run_config(args: argparse.Namespace, arm: FairArm, protocol: str, seed: int) -> config_mod.Config:
    bench = read_json(Path(args.out) / "bench.json")
    cap = bench["cap"] if bench else None
    flags: dict[str, Any] = {
        "model": {"modalities": list(arm.modalities), "fusion": arm.fusion, "lidar_crop": False},
        "data": {"root": args.data, "protocol": protocol, "split": arm.split, "cache_dir": str(Path(args.out) / "cache"),
                 "max_train": MAX_TRAIN, "max_val": MAX_VAL, "validation": "sequences"},
        "balance": {"method": arm.balance}, "train": {"seed": seed},
        "out": str(run_dir(Path(args.out), protocol, arm, seed))}
    if cap is not None:
        flags["model"]["lidar_cap"] = cap
    sets = [o for o in arm.overrides if not o.startswith("schedule.")]
    return config_mod.resolve(args.preset, args.config, flags, [*args.set, *sets])


def arm_schedule(arm: FairArm) -> StepSchedule:
    o = dict(item.split("=", 1) for item in arm.overrides if item.startswith("schedule."))
    s = arm.schedule or SCHEDULE
    return StepSchedule(int(o.get("schedule.total", s.total)), int(o.get("schedule.window", s.window)),
                        int(o.get("schedule.lr_step", s.lr_step)))


def prepare(cfg: config_mod.Config, arm: FairArm, train, test) -> config_mod.Config:
    """The run's epochs, window and lr step from its step schedule and its own training frames."""
    from training.data import hold_out_validation, select_frames

    kept, _ = hold_out_validation(cfg.data, select_frames(cfg, train), test)
    spe = math.ceil(len(kept) / cfg.train.batch_size)
    e = arm_schedule(arm).in_epochs(spe)
    cfg.train.epochs, cfg.train.lr_step, cfg.balance.window = e["epochs"], e["lr_step"], e["window"]
    return cfg


# ------------------------------------------------------------------------------ the decisions
def last_validation(run: Path) -> float:
    """Last-epoch validation MPJPE (mm) of a finished run, on held-out training recordings only."""
    if not (run / "metrics.json").is_file():
        raise FileNotFoundError(f"{run} has not finished (no metrics.json)")
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    if last.get("val_set") != "sequences":
        raise ValueError(f"{run} validated on {last.get('val_set')!r}, not on held-out training recordings: "
                         f"a choice is never made on test frames")
    return float(last["val_mpjpe"])


def select_cap(out: Path, caps: tuple[int, ...] = CAPS) -> dict[str, Any]:
    """The LiDAR cap whose validation ratio LiDAR / RGB is nearest the paper's 1.05 inside
    0.79-1.31 (None when no cap lands inside), with every ratio, read off the bench runs' logs."""
    p1 = out / "P1"
    rgb = last_validation(p1 / "rgb-s0")
    ratios = {c: last_validation(p1 / f"lidar-cap{c}-s0") / rgb for c in caps if (p1 / f"lidar-cap{c}-s0").is_dir()}
    target, lo, hi = PAPER_RATIO["lidar"]
    inside = {c: r for c, r in ratios.items() if lo <= r <= hi}
    cap = min(inside, key=lambda c: abs(inside[c] - target)) if inside else None
    others = {m: last_validation(p1 / f"{m}-s0") / rgb for m in ("mmwave", "wifi") if (p1 / f"{m}-s0").is_dir()}
    return {"cap": cap, "rgb_val_mpjpe": rgb, "lidar_ratio": {str(c): r for c, r in ratios.items()},
            "ratio": others, "rule": f"LiDAR / RGB validation MPJPE nearest {target} inside {lo}-{hi}"}


def select_alpha(out: Path) -> dict[str, Any]:
    """The alpha scale (window = the schedule's) and then the window with the lowest validation
    MPJPE of AWC, P1 seed 0; the window step needs the ``awc-best-w*`` runs."""
    p1 = out / "P1"
    runs = {1.0: p1 / "all-awc-s0", **{s: p1 / f"awc-x{s:g}-s0" for s in ALPHA_SCALES[1:]}}
    vals = {s: last_validation(r) for s, r in runs.items()}
    scale = min(vals, key=vals.get)
    choice: dict[str, Any] = {"alpha_scale": scale, "alpha_val_mpjpe": {f"x{s:g}": v for s, v in vals.items()},
                              "plain_val_mpjpe": last_validation(p1 / "all-none-s0")}
    windows = {SCHEDULE.window: vals[scale]}
    if all((p1 / f"awc-best-w{w}-s0" / "metrics.json").is_file() for w in WINDOWS):
        windows.update({w: last_validation(p1 / f"awc-best-w{w}-s0") for w in WINDOWS})
        choice["window"] = min(windows, key=windows.get)
    choice["window_val_mpjpe"] = {str(w): v for w, v in windows.items()}
    return choice


def write_decision(path: Path, decision: dict[str, Any]) -> None:
    path.write_text(json.dumps(decision, indent=2, default=float) + "\n")


def plateau(log: list[dict[str, Any]]) -> float:
    """Validation change over the last fifth of the epochs, relative to its level (flat: ~0)."""
    k = max(2, len(log) // 5)
    v = np.array([e["val_mpjpe"] for e in log[-k:]])
    return float((v[-1] - v[0]) / v[0])
