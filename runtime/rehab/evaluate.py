"""``runtime rehab-eval``: accuracy of the repetition counts and ranges of motion on a generated
dataset, against the truth the generator wrote (``rehab_truth.json``, sensors.simulate.truth).

    runtime rehab-eval --data DIR [--protocol P2] [--recording poses.npz] [--out FILE.json] [--markdown]

* From ground-truth skeletons: each sequence's ``ground_truth.npy`` goes through the same
  ``RehabMonitor`` as a live station (all modalities present, nothing degraded).
* From predictions (``--recording``): a recording of ``runtime replay --record FILE`` (the replay
  sends each sequence's action as ``exercise`` and its key as ``session``); the recorded poses go
  through a fresh ``RehabMonitor``, segment by segment.

True repetitions: repetition k is the generator's motion cycle k. Its true range of motion is
measured on the exact principal angle computed from the ground-truth joints (no smoothing): the
maximum over the cycle minus the minimum before it (from a quarter cycle before the cycle starts,
since the rest between two cycles falls between samples). A cycle counts when the recording holds its
peak and the angle came back past the middle of that range before the recording ends (the same
rule a counted repetition follows, so a recording stopped mid-repetition is judged fairly).
Detected repetitions are matched to true ones by their peak time (the cycle holding it).

Trust calibration (``calibration``): a detected repetition is **bad** when it matches no true
cycle (counted where nothing happened), matches a cycle another detection already took (one
movement counted twice), or its range of motion is off by more than ``BAD_ROM_DEG`` (15 deg). The
low-confidence mark is then scored as a detector of bad repetitions: precision (flagged that are
bad), recall (bad that are flagged) and the fraction of repetitions it withholds (flagged / all).
True cycles no detection matched (missed repetitions) cannot carry a mark; they are counted beside.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from runtime.rehab import angles as ang
from runtime.rehab.exercises import EXERCISES, Exercise
from runtime.rehab.monitor import RehabConfig, RehabMonitor, Segment
from sensors import mmfi
from sensors.core import schema
from sensors.simulate.truth import read_truth

log = logging.getLogger(__name__)
RETURN_FRAC = 0.5
BAD_ROM_DEG = 15.0          # a repetition whose ROM is off by more than this is bad (trust calibration)


def principal_signals(ex: Exercise, a: np.ndarray) -> dict[str, np.ndarray]:
    """angles [T, C] -> {side: principal signal [T]} as the monitor counts it."""
    col = {s: a[:, ang.CHANNEL_INDEX[(ex.angle, s)]] for s in ("left", "right") if (ex.angle, s) in ang.CHANNEL_INDEX}
    if ex.mode == "both":
        return {"both": np.nanmean(np.stack([col["left"], col["right"]]), axis=0)}
    if ex.mode == "alternating":
        return col
    if ex.mode == "none":
        return {"none": a[:, ang.CHANNEL_INDEX[(ex.angle, "none")]]}
    return {ex.mode: col[ex.mode]}


def true_repetitions(truth: dict, joints: np.ndarray, ex: Exercise) -> list[dict]:
    """The generator's cycles with their true range of motion, per counted side."""
    t = np.arange(joints.shape[0]) / truth["frame_rate_hz"]
    a = ang.joint_angles(joints.astype(np.float64))
    out = []
    for side, sig in principal_signals(ex, a).items():
        for c in truth["cycles"]:
            inside = np.flatnonzero((t >= c["start_s"]) & (t < c["end_s"]))
            if inside.size < 2:
                continue
            seg = sig[inside]
            if not np.isfinite(seg).any():
                continue
            k = int(np.nanargmax(seg))
            # the valley: from a quarter cycle before the cycle (a cycle starts at rest, between samples)
            lead = np.flatnonzero((t >= c["start_s"] - 0.25 * truth["period_s"]) & (t <= t[inside[k]]))
            low = float(np.nanmin(sig[lead]))
            rom = float(seg[k]) - low
            after = sig[inside[k]:]
            complete = bool(np.any(after <= seg[k] - RETURN_FRAC * rom))
            out.append({"side": side, "cycle": c["index"], "start_s": c["start_s"], "end_s": c["end_s"],
                        "peak_s": float(t[inside[k]]), "rom_deg": rom, "complete": complete})
    return out


def compare(true_reps: list[dict], detected: list[dict], ex: Exercise) -> dict:
    """Count error and ROM error of detected repetitions (dicts with side, peak_s, rom_deg)."""
    wanted = [r for r in true_reps if r["complete"] and r["rom_deg"] >= 0.5 * ex.min_rom_deg]
    errors, matched, taken, judged = [], 0, set(), []
    for d in detected:
        side = d["side"]
        hit = next((r for r in true_reps if r["side"] == side and r["start_s"] <= d["peak_s"] < r["end_s"]), None)
        err = None
        if hit is not None:
            matched += 1
            err = abs(d["rom_deg"] - hit["rom_deg"])
            errors.append(err)
        again = hit is not None and (side, hit["cycle"]) in taken
        if hit is not None:
            taken.add((side, hit["cycle"]))
        judged.append({"bad": hit is None or again or err > BAD_ROM_DEG, "rom_abs_err_deg": err,
                       "unmatched": hit is None, "duplicate": again,
                       "low_confidence": bool(d.get("low_confidence")), "trust_flags": list(d.get("trust_flags") or ())})
    missed = sum((r["side"], r["cycle"]) not in taken for r in wanted)
    return {"true": len(wanted), "detected": len(detected), "count_error": len(detected) - len(wanted),
            "matched": matched, "missed": missed, "rom_abs_err_deg": errors, "repetitions": judged,
            "true_rom_deg": [r["rom_deg"] for r in wanted], "rom_deg": [d["rom_deg"] for d in detected]}


def monitor_sequence(joints: np.ndarray, code: str, rate_hz: float = schema.FRAME_RATE_HZ,
                     presence=None, degraded=None, shares=None, config: RehabConfig | None = None) -> Segment:
    """Run a fresh monitor over one sequence's poses [T, 17, 3]; returns its segment."""
    mon = RehabMonitor(dataclasses.replace(config or RehabConfig(), exercise=code), rate_hz)
    ones, zeros = np.ones(schema.N_MODALITIES), np.zeros(schema.N_MODALITIES)
    period = int(round(1e9 / rate_hz))
    for i, pose in enumerate(joints):
        mon.update(i, i * period, pose, ones if presence is None else presence[i],
                   zeros if degraded is None else degraded[i], None if shares is None else shares[i])
    mon.finish()
    return mon.current


def _detected(seg: Segment, shift_s: float = 0.0) -> list[dict]:
    return [{"side": r["side"], "peak_s": r["peak_s"] + shift_s, "rom_deg": r["rom_deg"],
             "low_confidence": r.get("low_confidence"), "trust_flags": r.get("trust_flags")} for r in seg.reps]


def evaluate_ground_truth(root, protocol: str = "P2", config: RehabConfig | None = None, split: str = "S1",
                          subset: str = "all", sequences: set[str] | None = None) -> list[dict]:
    """Per sequence (of ``split``'s ``subset``, or only ``sequences``): the monitor on the
    ground-truth skeletons against the generator's truth."""
    rows = []
    for key in mmfi.MMFiDataset(root, protocol, split, subset).keys:
        if sequences is not None and str(key) not in sequences:
            continue
        seq = key.path(root)
        ex = EXERCISES.get(key.action)
        if ex is None:
            continue
        truth = read_truth(seq)
        joints = mmfi.read_ground_truth(seq)
        seg = monitor_sequence(joints, key.action, config=config)
        rows.append({"sequence": str(key), "exercise": key.action,
                     **compare(true_repetitions(truth, joints, ex), _detected(seg), ex)})
    return rows


def evaluate_recording(root, path) -> list[dict]:
    """Per replayed sequence (session): the monitor on the recorded predicted poses."""
    from runtime.rehab.records import load_records, run_monitor

    records = load_records(path)
    rows = []
    for seg in run_monitor(records):
        if seg.session is None or seg.exercise is None:
            continue
        seq = Path(root) / seg.session
        truth = read_truth(seq)
        joints = mmfi.read_ground_truth(seq)
        ticks = [r for r in records if r.session == seg.session]
        # The replayed sequence starts at the tick of its first frame: align times on it.
        t0 = seg.start_ns
        first = min(r.tick_ns for r in ticks)
        shift_s = (t0 - first) / 1e9
        det = _detected(seg, shift_s)
        rows.append({"sequence": seg.session, "exercise": seg.code, "ticks": len(ticks),
                     **compare(true_repetitions(truth, joints, seg.exercise), det, seg.exercise)})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per exercise: sequences, exact counts, mean |count error|, mean / max ROM error (degrees)."""
    out = {}
    for code in sorted({r["exercise"] for r in rows}):
        sel = [r for r in rows if r["exercise"] == code]
        errs = np.concatenate([np.asarray(r["rom_abs_err_deg"], float) for r in sel]) if sel else np.zeros(0)
        out[code] = {"name": EXERCISES[code].name, "sequences": len(sel),
                     "exact": sum(r["count_error"] == 0 for r in sel),
                     "true_reps": sum(r["true"] for r in sel), "detected_reps": sum(r["detected"] for r in sel),
                     "mean_abs_count_error": round(float(np.mean([abs(r["count_error"]) for r in sel])), 2),
                     "count_errors": [r["count_error"] for r in sel],
                     "rom_mae_deg": round(float(errs.mean()), 2) if errs.size else None,
                     "rom_p95_deg": round(float(np.percentile(errs, 95)), 2) if errs.size else None,
                     "true_rom_mean_deg": round(float(np.mean([x for r in sel for x in r["true_rom_deg"]])), 1)
                     if any(r["true_rom_deg"] for r in sel) else None,
                     "rom_mean_deg": round(float(np.mean([x for r in sel for x in r["rom_deg"]])), 1)
                     if any(r["rom_deg"] for r in sel) else None}
    return out


def overall(rows: list[dict]) -> dict:
    """All sequences together: exact counts, ROM error over every matched repetition."""
    errs = np.concatenate([np.asarray(r["rom_abs_err_deg"], float) for r in rows]) if rows else np.zeros(0)
    return {"sequences": len(rows), "exact": sum(r["count_error"] == 0 for r in rows),
            "exact_fraction": round(sum(r["count_error"] == 0 for r in rows) / len(rows), 3) if rows else None,
            "true_reps": sum(r["true"] for r in rows), "detected_reps": sum(r["detected"] for r in rows),
            "matched_reps": int(errs.size),
            "rom_mae_deg": round(float(errs.mean()), 2) if errs.size else None,
            "rom_p95_deg": round(float(np.percentile(errs, 95)), 2) if errs.size else None}


def calibration(rows: list[dict]) -> dict:
    """How well the low-confidence mark separates bad repetitions from good ones (module doc)."""
    reps = [r for row in rows for r in row.get("repetitions", [])]
    bad = [r for r in reps if r["bad"]]
    flagged = [r for r in reps if r["low_confidence"]]
    both = [r for r in bad if r["low_confidence"]]
    per_flag = {}
    for flag in sorted({f for r in flagged for f in r["trust_flags"]}):
        hits = [r for r in flagged if flag in r["trust_flags"]]
        per_flag[flag] = {"flagged": len(hits), "bad": sum(r["bad"] for r in hits)}
    off = [r for r in reps if not r["unmatched"] and not r["duplicate"]]
    return {"repetitions": len(reps), "bad": len(bad), "flagged": len(flagged), "flagged_bad": len(both),
            "precision": round(len(both) / len(flagged), 3) if flagged else None,
            "recall": round(len(both) / len(bad), 3) if bad else None,
            "withheld": round(len(flagged) / len(reps), 3) if reps else None,
            "bad_unmatched": sum(r["unmatched"] for r in reps), "bad_duplicate": sum(r["duplicate"] for r in reps),
            "bad_rom": sum(r["rom_abs_err_deg"] > BAD_ROM_DEG for r in off),
            "bad_rate_kept": round((len(bad) - len(both)) / (len(reps) - len(flagged)), 3)
            if len(reps) > len(flagged) else None,
            "bad_rate_all": round(len(bad) / len(reps), 3) if reps else None,
            "missed": sum(row.get("missed", 0) for row in rows), "per_flag": per_flag, "bad_rom_deg": BAD_ROM_DEG}


def markdown(summary: dict, rows: list[dict]) -> str:
    """The per-exercise table of docs/rehab.md, with a line for all sequences."""
    lines = ["| exercise | principal angle | true reps | detected | count errors | exact | ROM MAE (°) | ROM p95 (°) | "
             "mean true ROM (°) | mean measured ROM (°) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for code, g in summary.items():
        ex = EXERCISES[code]
        side = {"both": "both", "alternating": "alternating"}.get(ex.mode, ex.mode)
        errors = ", ".join(f"{e:+d}" if e else "0" for e in g["count_errors"])
        lines.append(f"| {code} {g['name']} | {ang.ANGLE_WORDS[ex.angle][0]} ({side}) | {g['true_reps']} | "
                     f"{g['detected_reps']} | {errors} | {g['exact']}/{g['sequences']} | {g['rom_mae_deg']} | "
                     f"{g['rom_p95_deg']} | {g['true_rom_mean_deg']} | {g['rom_mean_deg']} |")
    o = overall(rows)
    lines.append(f"| **all** | | {o['true_reps']} | {o['detected_reps']} | | **{o['exact']}/{o['sequences']}** | "
                 f"**{o['rom_mae_deg']}** | **{o['rom_p95_deg']}** | | |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="generated MM-Fi-format dataset (with rehab_truth.json files)")
    p.add_argument("--protocol", default="P2", choices=sorted(schema.PROTOCOLS))
    p.add_argument("--split", default="S1", choices=sorted(schema.SPLITS),
                   help="with --subset: which sequences the ground-truth figures cover (default: all of them; "
                        "with --recording, the sequences it replayed)")
    p.add_argument("--subset", default="all", choices=("train", "test", "all"))
    p.add_argument("--recording", default=None, help="recording of `runtime replay --record` on this dataset")
    p.add_argument("--out", default=None, help="write every figure as JSON")
    p.add_argument("--markdown", action="store_true", help="(the per-exercise tables are always printed as Markdown)")


def run(args: argparse.Namespace) -> int:
    try:
        pred_rows = evaluate_recording(args.data, args.recording) if args.recording else None
        # with a recording, ground truth on the very sequences it replayed (like for like)
        gt_rows = evaluate_ground_truth(args.data, args.protocol, split="S1" if pred_rows else args.split,
                                        subset="all" if pred_rows else args.subset,
                                        sequences={r["sequence"] for r in pred_rows} if pred_rows else None)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    gt, pred = summarise(gt_rows), (summarise(pred_rows) if pred_rows else None)
    print(f"ground-truth skeletons ({len(gt_rows)} sequences):\n" + markdown(gt, gt_rows))
    if pred is not None:
        print(f"\npredictions of the recording ({len(pred_rows)} sequences):\n" + markdown(pred, pred_rows))
    trust = calibration(pred_rows) if pred_rows else None
    if trust is not None:
        print(f"\ntrust: {trust['flagged']} of {trust['repetitions']} repetitions low-confidence (withheld "
              f"{trust['withheld']}); {trust['bad']} bad (unmatched {trust['bad_unmatched']}, counted twice "
              f"{trust['bad_duplicate']}, ROM off > {BAD_ROM_DEG:g} deg {trust['bad_rom']}); precision "
              f"{trust['precision']}, recall {trust['recall']}; bad among kept {trust['bad_rate_kept']} vs all "
              f"{trust['bad_rate_all']}; {trust['missed']} true repetitions missed")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"ground_truth": {"summary": gt, "sequences": gt_rows},
                                              "predictions": None if pred_rows is None else
                                              {"summary": pred, "sequences": pred_rows, "trust": trust}},
                                             indent=1))
    return 0
