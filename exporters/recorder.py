"""Recorders of the pose stream: JSONL or NPZ, chosen by the file suffix.

A record is a flat dict of one tick: scalars and numpy arrays (``joints`` [17,3], ``presence`` [4],
``shapley`` [4], ...). Writers are chosen from ``RECORDERS`` by suffix:

* ``.jsonl``: one JSON object per tick, arrays as nested lists, flushed after every line, so a
  killed process loses at most the line being written.
* ``.npz``: ticks are held in memory (bounded by ``max_ticks`` and ``max_mb``; later ticks are
  counted as ``skipped`` and not stored) and written at ``close()`` to a temporary file renamed into place,
  one array per key stacked over ticks ([T, ...]). Records may carry different keys (e.g. ``gt``
  only on some ticks): a key missing at a tick is stored as NaN (float) or 0 and a boolean
  ``has_<key>`` [T] says where it was set. The runtime closes the recorder on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class JsonlRecorder:
    def __init__(self, path: str | Path, **_):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.written = 0

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_jsonable(record), allow_nan=True) + "\n")
        self._f.flush()
        self.written += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


class NpzRecorder:
    def __init__(self, path: str | Path, max_ticks: int = 100_000, max_mb: float = 512.0, **_):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_ticks = max_ticks
        self.max_bytes = int(max_mb * 1e6)
        self._bytes = 0
        self._records: list[dict] = []
        self.skipped = 0
        self.written = 0
        self._closed = False

    def write(self, record: dict) -> None:
        arrays = {k: np.asarray(v) for k, v in record.items()}
        size = sum(a.nbytes for a in arrays.values())
        if len(self._records) >= self.max_ticks or self._bytes + size > self.max_bytes:
            if self.skipped == 0:
                log.warning("NPZ recorder %s is full (%d ticks, %.0f MB; bounds %d ticks, %.0f MB): later ticks "
                            "are not recorded", self.path, len(self._records), self._bytes / 1e6, self.max_ticks,
                            self.max_bytes / 1e6)
            self.skipped += 1
            return
        self._records.append(arrays)
        self._bytes += size

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        arrays = stack_records(self._records)
        arrays["skipped_ticks"] = np.asarray(self.skipped)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path)
        self.written = len(self._records)
        self._records = []


def stack_records(records: list[dict]) -> dict[str, np.ndarray]:
    """List of per-tick dicts -> one [T, ...] array per key (missing entries filled, see module doc)."""
    keys: dict[str, np.ndarray] = {}
    for r in records:
        for k, v in r.items():
            keys.setdefault(k, v)
    out: dict[str, np.ndarray] = {}
    for k, example in keys.items():
        fill = np.nan if np.issubdtype(example.dtype, np.floating) else 0
        rows, has = [], []
        for r in records:
            v = r.get(k)
            ok = v is not None and v.shape == example.shape
            has.append(ok)
            rows.append(v if ok else np.full(example.shape, fill, dtype=example.dtype))
        out[k] = np.stack(rows) if rows else np.zeros((0, *example.shape), example.dtype)
        if not all(has):
            out[f"has_{k}"] = np.asarray(has)
    return out


RECORDERS = {".jsonl": JsonlRecorder, ".npz": NpzRecorder}


def open_recorder(path: str | Path, max_ticks: int = 100_000, max_mb: float = 512.0):
    """The recorder for ``path``'s suffix (``.jsonl`` or ``.npz``)."""
    suffix = Path(path).suffix
    if suffix not in RECORDERS:
        raise ValueError(f"recorder path {path}: expected a suffix in {sorted(RECORDERS)}, got {suffix!r}")
    return RECORDERS[suffix](path, max_ticks=max_ticks, max_mb=max_mb)
