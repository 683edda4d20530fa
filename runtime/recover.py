"""``runtime recover``: what a killed recorder left, made whole (docs/runtime.md, "Recording").

    runtime recover runs/ward-3/poses.npz              # merge NAME.npz.parts/ into NAME.npz
    runtime recover runs/ward-3/poses.jsonl --out clean.jsonl   # the readable lines only

NPZ: the parts in ``NAME.npz.parts/`` (one written every second) are merged into ``NAME.npz``, or,
when that file exists (a later run's), into ``NAME.<UTC time>.npz`` beside it; unreadable parts
are set aside, never deleted. JSONL: the file is read as the report reads it (a line cut short
by a killed process is skipped and counted); ``--out`` writes the readable lines to a new file.
The recording itself is never changed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from exporters.recorder import (
    jsonable,
    load_parts,
    parts_dir,
    read_recording,
    recover_parts,
    rotated_name,
)
from sensors.core.cli_util import terminal_safe

log = logging.getLogger(__name__)


def recover_npz(path: Path) -> Path:
    folder = parts_dir(path)
    if not folder.is_dir():
        if path.is_file():
            raise ValueError(f"{path} is complete: there is no {folder} to recover")
        raise FileNotFoundError(f"neither {path} nor its parts {folder} exist: nothing to recover")
    if not load_parts(folder):
        raise ValueError(f"{folder} holds no readable part: nothing to recover (a recorder killed in its first "
                         "second writes none)")
    return recover_parts(path, rotated_name(path) if path.exists() else path)


def recover_jsonl(path: Path, out: Path | None) -> str:
    rec = read_recording(path)
    text = f"{path}: {len(rec.rows)} records" + (f"; {rec.describe_skipped()}" if rec.skipped else ", nothing to skip")
    if out is not None:
        if out.resolve() == path.resolve():
            raise ValueError("--out must be another file: the recording itself is never changed")
        out.write_text("".join(json.dumps(jsonable(r), allow_nan=True) + "\n" for r in rec.rows), encoding="utf-8")
        text += f"; readable records written to {out}"
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="a pose recording (.npz whose parts a killed recorder left, or .jsonl)")
    p.add_argument("--out", default=None, metavar="FILE", help="JSONL: write the readable records to FILE")


def run(args: argparse.Namespace) -> int:
    path = Path(args.recording)
    try:
        if path.suffix == ".npz":
            if args.out:
                raise ValueError("--out is for JSONL recordings; an NPZ is merged beside its parts")
            print(f"recovered {path}: merged into {recover_npz(path)}")
        elif path.suffix == ".jsonl":
            print(terminal_safe(recover_jsonl(path, Path(args.out) if args.out else None)))
        else:
            raise ValueError(f"recording {path}: expected .npz or .jsonl, got {path.suffix!r}")
    except (ValueError, FileNotFoundError, OSError) as err:
        log.error("%s", err)
        return 2
    return 0
