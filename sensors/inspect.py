"""``sensors inspect``: read an MM-Fi-format dataset back and summarise it.

``dataset_summary(root)`` returns a plain dict (JSON-ready): what is on disk (environments, subjects,
actions, sequences, frames), per modality the empty (0-byte) and missing frame files, LiDAR and
mmWave point counts (from the file sizes, min/median/max over non-empty frames), RGB keypoints
inside the image, CSI NaN/inf rate and amplitude/phase range, ground-truth depth and bone lengths
against the real MM-Fi frame, the train/test sizes under a protocol/split, and the files that
break the format (each named). ``format_summary`` renders it for people.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sensors import mmfi, splits
from sensors.core import schema
from sensors.mmfi import MMFiFormatError, SequenceKey

MAX_PROBLEMS_LISTED = 20
REAL_CSI_AMP = (29.27, 48.84)  # range of the real MM-Fi CSI frame in the project's sample data


@dataclass
class _Tally:
    """Running counts over the sequences of a dataset."""

    frames: Counter = field(default_factory=Counter)   # modality -> frame files expected
    empty: Counter = field(default_factory=Counter)    # modality -> 0-byte .bin
    missing: Counter = field(default_factory=Counter)  # modality -> no file
    invalid: Counter = field(default_factory=Counter)  # modality -> unusable values (read as absent)
    points: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in schema.POINT_MODALITIES})
    kpts_total: int = 0
    kpts_inside: int = 0
    csi_frames: int = 0
    csi_values: int = 0
    csi_nonfinite: int = 0
    csi_bad_frames: int = 0
    amp: list[float] = field(default_factory=list)       # finite min, max, sum, count
    phase: list[float] = field(default_factory=list)     # finite min, max
    depth: list[float] = field(default_factory=list)     # mean z per sequence (m)
    bones: dict[str, list[float]] = field(default_factory=dict)  # bone -> mean length per sequence
    bone_std: float = 0.0                                         # largest within-sequence std (m)
    problems: list[str] = field(default_factory=list)


def _scan_points(tally: _Tally, path: Path, modality: str, read_values: bool) -> None:
    size = path.stat().st_size
    if size == 0:
        tally.empty[modality] += 1
        return
    spec = schema.MODALITY_SPECS[modality]
    row = 8 * len(spec.columns)
    if size % row:
        tally.problems.append(f"{path}: {size} bytes is not a multiple of {row} (float64 x "
                              f"{row // 8} columns)")
        return
    if size // row > spec.max_points:
        tally.problems.append(f"{path}: {size // row} {modality} points, more than the limit of {spec.max_points} "
                              f"(the reader refuses it)")
        return
    if read_values:
        problem = mmfi.point_file_problem(path.read_bytes(), modality)
        if problem:
            tally.problems.append(f"{path}: {problem}")
            return
    tally.points[modality].append(size // row)


def _scan_keypoints(tally: _Tally, path: Path, modality: str) -> None:
    kpts = mmfi.read_keypoints(path, modality)
    if not np.isfinite(kpts).all():
        tally.invalid[modality] += 1
        tally.problems.append(f"{path}: {int((~np.isfinite(kpts)).sum())} of {kpts.size} keypoint values are "
                              f"NaN/inf: the reader treats the frame as absent")
        return
    inside = (kpts[:, 0] >= 0) & (kpts[:, 0] < schema.IMAGE_WIDTH) & (kpts[:, 1] >= 0) & \
             (kpts[:, 1] < schema.IMAGE_HEIGHT)
    tally.kpts_total += inside.size
    tally.kpts_inside += int(inside.sum())


def _extend_range(acc: list[float], values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return
    lo, hi, total, n = float(finite.min()), float(finite.max()), float(finite.sum()), finite.size
    if acc:
        acc[:] = [min(acc[0], lo), max(acc[1], hi), acc[2] + total, acc[3] + n]
    else:
        acc[:] = [lo, hi, total, n]


def _scan_csi(tally: _Tally, path: Path, modality: str) -> None:
    frame = mmfi.read_csi(path, modality)
    bad = int((~np.isfinite(frame.amp)).sum() + (~np.isfinite(frame.phase)).sum())
    tally.csi_frames += 1
    tally.csi_values += frame.amp.size + frame.phase.size
    tally.csi_nonfinite += bad
    tally.csi_bad_frames += int(bad > 0)
    _extend_range(tally.amp, frame.amp)
    _extend_range(tally.phase, frame.phase)


def _scan_ground_truth(tally: _Tally, seq: Path) -> None:
    gt = mmfi.read_ground_truth(seq)
    tally.depth.append(float(gt[..., 2].mean()))
    for (a, b), bone in schema.EDGE_BONE.items():
        length = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)  # [297] m
        tally.bones.setdefault(bone, []).append(float(length.mean()))
        tally.bone_std = max(tally.bone_std, float(length.std()))


def _scan_frame(tally: _Tally, path: Path, modality: str, read_csi: bool, read_points: bool = True) -> None:
    kind = schema.MODALITY_SPECS[modality].kind
    if kind == schema.POINTS:
        _scan_points(tally, path, modality, read_points)
    elif kind == schema.KEYPOINTS:
        _scan_keypoints(tally, path, modality)
    elif read_csi:
        _scan_csi(tally, path, modality)


def _scan_sequence(tally: _Tally, root: Path, key: SequenceKey, csi_stride: int, points_stride: int = 1) -> None:
    seq = key.path(root)
    try:
        _scan_ground_truth(tally, seq)
    except MMFiFormatError as err:
        tally.problems.append(str(err))
    except OSError as err:   # unreadable file or folder: a counted problem, not a traceback
        tally.problems.append(f"{seq}: ground truth cannot be read ({err.strerror or err})")
    for m in schema.MODALITIES:
        tally.frames[m] += schema.FRAMES_PER_SEQUENCE
        folder = seq / schema.MMFI_FOLDERS[m]
        try:
            names = {p.name for p in folder.iterdir()} if folder.is_dir() else None
        except OSError as err:   # unreadable folder: a counted problem, not a traceback
            tally.missing[m] += schema.FRAMES_PER_SEQUENCE
            tally.problems.append(f"{folder}: the folder cannot be read ({err.strerror or err})")
            continue
        if names is None:
            tally.missing[m] += schema.FRAMES_PER_SEQUENCE
            tally.problems.append(f"{folder}: {m} folder missing")
            continue
        for t in range(schema.FRAMES_PER_SEQUENCE):
            path = mmfi.frame_path(seq, m, t)
            if path.name not in names:
                tally.missing[m] += 1
                continue
            try:
                _scan_frame(tally, path, m, read_csi=t % csi_stride == 0, read_points=t % points_stride == 0)
            except MMFiFormatError as err:
                tally.problems.append(str(err))
            except OSError as err:
                tally.problems.append(f"{path}: the file cannot be read ({err.strerror or err})")


def _stats(values: list, integer: bool = True) -> dict[str, float] | None:
    """min/median/max/mean of ``values`` (None when empty); min and max as int for counts."""
    if not values:
        return None
    v = np.asarray(values)
    cast = int if integer else float
    return {"min": cast(v.min()), "median": float(np.median(v)), "max": cast(v.max()), "mean": float(v.mean())}


def _split_sizes(keys: list[SequenceKey], protocol: str, split: str, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": protocol, "split": split, "seed": seed}
    for subset in ("train", "test"):
        wanted = splits.subset_pairs(protocol, split, subset, seed)
        chosen = [k for k in keys if (k.subject, k.action) in wanted]
        out[f"{subset}_sequences"] = len(chosen)
        out[f"{subset}_frames"] = len(chosen) * schema.FRAMES_PER_SEQUENCE
        out[f"{subset}_subjects"] = sorted({k.subject for k in chosen})
    return out


def _modality_rows(tally: _Tally) -> dict[str, dict[str, Any]]:
    rows = {}
    for m in schema.MODALITIES:
        n = tally.frames[m]
        rows[m] = {"frames": n, "empty": tally.empty[m], "missing": tally.missing[m], "invalid": tally.invalid[m],
                   "empty_rate": tally.empty[m] / n if n else 0.0,
                   "missing_rate": tally.missing[m] / n if n else 0.0}
    return rows


def _csi_stats(tally: _Tally) -> dict[str, Any]:
    out: dict[str, Any] = {"frames_read": tally.csi_frames, "frames_with_nonfinite": tally.csi_bad_frames,
                           "nonfinite_rate": tally.csi_nonfinite / tally.csi_values if tally.csi_values else 0.0}
    if tally.amp:
        out.update(amp_min=tally.amp[0], amp_max=tally.amp[1], amp_mean=tally.amp[2] / tally.amp[3])
    if tally.phase:
        out.update(phase_min=tally.phase[0], phase_max=tally.phase[1])
    return out


def dataset_summary(root: str | Path, protocol: str = "P1", split: str = "S1", seed: int = 0,
                    csi_stride: int = 1, progress: bool = False, points_stride: int = 1) -> dict[str, Any]:
    """Summary of the MM-Fi-format dataset at ``root`` (see the module docstring).

    Reads every keypoint and ground-truth file, every ``csi_stride``-th CSI frame, the sizes of
    the point-cloud files and the values of every ``points_stride``-th one (float32 or wrong column
    count). Unreadable files and folders, hostile files (too many points, NaN keypoints, float32 or
    wrong-column point files) are counted problems, each named. Raises MMFiLayoutError when no sequence is found.
    """
    if csi_stride < 1 or points_stride < 1:
        raise ValueError(f"csi_stride and points_stride must be >= 1, got {csi_stride}, {points_stride}")
    splits.check_protocol(protocol)
    splits.check_split(split)
    root = Path(root)
    keys = mmfi.discover_sequences(root)
    if not keys:
        raise mmfi.MMFiLayoutError(f"no MM-Fi sequences under {root}: expected ROOT/E01..E04/S01..S40/A01..A27 "
                                   f"folders; {mmfi.describe_root(root)}")
    tally = _Tally()
    for key in tqdm(keys, desc="inspecting sequences", unit="seq", disable=not progress):
        _scan_sequence(tally, root, key, csi_stride, points_stride)
    return {
        "root": str(root),
        "environments": sorted({k.env for k in keys}),
        "subjects": sorted({k.subject for k in keys}),
        "actions": sorted({k.action for k in keys}),
        "sequences": len(keys),
        "frames": len(keys) * schema.FRAMES_PER_SEQUENCE,
        "modalities": _modality_rows(tally),
        **{f"{m}_points": _stats(tally.points[m]) for m in schema.POINT_MODALITIES},
        "rgb_inside_image_rate": tally.kpts_inside / tally.kpts_total if tally.kpts_total else None,
        "csi": _csi_stats(tally),
        "ground_truth": {"depth_m": _stats(tally.depth, integer=False),
                         "bone_lengths_m": {b: float(np.median(v)) for b, v in tally.bones.items()},
                         "bone_length_max_std_m": tally.bone_std},
        "split": _split_sizes(keys, protocol, split, seed),
        "problems": tally.problems[:MAX_PROBLEMS_LISTED],
        "problem_count": len(tally.problems),
    }


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
def _names(values: list[str], limit: int = 14) -> str:
    shown = " ".join(values[:limit])
    return f"{len(values)}: {shown}" + (" ..." if len(values) > limit else "")


def _points_note(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "no points in any frame"
    return f"points/frame min {stats['min']} · median {stats['median']:.0f} · max {stats['max']}"


def _notes(summary: dict[str, Any]) -> dict[str, str]:
    """One line per modality, by its kind."""
    csi = summary["csi"]
    inside = summary["rgb_inside_image_rate"]
    notes = {
        schema.KEYPOINTS: "no keypoints read" if inside is None else
                          f"keypoints inside {schema.IMAGE_WIDTH}x{schema.IMAGE_HEIGHT}: {100 * inside:.1f}%",
        schema.CSI: f"NaN/inf {100 * csi['nonfinite_rate']:.2g}% of values, in {csi['frames_with_nonfinite']} "
                    f"of {csi['frames_read']} frames read",
    }
    return {m: _points_note(summary[f"{m}_points"]) if s.kind == schema.POINTS else notes[s.kind]
            for m, s in schema.MODALITY_SPECS.items()}


def _csi_line(csi: dict[str, Any]) -> list[str]:
    if "amp_min" not in csi:
        return ["CSI: no finite values read"]
    return [f"CSI amplitude {csi['amp_min']:.2f}..{csi['amp_max']:.2f} (mean {csi['amp_mean']:.2f}), "
            f"phase {csi['phase_min']:.2f}..{csi['phase_max']:.2f} rad "
            f"(a real MM-Fi frame: amplitude {REAL_CSI_AMP[0]}..{REAL_CSI_AMP[1]}, phase within ±pi)"]


def _split_lines(sp: dict[str, Any]) -> list[str]:
    lines = [f"protocol {sp['protocol']} ({len(schema.PROTOCOLS[sp['protocol']])} actions), split {sp['split']}"
             f" (seed {sp['seed']}):"]
    for subset in ("train", "test"):
        lines.append(f"  {subset:<5} {sp[f'{subset}_sequences']:>5} sequences {sp[f'{subset}_frames']:>8,} frames"
                     f"   subjects {' '.join(sp[f'{subset}_subjects']) or '-'}")
    return lines


def _ground_truth_lines(gt: dict[str, Any], per_line: int = 5) -> list[str]:
    if gt["depth_m"] is None:
        return ["ground truth: none readable"]
    d = gt["depth_m"]
    items = [f"{b} {v:.2f} ({schema.REFERENCE_BONE_LENGTHS[b]:.2f})" for b, v in gt["bone_lengths_m"].items()]
    lines = [f"ground truth: mean depth z {d['min']:.2f}..{d['max']:.2f} m over sequences; bones vary "
             f"within a sequence by at most {gt['bone_length_max_std_m']:.3f} m (std)",
             "  bone lengths, m, median over sequences (a real MM-Fi frame in brackets):"]
    lines += ["    " + " · ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """A readable multi-line report of ``dataset_summary``'s dict."""
    lines = [f"MM-Fi-format dataset at {summary['root']}",
             f"  sequences     {summary['sequences']} ({summary['frames']:,} frames, "
             f"{schema.FRAMES_PER_SEQUENCE} per sequence at {schema.FRAME_RATE_HZ:g} Hz)",
             f"  environments  {' '.join(summary['environments'])}",
             f"  subjects      {_names(summary['subjects'])}",
             f"  actions       {_names(summary['actions'])}", "",
             f"  {'modality':<9} {'frames':>8} {'empty':>7} {'missing':>8}  notes"]
    notes = _notes(summary)
    for m, row in summary["modalities"].items():
        lines.append(f"  {m:<9} {row['frames']:>8,} {100 * row['empty_rate']:>6.1f}% {row['missing']:>8}  {notes[m]}")
    lines += ["  " + s for s in _csi_line(summary["csi"])]
    lines += [""] + ["  " + s for s in _ground_truth_lines(summary["ground_truth"])]
    lines += [""] + ["  " + s for s in _split_lines(summary["split"])] + [""]
    if summary["problem_count"]:
        lines.append(f"  problems ({summary['problem_count']}, first {len(summary['problems'])} listed):")
        lines += [f"    {p}" for p in summary["problems"]]
    else:
        lines.append("  problems: none (every file read matches the MM-Fi format)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="dataset root (the folder holding E01..E04)")
    parser.add_argument("--protocol", default="P1", choices=sorted(schema.PROTOCOLS),
                        help="P1 daily, P2 rehabilitation, P3 all actions (default P1)")
    parser.add_argument("--split", default="S1", choices=schema.SPLITS,
                        help="S1 random, S2 cross-subject, S3 cross-environment (default S1)")
    parser.add_argument("--seed", type=int, default=0, help="S1 seed (default 0, the official split)")
    parser.add_argument("--csi-stride", type=int, default=1,
                        help="read every n-th CSI frame (default 1; e.g. 30 for the full 77 GB MM-Fi)")
    parser.add_argument("--points-stride", type=int, default=1,
                        help="check the values of every n-th LiDAR/mmWave file (float32, column count; default 1)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        summary = dataset_summary(args.data, args.protocol, args.split, args.seed, args.csi_stride,
                                  progress=not args.json, points_stride=args.points_stride)
    except (MMFiFormatError, ValueError) as err:
        print(f"sensors inspect: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 1 if summary["problem_count"] else 0
