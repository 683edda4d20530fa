"""``training fit``: train a model (AWC or a baseline) on MM-Fi or a generated MM-Fi-format dataset.

    training fit --preset small --data data/mmfi-bench --out runs/awc --balance awc
    training fit ... --out runs/awc --resume       # continue that run; --overwrite replaces it
    torchrun --nproc_per_node 2 -m training fit --preset small ...      # data parallel
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sensors.core.cli_util import add_list_argument, add_set_argument
from sensors.core.settings import ConfigError
from training import config as config_mod
from training.config import BALANCES, FUSIONS

log = logging.getLogger(__name__)

# What a run writes into its folder (training.trainer, training.plots): a folder holding any of these
# holds a run, which `fit` neither mixes with nor replaces unless told (--resume, --overwrite).
RUN_FILES = ("config.yaml", "log.jsonl", "checkpoint.pt", "best.pt", "metrics.json", "balancer.pt",
             "balancer.pt.tmp")
RUN_DIRS = ("plots", "tensorboard")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections model, data, balance, train)")
    p.add_argument("--preset", help="base preset from training/configs: small, paper, tiny")
    p.add_argument("--data", help="MM-Fi-format dataset root (data.root)")
    p.add_argument("--out", help="run directory, e.g. runs/awc-small (default: runs/<date>-<time>-<balance>)")
    p.add_argument("--protocol", choices=("P1", "P2", "P3"))
    p.add_argument("--split", choices=("S1", "S2", "S3"))
    p.add_argument("--fusion", choices=FUSIONS)
    p.add_argument("--balance", choices=BALANCES)
    add_list_argument(p, "--modalities", metavar="M,M", help="subset of rgb,lidar,mmwave,wifi (others always absent)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default: the GPU if torch sees one), cpu, cuda or cuda:N (train.device)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also log to TensorBoard event files in <out>/tensorboard (the tensorboard extra)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its checkpoint.pt (same config; train.epochs may grow)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: its outputs (best.pt, log.jsonl, plots, ...) are deleted first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set_argument(p, "train.lr=3e-4")


def flags_from_args(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "balance": {}, "train": {}}
    for attr, (section, key) in {"data": ("data", "root"), "protocol": ("data", "protocol"),
                                 "split": ("data", "split"), "fusion": ("model", "fusion"),
                                 "balance": ("balance", "method"), "modalities": ("model", "modalities"),
                                 "epochs": ("train", "epochs"), "seed": ("train", "seed"),
                                 "device": ("train", "device"), "tensorboard": ("train", "tensorboard")}.items():
        value = getattr(args, attr, None)
        if value is not None:
            flags[section][key] = value
    if args.out:
        flags["out"] = args.out
    return flags


def run_outputs(out: Path) -> list[str]:
    """The names of a run's outputs present in ``out`` (empty: no run there)."""
    return [name for name in (*RUN_FILES, *RUN_DIRS) if (out / name).exists()]


def claim_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds a run unless --resume or --overwrite says what to do with it; with
    --overwrite, delete that run's outputs first (rank 0 only under torchrun), so nothing of the
    old run is left beside the new one. Every rank checks before the process group forms, so
    before rank 0 writes anything."""
    found = run_outputs(out)
    if not found or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, --overwrite to "
            "replace it, or choose another --out")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    log.warning("--overwrite: deleted the previous run's %s in %s", ", ".join(found), out)


def run(args: argparse.Namespace) -> int:
    from training.trainer import fit

    cfg = config_mod.resolve(args.preset, args.config, flags_from_args(args), args.set)
    if cfg.out == config_mod.Config().out and (args.resume or args.overwrite):
        raise ConfigError(f"--{'resume' if args.resume else 'overwrite'} needs the run folder: pass --out RUN")
    if cfg.out == config_mod.Config().out:
        # No run directory given anywhere: a fresh timestamped one, never a silent overwrite.
        cfg.out = str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.balance.method}")
        log.info("no --out given: this run goes to %s", cfg.out)
    claim_run_folder(Path(cfg.out), resume=args.resume, overwrite=args.overwrite)
    result = fit(cfg, resume=args.resume, progress=not args.no_progress)
    if result:
        print(f"{cfg.out}: test MPJPE {result['mpjpe']:.2f} mm, PA-MPJPE {result['pa_mpjpe']:.2f} mm "
              f"({result['frames']} frames); Shapley {result['shapley_fraction']:.1%} and Fisher "
              f"{result['fisher_fraction']:.1%} of training time")
        val = result["validation"]
        n = len(val.get("sequences", []))
        where = (f"{n} held-out training recording{'s' if n != 1 else ''}" if val["set"] == "sequences"
                 else "the test subset")
        print(f"best.pt: epoch {result['best_epoch']}, validation MPJPE {result['best_val_mpjpe']:.2f} mm on {where} "
              f"({val['frames']} frames)")
    return 0
