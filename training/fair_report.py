"""The fair test's report (``training study --plan fair --report-only``), rebuilt from the run
logs and the two decision files alone: the bench (LiDAR cap, uni-modal ratios), the alpha / window
choice with the penalty's gradient scale, the main tables with paired differences per seed, the
cross-subject rows, the postponed-lr runs, convergence, and the training-speed check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training import fair_plan, study_report
from training.study_arms import NOTES_MARKER
from training.study_report import Runs, _ms, collect

FOUR = ("all-none", "all-awc", "all-awc-val", "all-awc-frozen", "all-uniform", "all-modality-level")


def _decisions(out: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return fair_plan.read_json(out / "bench.json"), fair_plan.read_json(out / "choice.json")


def bench_section(bench: dict[str, Any] | None) -> str:
    if not bench:
        return "(the bench stage has not been decided yet: `training study --plan fair --decide`)"
    target, lo, hi = fair_plan.PAPER_RATIO["lidar"]
    lines = ["| LiDAR cap (raw scan) | LiDAR / RGB, validation | inside 0.79–1.31 |", "|---|---|---|"]
    for cap, r in bench["lidar_ratio"].items():
        lines.append(f"| {cap}{' (chosen)' if int(cap) == bench['cap'] else ''} | {r:.3f} | "
                     f"{'yes' if lo <= r <= hi else 'no'} |")
    text = "\n".join(lines) + f"\n\nRule: {bench['rule']}. RGB alone: {bench['rgb_val_mpjpe']:.1f} mm on validation."
    for m, r in bench.get("ratio", {}).items():
        t, a, b = fair_plan.PAPER_RATIO[m]
        text += (f"\n{m} / RGB: {r:.2f} (paper {t}, band {a}–{b}: "
                 f"{'inside' if a <= r <= b else 'above' if r > b else 'below'}).")
    return text


def choice_section(choice: dict[str, Any] | None) -> str:
    if not choice:
        return "(the alpha stage has not been decided yet)"
    rows = ["| AWC, P1 seed 0 | validation MPJPE (mm) |", "|---|---|",
            f"| plain | {choice['plain_val_mpjpe']:.1f} |"]
    rows += [f"| alpha {k}{' (chosen)' if float(k[1:]) == choice['alpha_scale'] else ''} | {v:.1f} |"
             for k, v in choice["alpha_val_mpjpe"].items()]
    rows += [f"| window {w} steps{' (chosen)' if int(w) == choice.get('window') else ''} | {v:.1f} |"
             for w, v in choice.get("window_val_mpjpe", {}).items()]
    return "\n".join(rows)


def gradient_scale(found: Runs) -> str:
    """The penalty's gradient over the task's, per group, mean over the window epochs (seed 0)."""
    lines = ["| run | superior: |∇L_AWC| / |∇L_task| | inferior | window epochs |", "|---|---|---|---|"]
    for name in sorted(found):
        runs = [r for r in found[name] if r["seed"] == 0]
        if not runs:
            continue
        ratios = [e["penalty_grad_ratio"] for e in runs[0]["log"] if e.get("penalty_grad_ratio")]
        if ratios:
            cell = {g: _ms([r[g] for r in ratios if g in r], 3) for g in ("S", "I")}
            lines.append(f"| {name} | {cell['S']} | {cell['I']} | {len(ratios)} |")
    return "\n".join(lines) if len(lines) > 2 else "(no AWC run has finished yet)"


def mechanism(args: argparse.Namespace, found: Runs, cap: int | None) -> str:
    """Encoder probes (``<out>/encoder-probe.json``, ``training probe``) and, for the AWC runs, the
    share of window steps each modality spent in the constrained superior group."""
    from training import probe

    path = Path(args.out) / "encoder-probe.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    text = probe.table(rows) if rows else "(no encoder probe yet: `training probe RUN ... --json OUT/encoder-probe.json`)"
    arms = [a for a in fair_plan.all_arms(args) if a.name in FOUR[:4]] if cap else []
    return text + "\n\nShapley scores of the final models and the superior share in AWC's window:\n\n" + \
        study_report.shapley_table(found, arms) if arms else text


def main_table(found: Runs, names: list[str]) -> str:
    lines = ["| run | seeds | test MPJPE (mm) | PA-MPJPE (mm) | last validation (mm) | steps |", "|---|---|---|---|---|---|"]
    for name in names:
        runs = found.get(name, [])
        if runs:
            steps = sorted({sum(e["steps"] for e in r["log"]) for r in runs})
            lines.append(f"| {name} | {len(runs)} | {_ms([r['mpjpe'] for r in runs])} | "
                         f"{_ms([r['pa_mpjpe'] for r in runs])} | {_ms([r['log'][-1]['val_mpjpe'] for r in runs])} | "
                         f"{'/'.join(map(str, steps))} |")
    return "\n".join(lines)


def paired(found: Runs, base: str, names: list[str]) -> str:
    ref = {r["seed"]: r for r in found.get(base, [])}
    lines = [f"| run − {base} | per seed (mm) | mean ± sd | PA mean ± sd | better in |", "|---|---|---|---|---|"]
    for name in names:
        pairs = [(r, ref[r["seed"]]) for r in found.get(name, []) if r["seed"] in ref]
        if not pairs or name == base:
            continue
        d = [r["mpjpe"] - b["mpjpe"] for r, b in pairs]
        dpa = [r["pa_mpjpe"] - b["pa_mpjpe"] for r, b in pairs]
        per = ", ".join(f"s{r['seed']}: {x:+.1f}" for (r, _), x in zip(pairs, d, strict=True))
        lines.append(f"| {name} | {per} | {_ms(d)} | {_ms(dpa)} | {sum(x < 0 for x in d)}/{len(d)} |")
    return "\n".join(lines)


def convergence(found: Runs) -> str:
    """Plain runs: validation change over the last fifth of the epochs (flat means converged)."""
    vals = {f"{name}-s{r['seed']}": fair_plan.plateau(r["log"]) for name in ("all-none", "all-none-S2")
            for r in found.get(name, []) if len(r["log"]) >= 5}
    if not vals:
        return "(no plain run has finished yet)"
    return ", ".join(f"{k} {100 * v:+.1f} %" for k, v in vals.items())


def lag_section(found: Runs) -> str:
    rows = []
    for name in ("all-none-late-lr", "all-awc-late-lr", "all-none", "all-awc"):
        r = [x for x in found.get(name, []) if x["seed"] == 0]
        if r:
            curve = [e["val_mpjpe"] for e in r[0]["log"]]
            marks = {k: curve[k] for k in (9, 14, 19, 24, 29) if k < len(curve)}
            rows.append(f"| {name} | {r[0]['mpjpe']:.1f} | " + ", ".join(f"e{k + 1}: {v:.1f}" for k, v in marks.items())
                        + " |")
    head = "| run (P1 seed 0) | test MPJPE (mm) | validation MPJPE after epoch |\n|---|---|---|\n"
    return head + "\n".join(rows) if rows else "(the lag stage has not run yet)"


def write_report(args: argparse.Namespace, path: Path) -> str:
    out = Path(args.out)
    bench, choice = _decisions(out)
    arms = fair_plan.all_arms(args)
    by_protocol = {p: collect(out, p, arms) for p in ("P1", "P2")}
    cap = bench["cap"] if bench else None
    rows = [*FOUR, "rgb+lidar", "rgb", f"lidar-cap{cap}", "mmwave", "wifi"]
    notes = path.read_text().split(NOTES_MARKER, 1)[1] if path.exists() and \
        NOTES_MARKER in path.read_text() else ""
    s = fair_plan.SCHEDULE
    sections = []
    for p in ("P1", "P2"):
        found = by_protocol[p]
        sections.append(f"### {p}\n\n{main_table(found, rows)}\n\nPaired against plain training, per seed "
                        f"(negative = better than plain):\n\n{paired(found, 'all-none', [*FOUR[1:], 'rgb+lidar'])}\n\n"
                        f"AWC at the validated alpha against the baselines, per seed:\n\n"
                        f"{paired(found, 'all-awc-val', ['all-uniform', 'all-modality-level', 'all-awc-frozen'])}")
    s2 = ["all-none-S2", "all-awc-val-S2", "all-awc-frozen-S2"]
    text = f"""# Study results: the fair test of AWC

Generated by `training study --plan fair` from the run logs under `{args.out}/` and its decision files
(`bench.json`, `choice.json`). This file was written by:

```bash
{args.command}
```

Setup: dataset `{args.data}`, the `{args.preset}` preset on the MM-Fi toolbox's pipeline (the raw LiDAR
scan, floor and walls included, sampled to the cap the bench chose: {cap or 'not chosen yet'} points), every
frame, {fair_plan.MAX_TRAIN} evenly spaced training frames of which whole recordings (10 %, whole subjects
on S2) are held out to validate, batch 64, Adam 1e-3. Schedule in optimiser steps: {s.total} steps
({s.total / fair_plan.PAPER_STEPS:.0%} of the paper's ~{fair_plan.PAPER_STEPS}), AWC's window the first
{s.window} ({s.window / s.total:.0%}, the paper's 40 %), lr x0.1 after {s.lr_step}, so {s.lr_step - s.window}
full-rate steps follow the window. Every choice is made on the held-out validation recordings; the
tables report the last-epoch model on {args.test_frames} evenly spaced test frames.

## Decisions

The bench (P1, seed 0, each modality alone):

{bench_section(bench)}

AWC's alpha (x the paper's 20k / 10k) and window, P1 seed 0:

{choice_section(choice)}

The penalty's gradient against the task loss's on each group's encoders (what alpha means here):

{gradient_scale(by_protocol['P1'])}

## Mechanism (P1)

{mechanism(args, by_protocol['P1'], cap)}

## Main table

{(chr(10) * 2).join(sections)}

## Cross-subject (S2, P1)

{main_table(by_protocol['P1'], s2)}

{paired(by_protocol['P1'], 'all-none-S2', s2)}

## Lag or harm: the lr drop postponed

{lag_section(by_protocol['P1'])}

## Convergence and speed

Plain training, validation change over the last fifth of the run: {convergence(by_protocol['P1'])}.

Late epochs against early ones: {study_report.speed_check(by_protocol)}

{NOTES_MARKER}{notes}"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text

