"""The study's report, rebuilt from the run logs alone (``training study --report-only``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sensors.core import schema
from training import study_arms

Runs = dict[str, list[dict[str, Any]]]  # arm name -> finished runs (metrics + log + seed)


def collect(out: Path, protocol: str, arms: list[study_arms.Arm]) -> Runs:
    found: Runs = {}
    for arm in {a.name: a for a in arms}.values():   # an arm of two stages (the bench's RGB is a main row) once
        for path in sorted((out / protocol).glob(f"{arm.name}-s*/metrics.json")):
            seed = path.parent.name[len(arm.name) + 2:]
            if not seed.isdigit():
                continue
            m = json.loads(path.read_text())
            m["seed"] = int(seed)
            m["log"] = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
            found.setdefault(arm.name, []).append(m)
    return found


def _ms(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _paper(name: str, protocol: str) -> str:
    p = PAPER_P1.get(name) if protocol == "P1" else None
    if p is None:
        return "—"
    return f"{p[0]:.2f} / {p[1]:.2f}" if p[1] is not None else f"{p[0]:.1f} / —"


PAPER_P1 = study_arms.PAPER


def accuracy_table(found: Runs, arms: list[study_arms.Arm], protocol: str) -> str:
    lines = ["| run | modalities | balance | seeds | MPJPE (mm) | PA-MPJPE (mm) | paper (P1) MPJPE / PA |",
             "|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = found.get(arm.name, [])
        if runs:
            lines.append(f"| {arm.name} | {'+'.join(arm.modalities)} | {arm.balance} | {len(runs)} | "
                         f"{_ms([r['mpjpe'] for r in runs])} | {_ms([r['pa_mpjpe'] for r in runs])} | "
                         f"{_paper(arm.name, protocol)} |")
    return "\n".join(lines)


def paired_table(found: Runs, methods: tuple[str, ...] = study_arms.METHODS[1:]) -> str:
    """Per seed: method - none (same seed, same data order), MPJPE and PA-MPJPE, mm."""
    base = {r["seed"]: r for r in found.get("all-none", [])}
    lines = ["| method − none | seeds | ΔMPJPE per seed (mm) | ΔMPJPE mean ± sd | ΔPA-MPJPE mean ± sd | "
             "better in |", "|---|---|---|---|---|---|"]
    for method in methods:
        pairs = [(r, base[r["seed"]]) for r in found.get(f"all-{method}", []) if r["seed"] in base]
        if not pairs:
            continue
        d = [r["mpjpe"] - b["mpjpe"] for r, b in pairs]
        dpa = [r["pa_mpjpe"] - b["pa_mpjpe"] for r, b in pairs]
        per = ", ".join(f"s{r['seed']}: {x:+.1f}" for (r, _), x in zip(pairs, d, strict=True))
        lines.append(f"| {method} | {len(pairs)} | {per} | {_ms(d)} | {_ms(dpa)} | "
                     f"{sum(x < 0 for x in d)}/{len(d)} seeds |")
    return "\n".join(lines)


PAPER_RATIO = {"lidar": 67.0 / 63.6, "mmwave": 102.9 / 63.6, "wifi": 166.9 / 63.6}  # Table 3, to RGB
RATIO_TOLERANCE = 0.25


def _by_seed(found: Runs, name: str) -> dict[int, float]:
    return {r["seed"]: r["mpjpe"] for r in found.get(name, [])}


def _paired(found: Runs, a: str, b: str) -> list[tuple[int, float]]:
    """(seed, a - b) over the seeds both arms finished, MPJPE mm."""
    ra, rb = _by_seed(found, a), _by_seed(found, b)
    return [(s, ra[s] - rb[s]) for s in sorted(ra) if s in rb]


def bench_checks(found: Runs) -> str:
    """What the benchmark must show of real MM-Fi, from the trained uni-modal and fusion runs:
    the uni-modal ordering and ratios to RGB against the paper's Table 3, RGB + LiDAR against RGB,
    and naive all-four fusion against RGB + LiDAR (paired per seed)."""
    rgb = _by_seed(found, "rgb")
    lines = ["| uni-modal | seeds | MPJPE (mm) | ratio to RGB (same seed) | paper ratio | within ±25 % |",
             "|---|---|---|---|---|---|"]
    means = {}
    for m in schema.MODALITIES:
        runs = _by_seed(found, m)
        if not runs:
            continue
        means[m] = float(np.mean(list(runs.values())))
        ratios = [runs[s] / rgb[s] for s in runs if s in rgb]
        if m == "rgb":
            ratio, paper, ok = "1", "1", "—"
        else:
            ratio, paper = (_ms(ratios, 2) if ratios else "—"), f"{PAPER_RATIO[m]:.2f}"
            ok = "—" if not ratios else "yes" if abs(np.mean(ratios) / PAPER_RATIO[m] - 1) <= RATIO_TOLERANCE else "no"
        lines.append(f"| {m} | {len(runs)} | {_ms(list(runs.values()))} | {ratio} | {paper} | {ok} |")
    order = sorted(means, key=means.get)
    out = ["\n".join(lines)] if means else []
    if len(means) == len(schema.MODALITIES):
        verdict = "as in the paper" if order == list(schema.MODALITIES) else "unlike the paper (RGB < LiDAR < mmWave < WiFi)"
        out.append(f"Ordering by mean MPJPE: {' < '.join(order)}, {verdict}.")
    for a, b, target in (("rgb+lidar", "rgb", "RGB + LiDAR better than RGB alone"),
                         ("all-none", "rgb+lidar", "naive all-four no better than RGB + LiDAR (paper: 53.87 vs 52.93 mm)")):
        d = _paired(found, a, b)
        if d:
            per = ", ".join(f"s{s}: {x:+.1f}" for s, x in d)
            out.append(f"{a} − {b}: {per} mm (mean {_ms([x for _, x in d])}; target: {target}).")
    return "\n\n".join(out)


def shapley_table(found: Runs, arms: list[study_arms.Arm]) -> str:
    lines = ["| run | " + " | ".join(schema.MODALITIES) + " | AWC superior share in the window |",
             "|---|" + "---|" * (len(schema.MODALITIES) + 1)]
    for arm in arms:
        runs = found.get(arm.name, [])
        if not runs or len(arm.modalities) < 2:
            continue
        phi = {m: [r["shapley"][m] for r in runs] for m in schema.MODALITIES}
        sup = [e["superior_fraction"] for r in runs for e in r["log"] if "superior_fraction" in e]
        share = " ".join(f"{m}:{np.mean([s[m] for s in sup]):.2f}" for m in arm.modalities) if sup else "—"
        lines.append(f"| {arm.name} | " + " | ".join(_ms(phi[m], 2) for m in schema.MODALITIES) + f" | {share} |")
    return "\n".join(lines)


def sweep_table(found: Runs, arms: list[study_arms.Arm], reference: dict[str, str]) -> str:
    """One row per run: the main arms' seed-0 runs named in ``reference`` first, then ``arms``; the
    test-frame count shows where an arm is scored on other frames (S2, complete frames)."""
    lines = ["| run | setting | test frames | MPJPE (mm) | PA-MPJPE (mm) |", "|---|---|---|---|---|"]
    rows = [(f"{name} (main, same seed)", setting, found.get(name, [])[:1]) for name, setting in reference.items()]
    rows += [(arm.name, arm.setting, found.get(arm.name, [])) for arm in arms]
    for name, setting, runs in rows:
        if runs:
            lines.append(f"| {name} | {setting} | {runs[0]['frames']} | {_ms([r['mpjpe'] for r in runs])} | "
                         f"{_ms([r['pa_mpjpe'] for r in runs])} |")
    return "\n".join(lines)


def overheads(found: Runs) -> str:
    def frac(name: str, key: str) -> str:
        vals = [r[key] for r in found.get(name, []) if r.get(key) is not None]
        return f"{100 * np.mean(vals):.2f} %" if vals else "—"

    lines = ["| run | Shapley / training time | Fisher / training time | epoch in window (s) | epoch after (s) |",
             "|---|---|---|---|---|"]
    for name in ("all-none", "all-awc", "all-uniform", "all-agm", "all-attention-none", "all-attention-awc"):
        runs = found.get(name, [])
        if not runs:
            continue
        inside = [r["epoch_time_in_window"] for r in runs if r.get("epoch_time_in_window")]
        after = [r["epoch_time_after_window"] for r in runs if r.get("epoch_time_after_window")]
        lines.append(f"| {name} | {frac(name, 'shapley_fraction')} | {frac(name, 'fisher_fraction')} | "
                     f"{_ms(inside)} | {_ms(after)} |")
    awc, none = found.get("all-awc", []), found.get("all-none", [])
    text = "\n".join(lines)
    if awc and none:
        inside = np.mean([r["epoch_time_in_window"] for r in awc if r.get("epoch_time_in_window")])
        plain = np.mean([e["time"]["train"] for r in none for e in r["log"]])
        after = [r["epoch_time_after_window"] for r in awc if r.get("epoch_time_after_window")]
        share = np.mean([(e["time"].get("fisher", 0.0) + e["time"]["shapley"]) / e["time"]["train"]
                         for r in awc for e in r["log"] if e["in_window"]])
        text += (f"\n\nAn AWC epoch inside the window takes {inside:.1f} s: {inside / plain:.2f}x a plain epoch"
                 + (f", {inside / np.mean(after):.2f}x the same run's epochs after the window" if after else "")
                 + f"; the Fisher + Shapley phases are {share:.1%} of it (wall-clock ratios move with the "
                 f"machine's other load, the phase share does not).")
    return text


SLOW_LATE = 1.3   # a run whose late steps take longer than this x its early ones is flagged
LOOP_PHASES = ("data", "forward", "shapley", "backward")   # the method's own phases (Fisher) excluded


def loop_step_seconds(epoch: dict[str, Any]) -> float:
    """Seconds per training step of one epoch's loop (the same work in every epoch of a run)."""
    return sum(epoch["time"].get(p, 0.0) for p in LOOP_PHASES) / max(int(epoch.get("steps", 1)), 1)


def late_over_early(log: list[dict[str, Any]]) -> float | None:
    """Median step time of the last fifth of the epochs over that of the first fifth (None: < 5 epochs)."""
    if len(log) < 5:
        return None
    k = max(1, len(log) // 5)
    early, late = [loop_step_seconds(e) for e in log[:k]], [loop_step_seconds(e) for e in log[-k:]]
    return float(np.median(late) / np.median(early)) if np.median(early) > 0 else None


def speed_check(by_protocol: dict[str, Runs]) -> str:
    """The runs whose late epochs ran much slower than their early ones (a machine or numerics
    problem, e.g. subnormal floats; docs/training.md, "Training speed")."""
    ratios = {f"{p}/{name}-s{r['seed']}": late_over_early(r["log"])
              for p, found in by_protocol.items() for name, runs in found.items() for r in runs}
    ratios = {k: v for k, v in ratios.items() if v is not None}
    if not ratios:
        return "(no finished run of 5 epochs or more yet)"
    slow = sorted((k for k, v in ratios.items() if v > SLOW_LATE), key=lambda k: -ratios[k])
    head = (f"Time per training step (data, forward, Shapley, backward), median of the last fifth of the epochs "
            f"over the first fifth: {np.median(list(ratios.values())):.2f}x at the median of {len(ratios)} runs, "
            f"{len(slow)} run{'s' if len(slow) != 1 else ''} above {SLOW_LATE}x")
    if not slow:
        return head + "."
    shown = ", ".join(f"{k} {ratios[k]:.2f}x" for k in slow[:12]) + (" ..." if len(slow) > 12 else "")
    return head + f" (wall clock: the machine's other load moves it too): {shown}."


def shapley_figure(found: dict[str, Runs], path: Path, report: Path) -> str:
    """Figure-4-style: per-modality Shapley score (training steps, mean per epoch) over epochs,
    plain vs AWC, the first seed, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p, runs in found.items() if runs.get("all-none") and runs.get("all-awc")]
    if not protocols:
        return "(no finished plain + AWC pair yet)"
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for name, style in (("all-none", "--"), ("all-awc", "-")):
            run = min(found[protocol][name], key=lambda r: r["seed"])
            for i, m in enumerate(schema.MODALITIES):
                ax.plot([e["epoch"] for e in run["log"]], [e["shapley"][m] for e in run["log"]], style,
                        color=f"C{i}", label=f"{m} ({name[4:]})")
            window = [e["epoch"] for e in run["log"] if e.get("in_window")]
            if name == "all-awc" and window:
                ax.axvspan(-0.5, max(window) + 0.5, color="0.92", zorder=0)
        ax.set(title=f"{protocol}: Shapley score per modality (shaded: AWC window)", xlabel="epoch",
               ylabel="Pearson profit")
        ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![Shapley over epochs]({os.path.relpath(path.resolve(), report.resolve().parent)})"


def write_report(args: argparse.Namespace, path: Path, figure: Path) -> str:
    out = Path(args.out)
    arms = study_arms.all_arms(args)
    main = [a for a in arms if a.group == "main"]
    by_protocol = {p: collect(out, p, arms) for p in dict.fromkeys([*args.protocols, args.sweep_protocol])}
    cfg = study_arms.base_config(args)
    sched = study_arms.Schedule(args.epochs)
    notes = path.read_text().split(study_arms.NOTES_MARKER, 1)[1] if path.exists() and study_arms.NOTES_MARKER in \
        path.read_text() else ""
    first = args.sweep_protocol
    sweeps = by_protocol[first]
    sections = []
    for p in sorted(args.protocols):
        sections.append(f"### {p}\n\n{accuracy_table(by_protocol[p], main, p)}\n\n"
                        f"Paired differences against plain training (negative = better than `none`):\n\n"
                        f"{paired_table(by_protocol[p])}\n\n"
                        f"Shapley contributions of the final models (test set, Pearson profit summed over 51 "
                        f"coordinates) and, for AWC, the share of steps each modality was superior:\n\n"
                        f"{shapley_table(by_protocol[p], main)}")
        checks = bench_checks(by_protocol[p])
        if checks:
            sections.append(f"What the benchmark must show of real MM-Fi ({p}; the paper's Table 3 is P1):\n\n{checks}")

    def group(g: str) -> list[study_arms.Arm]:
        return [a for a in arms if a.group == g]

    a_s, a_i = cfg.balance.awc.alpha_s, cfg.balance.awc.alpha_i
    ref_awc = {"all-awc": f"alpha_S={a_s:g}, alpha_I={a_i:g}, K={sched.window}"}
    text = f"""# Study results

Generated by `training study` from the run logs under `{args.out}/`. This file was written by:

```bash
{args.command}
```

Setup: dataset `{args.data}`, split S1 (S2 where marked), the `{args.preset}` preset (width {cfg.model.dim},
RGB window {cfg.model.rgb_window} = the TCN's receptive field, LiDAR cropped to the body then capped at
{cfg.model.lidar_cap} points, mmWave cap {cfg.model.mmwave_cap}), {cfg.data.max_train or 'all'} evenly spaced training
frames per protocol, frames `{cfg.data.frames}`, evaluation on {args.test_frames or 'all'} evenly spaced test
frames (last-epoch model). Schedule at the paper's proportions: {sched.epochs} epochs, batch
{cfg.train.batch_size}, {cfg.train.optimizer} {cfg.train.lr:g} (x{cfg.train.lr_gamma:g} at epoch {sched.lr_step}),
learning window K = {sched.window}, alpha_S / alpha_I = {a_s:g} / {a_i:g}, groups from the step scores
(`group_by={cfg.balance.awc.group_by}`), Fisher over {cfg.balance.awc.fisher_samples} frames ({cfg.balance.awc.fisher_mode});
OGM-GE alpha {cfg.balance.ogm_ge.alpha:g} in epochs < {sched.ogm_window}; AGM alpha {cfg.balance.agm.alpha:g};
G-Blending measures {cfg.balance.g_blending.holdout} frames of held-out whole training sequences; modality-level resampling gamma
{cfg.balance.modality_level.gamma:g} in the window. Main table: seeds {', '.join(map(str, args.seeds))} (mean ± sample
sd); sweeps: seed {args.seeds[0]} on {first} only (one seed: differences below ~1 mm are within
seed-to-seed noise, see the paired table).

The paper's numbers are for the real MM-Fi with larger backbones; ours are on generated data with a
model small enough for 2 CPU cores, so compare the pattern, not the millimetres.

## Main table

{(chr(10) * 2).join(sections)}

## Per-modality Shapley score over the epochs (plain vs AWC, seed {args.seeds[0]})

{shapley_figure(by_protocol, figure, path)}

## Sweeps ({first}, seed {args.seeds[0]})

alpha_S / alpha_I (Table 4 analogue):

{sweep_table(sweeps, group('alpha'), ref_awc)}

Learning window K (Figure 6 analogue):

{sweep_table(sweeps, group('window'), ref_awc)}

Attention fusion, cross-subject split S2, SGD + momentum (lr 0.01) for OGM-GE, groups at theta0,
toolbox frame selection (drop frames with an absent modality):

{sweep_table(sweeps, group('attention') + group('s2') + group('sgd') + group('grouping') + group('frames'),
             {a.name: a.setting for a in study_arms.main_arms() if a.name in ("all-none", "all-awc", "all-ogm-ge")})}

## Overheads (per-epoch phase timings in log.jsonl, {first})

{overheads(sweeps)}

Targets: Shapley <= 1 % of training time (concat); an AWC epoch inside the window <= 1.3x a plain epoch.

Late epochs against early ones: {speed_check(by_protocol)}

{study_arms.NOTES_MARKER}{notes}"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
