"""The training array cache is keyed by the data on disk, not only by its path."""

from __future__ import annotations

import os

import numpy as np

from sensors.core import schema
from training import data
from training.config import from_dict


def _write_gt(root, value: float) -> None:
    seq = root / "E01" / "S01" / "A02"
    seq.mkdir(parents=True, exist_ok=True)
    np.save(seq / schema.MMFI_GT_FILE, np.full((schema.FRAMES_PER_SEQUENCE, 17, 3), value, np.float32))


def test_cache_key_changes_when_the_dataset_is_regenerated_at_the_same_root(tmp_path):
    _write_gt(tmp_path, 1.0)
    cfg = from_dict({"data": {"root": str(tmp_path)}})
    first = data._cache_key(cfg, "train")
    assert data._cache_key(cfg, "train") == first  # stable while nothing changes
    gt = tmp_path / "E01" / "S01" / "A02" / schema.MMFI_GT_FILE
    st = gt.stat()
    _write_gt(tmp_path, 2.0)
    os.utime(gt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert data._cache_key(cfg, "train") != first
    second = data._cache_key(cfg, "train")
    (tmp_path / "notes").mkdir()  # a stray folder is not a sequence: no change
    np.save(tmp_path / "notes" / schema.MMFI_GT_FILE, np.zeros(3))
    assert data._cache_key(cfg, "train") == second
