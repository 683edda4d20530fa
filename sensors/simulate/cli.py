"""``sensors simulate``: write a synthetic dataset in MM-Fi's exact layout and formats."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from sensors.core import schema
from sensors.simulate.presets import PRESETS


def _names(text: str | None, known: tuple[str, ...], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise SystemExit(f"--{what}: expected a comma-separated list of {known[0]}..{known[-1]}, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write (ROOT/Exx/Syy/Azz/...)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                        help="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", help="override the preset's subjects, e.g. S01,S05")
    parser.add_argument("--actions", help="override the preset's actions, e.g. A02,A03")
    parser.add_argument("--workers", type=int, default=1, help="processes (output is identical for any value)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty directory that is not a generated dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def looks_generated(root: Path) -> bool:
    """True if every entry of ``root`` is an environment folder of MM-Fi layout (E01..E04/Sxx/Axx)."""
    entries = list(root.iterdir())
    if not entries:
        return True
    for env in entries:
        if env.name not in schema.ENVIRONMENTS or not env.is_dir():
            return False
        for subj in env.iterdir():
            if subj.name not in schema.SUBJECTS or not subj.is_dir():
                return False
            if any(a.name not in schema.ACTIONS for a in subj.iterdir()):
                return False
    return True


def check_output(root: Path, overwrite: bool) -> None:
    """Refuse a non-empty directory that is not a previously generated dataset (unless overwrite)."""
    if root.exists() and not root.is_dir():
        raise SystemExit(f"--out {root} is a file: expected a directory (new, empty or a generated dataset)")
    if root.is_dir() and not overwrite and not looks_generated(root):
        raise SystemExit(f"--out {root} is not empty and does not look like a generated MM-Fi dataset "
                         "(only E01..E04/Sxx/Axx folders expected); choose another directory or pass "
                         "--overwrite to write into it anyway")


def run(args: argparse.Namespace) -> int:
    from sensors.simulate import simulate

    check_output(args.out, args.overwrite)
    report = simulate(args.out, preset=args.preset, seed=args.seed,
                      subjects=_names(args.subjects, schema.SUBJECTS, "subjects"),
                      actions=_names(args.actions, schema.ACTIONS, "actions"),
                      workers=args.workers, progress=not args.no_progress)
    free = shutil.disk_usage(args.out).free
    print(json.dumps(report, indent=2))
    print(f"wrote {report['sequences']} sequences ({report['frames']} frames, "
          f"{report['bytes'] / 1e6:.1f} MB) to {report['root']} in {report['seconds']:.1f} s "
          f"({free / 1e9:.1f} GB free)")
    return 0
