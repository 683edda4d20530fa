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
    errors, matched = [], 0
    for d in detected:
        side = d["side"]
        hit = next((r for r in true_reps if r["side"] == side and r["start_s"] <= d["peak_s"] < r["end_s"]), None)
        if hit is not None:
            matched += 1
            errors.append(abs(d["rom_deg"] - hit["rom_deg"]))
    return {"true": len(wanted), "detected": len(detected), "count_error": len(detected) - len(wanted),
            "matched": matched, "rom_abs_err_deg": errors,
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


def _detected(seg: Segment) -> list[dict]:
    return [{"side": r["side"], "peak_s": r["peak_s"], "rom_deg": r["rom_deg"]} for r in seg.reps]


def evaluate_ground_truth(root, protocol: str = "P2", config: RehabConfig | None = None) -> list[dict]:
    """Per sequence: the monitor on the ground-truth skeletons against the generator's truth."""
    rows = []
    for key in mmfi.MMFiDataset(root, protocol, "S1", "all").keys:
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
        det = [{"side": r["side"], "peak_s": r["peak_s"] + shift_s, "rom_deg": r["rom_deg"]} for r in seg.reps]
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
                     if any(r["true_rom_deg"] for r in sel) else None}
    return out


def markdown(gt: dict, pred: dict | None) -> str:
    head = "| exercise | principal angle | seq | GT: exact counts | GT: mean abs count err | GT: ROM MAE (deg) |"
    sep = "|---|---|---|---|---|---|"
    if pred:
        head += " pred: seq | pred: exact counts | pred: mean abs count err | pred: ROM MAE (deg) |"
        sep += "---|---|---|---|"
    lines = [head, sep]
    for code, g in gt.items():
        ex = EXERCISES[code]
        row = (f"| {code} {g['name']} | {ex.angle} ({ex.mode}) | {g['sequences']} | {g['exact']}/{g['sequences']} | "
               f"{g['mean_abs_count_error']} | {g['rom_mae_deg']} |")
        if pred:
            p = pred.get(code)
            row += (" — | — | — | — |" if p is None else
                    f" {p['sequences']} | {p['exact']}/{p['sequences']} | {p['mean_abs_count_error']} | "
                    f"{p['rom_mae_deg']} |")
        lines.append(row)
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="generated MM-Fi-format dataset (with rehab_truth.json files)")
    p.add_argument("--protocol", default="P2", choices=sorted(schema.PROTOCOLS))
    p.add_argument("--recording", default=None, help="recording of `runtime replay --record` on this dataset")
    p.add_argument("--out", default=None, help="write every figure as JSON")
    p.add_argument("--markdown", action="store_true", help="print the per-exercise table as Markdown")


def run(args: argparse.Namespace) -> int:
    try:
        gt_rows = evaluate_ground_truth(args.data, args.protocol)
        pred_rows = evaluate_recording(args.data, args.recording) if args.recording else None
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    gt, pred = summarise(gt_rows), (summarise(pred_rows) if pred_rows else None)
    print(markdown(gt, pred))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"ground_truth": {"summary": gt, "sequences": gt_rows},
                                              "predictions": None if pred_rows is None else
                                              {"summary": pred, "sequences": pred_rows}}, indent=1))
    return 0
