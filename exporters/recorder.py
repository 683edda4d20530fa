"""Recorders of the pose stream: JSONL or NPZ, chosen by the file suffix. Never truncate.

A recorded tick is the row of a ``sensors.core.pose_record.PoseRecord`` (``to_row``: a flat dict of
scalars and numpy arrays, ``joints`` [17,3], ``presence`` [4], ``shapley`` [4], ...); ``read_rows``
reads them back for ``PoseRecord.from_row``. Writers are chosen from ``RECORDERS`` by suffix.

Flush policy (what a crash can lose):

* ``.jsonl``: one JSON object per tick, **appended** to the file (a restart with the same path
  adds to it). Every line is written to the OS at once (a killed process loses at most the line
  being written); the file is fsync'ed at least every ``flush_s`` (1 s), so a power cut loses at
  most the last second. A file whose last line was cut short (``kill -9`` mid-line) gets a line
  break first, so the fragment stays one bad line and the new records start on their own; readers
  skip and count bad lines. With ``rotate_mb`` > 0 a file that grows beyond it is renamed to
  ``NAME.<UTC time>.jsonl`` and a new one started.
* ``.npz``: ticks go into chunk files ``NAME.npz.parts/part-NNNNNN.npz``, one written (temporary
  file, fsync, atomic rename) at least every ``flush_s``: after ``kill -9`` every part already
  written is a complete, readable NPZ and only the last second is lost. ``close()`` merges the
  parts into ``NAME.npz`` (atomic rename) and removes them. An existing ``NAME.npz`` is never
  overwritten: it is first rotated to ``NAME.<UTC time>.npz``; parts left by a crash are merged
  into such a rotated file when the recorder opens (``recover_parts``, also usable by hand). The
  merged file holds one array per key stacked over ticks ([T, ...]); records may carry different
  keys (e.g. ``gt`` only on some ticks): a missing entry is NaN (float) or 0 and a boolean
  ``has_<key>`` [T] says where it was set. Bounded by ``max_ticks`` and ``max_mb`` (later ticks
  are counted as ``skipped``, not stored). After a crash, ``read_recording`` reads the parts of a
  ``NAME.npz`` that was never merged, and ``runtime recover NAME.npz`` merges them.

Reading: ``read_recording`` (rows, and the lines or parts it had to skip) and ``read_rows`` (the
rows, a warning for what was skipped) are the one reader of recording files.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensors.core.pose_record import PoseRecord

log = logging.getLogger(__name__)

FLUSH_S = 1.0   # a crash loses at most this much of the recording


def jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _row(record: PoseRecord | Mapping) -> Mapping:
    """The row of a tick: a PoseRecord's ``to_row``, or a row already made."""
    return record.to_row() if isinstance(record, PoseRecord) else record


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def rotated_name(path: Path) -> Path:
    """``NAME.<UTC time>.SUFFIX`` beside ``path``, not yet taken."""
    base = path.with_name(f"{path.stem}.{_stamp()}{path.suffix}")
    candidate, n = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{path.stem}.{_stamp()}-{n}{path.suffix}")
        n += 1
    return candidate


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonlRecorder:
    def __init__(self, path: str | Path, flush_s: float = FLUSH_S, rotate_mb: float = 0.0, **_):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_s, self.rotate_bytes = float(flush_s), int(rotate_mb * 1e6)
        self.torn = _ends_mid_line(self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close(); append: never truncate
        if self.torn:   # a line cut short by a killed process: it stays one bad line of its own
            self._f.write("\n")
            log.warning("%s ended in the middle of a line (a killed process?): new records start on a new line; "
                        "readers skip the cut one", self.path)
        self._synced = time.monotonic()
        self.written = 0
        self.rotated: list[Path] = []

    def write(self, record: PoseRecord | Mapping) -> None:
        self._f.write(json.dumps(jsonable(_row(record)), allow_nan=True) + "\n")
        self._f.flush()
        self.written += 1
        if time.monotonic() - self._synced >= self.flush_s:
            os.fsync(self._f.fileno())
            self._synced = time.monotonic()
        if self.rotate_bytes and self._f.tell() >= self.rotate_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self.close()
        target = rotated_name(self.path)
        os.replace(self.path, target)
        self.rotated.append(target)
        log.info("recording rotated to %s", target)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def keep_previous(path: str | Path) -> Path | None:
    """Move an existing ``path`` aside to ``NAME.<UTC time>.SUFFIX`` (the config saved beside a
    recording: a restart keeps the previous run's); returns where it went."""
    path = Path(path)
    if not path.exists():
        return None
    target = rotated_name(path)
    os.replace(path, target)
    return target


def parts_dir(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".parts")


PART_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)   # an unreadable part file


def load_parts(folder: str | Path, unreadable: list[str] | None = None) -> list[dict]:
    """Per-tick records from the readable part files of ``folder`` (a part being written when the
    process died is a ``.tmp`` file and is skipped; a part that cannot be read is skipped and its
    name added to ``unreadable``)."""
    records: list[dict] = []
    for part in sorted(Path(folder).glob("part-*.npz")):
        try:
            with np.load(part, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            n = int(arrays.pop("ticks_in_part"))
        except PART_ERRORS as err:
            log.warning("%s cannot be read (%s): skipped", part, err)
            if unreadable is not None:
                unreadable.append(part.name)
            continue
        has = {k[4:]: arrays.pop(k) for k in list(arrays) if k.startswith("has_")}
        for i in range(n):
            records.append({k: v[i] for k, v in arrays.items() if k not in has or has[k][i]})
    return records


def recover_parts(path: str | Path, target: str | Path | None = None) -> Path | None:
    """Merge the parts a crashed recorder left for ``path`` into ``target`` (default: a rotated
    NPZ beside it), then remove them; returns the file written (or None: no parts)."""
    folder = parts_dir(path)
    if not folder.is_dir():
        return None
    unreadable: list[str] = []
    records = load_parts(folder, unreadable)
    written = None
    if records:
        written = Path(target) if target is not None else rotated_name(Path(path))
        _write_npz(written, stack_records(records), skipped=0)
        log.warning("recovered %d ticks of an interrupted recording into %s", len(records), written)
    for f in folder.iterdir():
        if f.name not in unreadable:
            f.unlink()
    if unreadable:   # never deleted: set aside for a look by hand
        aside = folder.with_name(f"{folder.name}.unreadable-{_stamp()}")
        os.replace(folder, aside)
        log.warning("%d unreadable part(s) of %s kept in %s", len(unreadable), path, aside)
    else:
        folder.rmdir()
    return written


def _write_npz(path: Path, arrays: dict[str, np.ndarray], skipped: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, skipped_ticks=np.asarray(skipped))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class NpzRecorder:
    def __init__(self, path: str | Path, max_ticks: int = 100_000, max_mb: float = 512.0,
                 flush_s: float = FLUSH_S, **_):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.recovered = recover_parts(self.path)
        self.rotated: Path | None = None
        if self.path.exists():
            self.rotated = rotated_name(self.path)
            os.replace(self.path, self.rotated)
            log.info("existing recording %s kept as %s", self.path, self.rotated)
        self.parts = parts_dir(self.path)
        self.parts.mkdir()
        self.max_ticks, self.max_bytes, self.flush_s = max_ticks, int(max_mb * 1e6), float(flush_s)
        self._bytes = 0
        self._pending: list[dict] = []
        self._stored = 0
        self._n_parts = 0
        self._flushed = time.monotonic()
        self.skipped = 0
        self.written = 0
        self._closed = False

    def write(self, record: PoseRecord | Mapping) -> None:
        arrays = {k: np.asarray(v) for k, v in _row(record).items()}
        size = sum(a.nbytes for a in arrays.values())
        if self._stored >= self.max_ticks or self._bytes + size > self.max_bytes:
            if self.skipped == 0:
                log.warning("NPZ recorder %s is full (%d ticks, %.0f MB; bounds %d ticks, %.0f MB): later ticks "
                            "are not recorded", self.path, self._stored, self._bytes / 1e6, self.max_ticks,
                            self.max_bytes / 1e6)
            self.skipped += 1
            return
        self._pending.append(arrays)
        self._stored += 1
        self._bytes += size
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending ticks as one part file (complete and readable once renamed)."""
        self._flushed = time.monotonic()
        if not self._pending:
            return
        arrays = stack_records(self._pending)
        arrays["ticks_in_part"] = np.asarray(len(self._pending))
        part = self.parts / f"part-{self._n_parts:06d}.npz"
        tmp = part.with_name(part.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, part)
        self._n_parts += 1
        self._pending = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush()
        records = load_parts(self.parts)
        _write_npz(self.path, stack_records(records), self.skipped)
        for f in self.parts.iterdir():
            f.unlink()
        self.parts.rmdir()
        self.written = len(records)


def stack_records(records: list[dict]) -> dict[str, np.ndarray]:
    """List of per-tick dicts -> one [T, ...] array per key (missing entries filled, see module doc)."""
    keys: dict[str, np.ndarray] = {}
    for r in records:
        for k, v in r.items():
            keys.setdefault(k, np.asarray(v))
    out: dict[str, np.ndarray] = {}
    for k, example in keys.items():
        fill = np.nan if np.issubdtype(example.dtype, np.floating) else 0
        rows, has = [], []
        for r in records:
            v = r.get(k)
            v = None if v is None else np.asarray(v)
            ok = v is not None and v.shape == example.shape
            has.append(ok)
            rows.append(v if ok else np.full(example.shape, fill, dtype=example.dtype))
        out[k] = np.stack(rows) if rows else np.zeros((0, *example.shape), example.dtype)
        if not all(has):
            out[f"has_{k}"] = np.asarray(has)
    return out


RECORDERS = {".jsonl": JsonlRecorder, ".npz": NpzRecorder}


def open_recorder(path: str | Path, max_ticks: int = 100_000, max_mb: float = 512.0, flush_s: float = FLUSH_S,
                  rotate_mb: float = 0.0):
    """The recorder for ``path``'s suffix (``.jsonl`` or ``.npz``)."""
    suffix = Path(path).suffix
    if suffix not in RECORDERS:
        raise ValueError(f"recorder path {path}: expected a suffix in {sorted(RECORDERS)}, got {suffix!r}")
    return RECORDERS[suffix](path, max_ticks=max_ticks, max_mb=max_mb, flush_s=flush_s, rotate_mb=rotate_mb)


# ----------------------------------------------------------------------------------------------
# Reading a recording back
# ----------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """What ``read_recording`` read: the rows, and what it had to skip."""

    path: Path
    rows: list[dict] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)     # JSONL: line numbers that are not a JSON object
    from_parts: bool = False                               # NPZ: read from the parts of an unmerged recording
    bad_parts: list[str] = field(default_factory=list)     # NPZ parts that could not be read

    @property
    def skipped(self) -> int:
        return len(self.bad_lines) + len(self.bad_parts)

    def describe_skipped(self) -> str:
        """One line for the user about what was skipped ('' when nothing was)."""
        out = []
        if self.bad_lines:
            shown = ", ".join(map(str, self.bad_lines[:5])) + (" ..." if len(self.bad_lines) > 5 else "")
            out.append(f"{len(self.bad_lines)} unreadable line(s) skipped (line {shown}; a line cut short by a "
                       "killed process is the usual cause)")
        if self.bad_parts:
            out.append(f"{len(self.bad_parts)} unreadable part file(s) skipped ({', '.join(self.bad_parts[:5])})")
        if self.from_parts:
            out.append(f"read from the parts of an interrupted recording ({parts_dir(self.path)}); "
                       f"`runtime recover {self.path}` merges them")
        return "; ".join(out)


def read_recording(path: str | Path) -> Recording:
    """The rows of a JSONL or NPZ recording, in file order (``PoseRecord.from_row`` reads each),
    skipping and counting what cannot be read: JSONL lines that are not a JSON object, NPZ part
    files that cannot be opened. An ``.npz`` never merged (a killed recorder) is read from its parts.
    NPZ: an entry whose ``has_<key>`` is false was not recorded at that tick and is left out."""
    path = Path(path)
    if path.suffix not in RECORDERS:
        raise ValueError(f"recording {path}: expected a suffix in {sorted(RECORDERS)} (a pose recording made by "
                         f"`runtime serve --record`), got {path.suffix!r}")
    if path.suffix == ".npz" and not path.is_file() and parts_dir(path).is_dir():
        rec = Recording(path, from_parts=True)
        rec.rows = [dict(r) for r in load_parts(parts_dir(path), rec.bad_parts)]
        return rec
    if not path.is_file():
        raise FileNotFoundError(f"recording {path} not found: record one with `runtime serve --record FILE` "
                                "or `runtime replay --record FILE`")
    return _jsonl_recording(path) if path.suffix == ".jsonl" else Recording(path, _npz_rows(path))


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a recording (``read_recording``); what had to be skipped is logged."""
    rec = read_recording(path)
    if rec.skipped or rec.from_parts:
        log.warning("recording %s: %s", rec.path, rec.describe_skipped())
    return rec.rows


def _jsonl_recording(path: Path) -> Recording:
    rec = Recording(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                row = None
            if isinstance(row, dict):
                rec.rows.append(row)
            else:
                rec.bad_lines.append(lineno)
    if rec.bad_lines and not rec.rows:
        raise ValueError(f"{path}: none of its lines is a JSON object (line {rec.bad_lines[0]} first); expected a "
                         "pose recording of `runtime serve --record`, one JSON object per line")
    return rec


def _npz_rows(path: Path) -> list[dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except PART_ERRORS as err:
        raise ValueError(f"recording {path} cannot be read as NPZ ({err}): expected a pose recording of "
                         "`runtime serve --record FILE.npz`") from err
    has = {k[4:]: data.pop(k) for k in list(data) if k.startswith("has_")}
    n = len(data.get("tick", ()))
    arrays = {k: v for k, v in data.items() if v.ndim >= 1 and len(v) == n}   # not skipped_ticks
    return [{k: v[i] for k, v in arrays.items() if k not in has or bool(has[k][i])} for i in range(n)]
