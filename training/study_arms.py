"""The study's plans: which runs (arms x protocols x seeds) it trains and with which config.

``paper-proportions`` (``results/study``): the comparison at the paper's proportions (30 epochs,
K = 0.4 and the lr step at 0.6 of the run), cropped LiDAR, every baseline, sweeps. The ``fair``
plan (the paper's pipeline and a budget that lets AWC work) is in ``training.fair_plan``.
Nothing here trains or reads data: ``training.study`` runs the jobs, ``training.study_report``
reads them back.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensors.core import schema
from training import config as config_mod

NOTES_MARKER = "<!-- notes: everything below this line is kept when the study rewrites the file -->"
METHODS = config_mod.BALANCES   # the main table's four-modality rows, in this order

# Paper numbers (MM-Fi P1, mm): Table 1 (fusion +- AWC) and Table 3 (uni-modal).
PAPER = {
    "rgb": (63.6, None), "lidar": (67.0, None), "mmwave": (102.9, None), "wifi": (166.9, None),
    "rgb+lidar": (52.93, 34.96), "all-none": (53.87, 35.09), "all-awc": (51.16, 34.46),
    "all-attention-none": (53.35, 35.20), "all-attention-awc": (51.29, 34.65),
}


@dataclass(frozen=True)
class Schedule:
    """The paper's proportions (50 epochs, K = 20, lr x0.1 at 30) at ``epochs``."""

    epochs: int = 30

    @property
    def window(self) -> int:
        return max(1, round(0.4 * self.epochs))

    @property
    def lr_step(self) -> int:
        return max(1, round(0.6 * self.epochs))

    @property
    def ogm_window(self) -> int:  # OGM-GE's reference setting modulates the first half of training
        return max(1, round(0.5 * self.epochs))

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {"train": {"epochs": self.epochs, "lr_step": self.lr_step},
                "balance": {"window": self.window, "ogm_ge": {"window": self.ogm_window}}}


@dataclass(frozen=True)
class Arm:
    name: str
    modalities: tuple[str, ...]
    balance: str
    fusion: str = "concat"
    split: str = "S1"
    overrides: tuple[str, ...] = ()  # section.key=value on top of the study's config
    group: str = "main"
    note: str = ""  # the setting a sweep row shows; empty: derived from the arm (``setting``)

    @property
    def setting(self) -> str:
        """What sets the arm apart, for the report: split, fusion, optimiser and any grouping or
        frame selection, read off its fields and overrides (or the explicit ``note``)."""
        if self.note:
            return self.note
        o = dict(item.split("=", 1) for item in self.overrides)
        optimiser = o.get("train.optimizer", "adam")
        if optimiser == "sgd":
            optimiser += f" (lr {o.get('train.lr', '?')}, momentum {o.get('train.momentum', 0.9)})"
        extra = [f"groups at {o['balance.awc.group_by']}"] if "balance.awc.group_by" in o else []
        if o.get("data.frames") == "complete":
            extra.append("complete frames only (train and test)")
        return ", ".join([f"{self.split} {self.fusion} {optimiser}", *extra])


def main_arms() -> list[Arm]:
    out = [Arm(f"all-{b}", schema.MODALITIES, b) for b in METHODS]
    out.append(Arm("rgb+lidar", ("rgb", "lidar"), "none"))
    out += [Arm(m, (m,), "none") for m in schema.MODALITIES]
    return out


def sweep_arms(alpha_s: float, alpha_i: float, window: int, epochs: int) -> list[Arm]:
    all4, out = schema.MODALITIES, []
    grid = [(0.0, alpha_i), (alpha_s, 0.0), (0.1 * alpha_s, 0.1 * alpha_i), (10 * alpha_s, 10 * alpha_i),
            (alpha_i, alpha_s), (alpha_s, alpha_s)]
    for a_s, a_i in grid:
        out.append(Arm(f"awc-aS{a_s:g}-aI{a_i:g}", all4, "awc", overrides=(f"balance.awc.alpha_s={a_s}",
                                                                         f"balance.awc.alpha_i={a_i}"),
                       group="alpha", note=f"alpha_S={a_s:g}, alpha_I={a_i:g}"))
    for k in sorted({max(1, round(f * epochs)) for f in (0.1, 0.2, 0.6, 1.0)} - {window}):
        out.append(Arm(f"awc-K{k}", all4, "awc", overrides=(f"balance.window={k}",), group="window",
                       note=f"K={k}"))
    out += [Arm("all-attention-none", all4, "none", fusion="attention", group="attention"),
            Arm("all-attention-awc", all4, "awc", fusion="attention", group="attention"),
            Arm("all-none-S2", all4, "none", split="S2", group="s2"),
            Arm("all-awc-S2", all4, "awc", split="S2", group="s2"),
            Arm("all-none-sgd", all4, "none", overrides=("train.optimizer=sgd", "train.lr=0.01"), group="sgd"),
            Arm("all-ogm-ge-sgd", all4, "ogm-ge", overrides=("train.optimizer=sgd", "train.lr=0.01"), group="sgd"),
            Arm("all-awc-groups-theta0", all4, "awc", overrides=("balance.awc.group_by=theta0",), group="grouping"),
            Arm("all-none-complete", all4, "none", overrides=("data.frames=complete",), group="frames"),
            Arm("all-awc-complete", all4, "awc", overrides=("data.frames=complete",), group="frames")]
    return out


def base_config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.resolve(args.preset, args.config, Schedule(args.epochs).overrides(), args.set)


def all_arms(args: argparse.Namespace) -> list[Arm]:
    base = base_config(args)
    return main_arms() + sweep_arms(base.balance.awc.alpha_s, base.balance.awc.alpha_i, base.balance.window,
                                    base.train.epochs)


def run_dir(out: Path, protocol: str, arm: Arm, seed: int) -> Path:
    return out / protocol / f"{arm.name}-s{seed}"


def run_config(args: argparse.Namespace, arm: Arm, protocol: str, seed: int) -> config_mod.Config:
    flags = Schedule(args.epochs).overrides()
    # validation=test: the study was started training on every training frame and reports the
    # last-epoch model on the test subset (no selection enters its tables); its runs must stay
    # comparable, so no recordings are held out of training here
    flags["data"] = {"root": args.data, "protocol": protocol, "split": arm.split,
                     "cache_dir": str(Path(args.out) / "cache"), "validation": "test"}
    flags["model"] = {"modalities": list(arm.modalities), "fusion": arm.fusion}
    flags["balance"]["method"] = arm.balance
    flags["train"]["seed"] = seed
    flags["out"] = str(run_dir(Path(args.out), protocol, arm, seed))
    return config_mod.resolve(args.preset, args.config, flags, [*args.set, *arm.overrides])


def planned(args: argparse.Namespace) -> list[tuple[str, Arm, int]]:
    """(protocol, arm, seed) in training order: the main table seed by seed, then the sweeps."""
    chosen = [a for a in all_arms(args) if (not args.arms or a.name in args.arms)
              and (a.group == "main" and args.group in ("main", "all") or a.group != "main" and
                   args.group in ("sweeps", "all"))]
    jobs = [(p, a, s) for s in args.seeds for p in args.protocols for a in chosen if a.group == "main"]
    jobs += [(args.sweep_protocol, a, args.seeds[0]) for a in chosen if a.group != "main"]
    return jobs
