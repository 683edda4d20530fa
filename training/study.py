"""``training study``: the comparison of AWC with plain training and the paper's baselines.

    training study --data data/mmfi-study --out runs/study              # everything, resumable
    training study --data data/mmfi-study --out runs/study --report-only

Main table (``--group main``, every seed, protocols P1 and P2, split S1, concat fusion):
uni-modal rgb / lidar / mmwave / wifi, rgb+lidar, and all four modalities with each balancing
method (none, awc, ogm-ge, g-blending, agm, modality-level, uniform). Sweeps (``--group sweeps``,
the first seed, ``--sweep-protocol`` P1): the alpha_S / alpha_I grid (Table 4 analogue), the learning
window K (Figure 6 analogue), attention fusion, the cross-subject split S2, SGD + momentum for
OGM-GE, and toolbox-style frame selection.

Every run is ``<out>/<protocol>/<arm>-s<seed>``; a run with ``metrics.json`` is never trained
again, an interrupted one continues from its last finished epoch, and a run being trained is claimed (``claim.json`` with the process id), so several
processes started with the same command share the work. The report (``--report``) is rebuilt
from the run logs alone: accuracy per protocol with mean ± std over seeds, per-seed paired
differences against plain training, contributions, the sweeps, overheads, and a plot of the
per-modality Shapley scores over the epochs, plain vs AWC.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sensors import schema
from sensors.cli_util import add_list_argument, add_set_argument
from training import config as config_mod

log = logging.getLogger(__name__)

NOTES_MARKER = "<!-- notes: everything below this line is kept when the study rewrites the file -->"
METHODS = ("none", "awc", "ogm-ge", "g-blending", "agm", "modality-level", "uniform")

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
                "balance": {"window": self.window, "ogm_window": self.ogm_window}}


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
        extra = [f"groups at {o['balance.group_by']}"] if "balance.group_by" in o else []
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
        out.append(Arm(f"awc-aS{a_s:g}-aI{a_i:g}", all4, "awc", overrides=(f"balance.alpha_s={a_s}",
                                                                         f"balance.alpha_i={a_i}"),
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
            Arm("all-awc-groups-theta0", all4, "awc", overrides=("balance.group_by=theta0",), group="grouping"),
            Arm("all-none-complete", all4, "none", overrides=("data.frames=complete",), group="frames"),
            Arm("all-awc-complete", all4, "awc", overrides=("data.frames=complete",), group="frames")]
    return out


def _base_config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.resolve(args.preset, args.config, Schedule(args.epochs).overrides(), args.set)


def all_arms(args: argparse.Namespace) -> list[Arm]:
    base = _base_config(args)
    return main_arms() + sweep_arms(base.balance.alpha_s, base.balance.alpha_i, base.balance.window,
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


def _claim(out: Path) -> bool:
    """Claim a run for this process (False if another live process holds it)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "claim.json"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(json.loads(path.read_text())["pid"])
            os.kill(pid, 0)
            return pid == os.getpid()
        except (ValueError, KeyError, json.JSONDecodeError, ProcessLookupError, PermissionError):
            path.unlink(missing_ok=True)  # a dead claim: take it over
            return _claim(out)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": os.uname().nodename, "started": time.time()}, f)
    return True


def ensure_dataset(root: Path) -> None:
    if root.is_dir() and any(root.glob("E0*/S*/A*")):
        return
    raise FileNotFoundError(f"{root} holds no MM-Fi-format sequences: generate one first, e.g. `sensors simulate "
                            f"--preset bench --actions <P1 and P2 actions> --out {root} --workers 2`")


def only(split, modalities: tuple[str, ...]):
    """The split with the presence of modalities outside ``modalities`` set to 0 (tensors and any
    memory-mapped inputs shared)."""
    import dataclasses

    import torch

    enabled = np.array([m in modalities for m in schema.MODALITIES], np.float32)
    tensors = {**split.tensors, "presence": split.tensors["presence"] * torch.from_numpy(enabled)}
    return dataclasses.replace(split, tensors=tensors)


def run_all(args: argparse.Namespace) -> None:
    from training.data import evenly_spaced, load_splits
    from training.trainer import fit

    ensure_dataset(Path(args.data))
    jobs = planned(args)
    log.info("study: %d runs planned (%d already finished)", len(jobs),
             sum((run_dir(Path(args.out), p, a, s) / "metrics.json").exists() for p, a, s in jobs))
    loaded: dict[tuple, Any] = {}
    for i, (protocol, arm, seed) in enumerate(jobs):
        out = run_dir(Path(args.out), protocol, arm, seed)
        if (out / "metrics.json").exists() or not _claim(out):
            continue
        cfg = run_config(args, arm, protocol, seed)
        key = (protocol, arm.split, cfg.data.max_train)
        if key not in loaded:
            loaded.clear()  # one protocol/split in memory at a time
            full = run_config(args, arm, protocol, seed)
            full.model.modalities = schema.MODALITIES  # one read serves every arm
            train, test = load_splits(full, progress=not args.no_progress)
            loaded[key] = (train, test.take(evenly_spaced(len(test), args.test_frames)))
        train, test = loaded[key]
        t0 = time.perf_counter()
        log.info("[%d/%d] %s %s seed %d -> %s", i + 1, len(jobs), protocol, arm.name, seed, out)
        # an interrupted run continues from its last finished epoch (checkpoint.pt, balancer.pt)
        fit(cfg, only(train, cfg.model.modalities), only(test, cfg.model.modalities), resume=True,
            progress=not args.no_progress)
        (out / "claim.json").unlink(missing_ok=True)
        log.info("%s %s seed %d done in %.0fs", protocol, arm.name, seed, time.perf_counter() - t0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="data/mmfi-study", help="MM-Fi-format dataset with the P1 and P2 actions")
    p.add_argument("--out", default="runs/study", help="where the runs go")
    p.add_argument("--preset", default="small")
    p.add_argument("--config", help="YAML applied on top of the preset")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run; K = 0.4x, lr step = 0.6x this")
    add_list_argument(p, "--seeds", item_type=int, default=[0, 1, 2], metavar="N", help="seeds (default 0,1,2)")
    add_list_argument(p, "--protocols", default=["P1", "P2"], metavar="P",
                      help="main table protocols, in training order (default P1,P2)")
    p.add_argument("--sweep-protocol", default="P1", choices=sorted(schema.PROTOCOLS), help="protocol of the sweeps")
    p.add_argument("--group", default="all", choices=("main", "sweeps", "all"))
    add_list_argument(p, "--arms", default=None, metavar="ARM", help="only these arms (names as in the report)")
    p.add_argument("--test-frames", type=int, default=4000,
                   help="evaluate on this many evenly spaced test frames (0 = all)")
    p.add_argument("--report", default=None, metavar="FILE", help="results report (default OUT/results.md)")
    p.add_argument("--figure", default=None, metavar="FILE",
                   help="Shapley-over-epochs plot (default beside the report, figures/study_shapley.png)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished runs")
    p.add_argument("--no-progress", action="store_true")
    add_set_argument(p, "train.lr=3e-4")


def run(args: argparse.Namespace) -> int:
    from training import study_report

    unknown = sorted(set(args.protocols) - set(schema.PROTOCOLS))
    if unknown:
        log.error("--protocols: %s not among %s", ", ".join(unknown), ", ".join(schema.PROTOCOLS))
        return 2
    args.report = args.report or str(Path(args.out) / "results.md")
    args.figure = args.figure or str(Path(args.report).parent / "figures" / "study_shapley.png")
    args.command = "training " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.report_only:
        run_all(args)
    text = study_report.write_report(args, Path(args.report), Path(args.figure))
    print(text.split(NOTES_MARKER)[0])
    return 0
