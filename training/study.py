"""``training study``: the comparison of AWC with plain training and the paper's baselines.

    training study --data data/mmfi-study --out runs/study              # everything, resumable
    training study --data data/mmfi-study --out runs/study --report-only
    training study --plan fair --stage bench --data data/mmfi-study --out runs/fair

Two plans (``training.study_arms``, ``training.fair_plan``):

* ``paper-proportions`` (the default; ``results/study``). Main table (``--group main``, every seed,
  protocols P1 and P2, split S1, concat fusion): uni-modal rgb / lidar / mmwave / wifi, rgb+lidar,
  and all four modalities with each balancing method. Sweeps (``--group sweeps``, the first seed,
  ``--sweep-protocol`` P1): the alpha grid, the learning window K, attention fusion, S2, SGD +
  momentum for OGM-GE, groups at theta0 and toolbox-style frame selection.
* ``fair`` (``results/fair``): the paper's pipeline and a budget in steps that lets AWC work, in
  stages (``--stage bench|alpha|main|s2|lag|all``) whose decisions are read off held-out
  validation recordings (``--decide``).

Every run is ``<out>/<protocol>/<arm>-s<seed>``; a run with ``metrics.json`` is never trained
again, an interrupted one continues from its last finished epoch, and a run being trained is
claimed (``claim.json`` with the process id), so several processes started with the same command
share the work. The report (``--report``) is rebuilt from the run logs alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sensors.core import schema
from sensors.core.cli_util import add_list_argument, add_set_argument
from sensors.core.settings import ConfigError
from training import fair_plan, study_arms
from training.study_arms import NOTES_MARKER, Arm

log = logging.getLogger(__name__)
PLANS = ("paper-proportions", "fair")

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


def planned(args: argparse.Namespace) -> list[tuple[str, Arm, int]]:
    """(protocol, arm, seed) in training order for ``args.plan``."""
    return fair_plan.jobs(args) if args.plan == "fair" else study_arms.planned(args)


def run_config(args: argparse.Namespace, arm: Arm, protocol: str, seed: int):
    plan = fair_plan if args.plan == "fair" else study_arms
    return plan.run_config(args, arm, protocol, seed)


def data_key(cfg) -> tuple:
    """What the loaded training and test frames depend on (one key in memory at a time)."""
    d, m = cfg.data, cfg.model
    return (d.root, d.protocol, d.split, d.split_seed, d.max_train, m.rgb_window, m.lidar_cap, m.lidar_crop,
            m.mmwave_cap)


def run_all(args: argparse.Namespace) -> None:
    from training.data import evenly_spaced, load_splits
    from training.trainer import fit

    ensure_dataset(Path(args.data))
    jobs = planned(args)
    log.info("study (%s): %d runs planned (%d already finished)", args.plan, len(jobs),
             sum((study_arms.run_dir(Path(args.out), p, a, s) / "metrics.json").exists() for p, a, s in jobs))
    loaded: dict[tuple, Any] = {}
    for i, (protocol, arm, seed) in enumerate(jobs):
        out = study_arms.run_dir(Path(args.out), protocol, arm, seed)
        if (out / "metrics.json").exists() or not _claim(out):
            continue
        cfg = run_config(args, arm, protocol, seed)
        key = data_key(cfg)
        if key not in loaded:
            loaded.clear()  # one protocol/split in memory at a time
            full = run_config(args, arm, protocol, seed)
            full.model.modalities = schema.MODALITIES  # one read serves every arm
            train, test = load_splits(full, progress=not args.no_progress)
            loaded[key] = (train, test.take(evenly_spaced(len(test), args.test_frames)))
        train, test = loaded[key]
        if args.plan == "fair":
            cfg = fair_plan.prepare(cfg, arm, only(train, cfg.model.modalities), test)
        t0 = time.perf_counter()
        log.info("[%d/%d] %s %s seed %d -> %s", i + 1, len(jobs), protocol, arm.name, seed, out)
        # an interrupted run continues from its last finished epoch (checkpoint.pt, balancer.pt)
        fit(cfg, only(train, cfg.model.modalities), only(test, cfg.model.modalities), resume=True,
            progress=not args.no_progress)
        (out / "claim.json").unlink(missing_ok=True)
        log.info("%s %s seed %d done in %.0fs", protocol, arm.name, seed, time.perf_counter() - t0)


def decide(args: argparse.Namespace) -> int:
    """Write the fair plan's next decision from the finished runs' validation logs."""
    out = Path(args.out)
    if not (out / "bench.json").is_file() or args.decide == "cap":
        decision, path = fair_plan.select_cap(out), out / "bench.json"
        if decision["cap"] is None:
            print(json.dumps(decision, indent=2, default=float))
            log.error("no LiDAR cap lands inside the paper's band: bench.json not written")
            return 1
    else:
        decision, path = fair_plan.select_alpha(out), out / "choice.json"
    fair_plan.write_decision(path, decision)
    print(f"{path}:\n{json.dumps(decision, indent=2, default=float)}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", default="paper-proportions", choices=PLANS,
                   help="paper-proportions (results/study) or fair (the paper's pipeline, results/fair)")
    p.add_argument("--stage", default="all", choices=(*fair_plan.STAGES, "all"), help="fair plan: stage to run")
    p.add_argument("--decide", nargs="?", const="next", choices=("next", "cap", "alpha"),
                   help="fair plan: write the next decision (bench.json, then choice.json) from validation logs")
    p.add_argument("--data", default="data/mmfi-study", help="MM-Fi-format dataset with the P1 and P2 actions")
    p.add_argument("--out", default="runs/study", help="where the runs go")
    p.add_argument("--preset", default="small")
    p.add_argument("--config", help="YAML applied on top of the preset")
    p.add_argument("--epochs", type=int, default=30,
                   help="paper-proportions: epochs per run; K = 0.4x, lr step = 0.6x this")
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


def check_args(args: argparse.Namespace) -> str | None:
    """A usage error in the plan's arguments (None: fine)."""
    unknown = sorted(set(args.protocols) - set(schema.PROTOCOLS))
    if unknown:
        return f"--protocols: {', '.join(unknown)} not among {', '.join(schema.PROTOCOLS)}"
    if args.arms:
        known = fair_plan.arm_names() if args.plan == "fair" else {a.name for a in study_arms.all_arms(args)}
        bad = sorted(set(args.arms) - known)
        if bad:
            return f"--arms: unknown {', '.join(bad)}; known arms of plan {args.plan}: {', '.join(sorted(known))}"
    if args.decide and args.plan != "fair":
        return "--decide belongs to the fair plan: add --plan fair"
    return None


def run(args: argparse.Namespace) -> int:
    error = check_args(args)
    if error:
        raise ConfigError(error)   # the CLI's one-line usage error, exit code 2
    if args.decide:
        return decide(args)
    args.report = args.report or str(Path(args.out) / "results.md")
    args.figure = args.figure or str(Path(args.report).parent / "figures" / "study_shapley.png")
    args.command = "training " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.report_only:
        run_all(args)
    if args.plan == "fair":
        from training import fair_report

        text = fair_report.write_report(args, Path(args.report))
    else:
        from training import study_report

        text = study_report.write_report(args, Path(args.report), Path(args.figure))
    print(text.split(NOTES_MARKER)[0])
    return 0
