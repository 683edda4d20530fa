"""Hostile dataset files: the MM-Fi reader raises a clear error or reads the frame as absent (counted),
and ``sensors inspect`` lists each as a problem instead of misreading or crashing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sensors import inspect as mmfi_inspect
from sensors import mmfi
from sensors.core import schema
from tests.test_mmfi_reader import write_sequence


@pytest.fixture
def seq(tmp_path) -> Path:
    return write_sequence(tmp_path, "S31", "A02", seed=2)


def _room_points(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(1, 5, n), rng.uniform(-1.5, 1.5, n), rng.uniform(-1, 1.2, n)]


def _problems(root) -> list[str]:
    return mmfi_inspect.dataset_summary(root)["problems"]


def test_float32_lidar_file_is_refused_and_listed(seq):
    path = mmfi.frame_path(seq, "lidar", 10)
    _room_points(400).astype("<f4").tofile(path)   # 400 x 3 x 4 B: a multiple of 24, would misread as 200 points
    with pytest.raises(mmfi.MMFiFormatError, match="float32"):
        mmfi.read_points(path, "lidar")
    assert any(str(path) in p and "float32" in p for p in _problems(seq.parents[2]))


def test_five_column_lidar_file_is_refused_and_listed(seq):
    rng = np.random.default_rng(1)
    radar = np.c_[rng.uniform(1, 4, (300, 3)) * [1, 0.5, 0.5], rng.uniform(5, 40, 300), rng.normal(0, 1, 300)]
    path = mmfi.frame_path(seq, "lidar", 11)
    radar.astype("<f8").tofile(path)   # 300 x 40 B: a multiple of 24, would misread as 500 LiDAR points
    with pytest.raises(mmfi.MMFiFormatError, match="5 columns"):
        mmfi.read_points(path, "lidar")
    assert any(str(path) in p and "5 columns" in p for p in _problems(seq.parents[2]))


def test_genuine_point_files_pass_the_checks(seq):
    for n in (8, 300, 4000):
        assert mmfi.point_file_problem(_room_points(n).astype("<f8").tobytes(), "lidar") is None
    quarter = np.round(_room_points(300) * 4) / 4   # round values: low halves of the doubles are zero
    assert mmfi.point_file_problem(quarter.astype("<f8").tobytes(), "lidar") is None
    assert mmfi_inspect.dataset_summary(seq.parents[2])["problem_count"] == 0


def test_all_nan_keypoints_are_absent_and_counted(seq):
    path = mmfi.frame_path(seq, "rgb", 20)
    np.save(path, np.full((17, 2), np.nan, np.float32))
    assert mmfi.read_frame_status(seq, "rgb", 20) == (None, "invalid")
    ds = mmfi.MMFiDataset(seq.parents[2], "P1", "S1", "train")
    key = ds.keys[0]
    index = ds.keys.index(key) * schema.FRAMES_PER_SEQUENCE + 20
    sample = ds[index]
    assert sample["presence"][schema.MODALITY_INDEX["rgb"]] == 0   # absent, not NaN inputs with presence 1
    assert np.isfinite(sample["rgb"]).all() and ds.invalid["rgb"] >= 1
    summary = mmfi_inspect.dataset_summary(seq.parents[2])
    assert summary["modalities"]["rgb"]["invalid"] == 1
    assert any(str(path) in p and "NaN" in p for p in summary["problems"])


def test_too_many_points_are_listed_by_inspect(seq):
    path = mmfi.frame_path(seq, "lidar", 12)
    _room_points(70_000).astype("<f8").tofile(path)
    with pytest.raises(mmfi.MMFiFormatError, match="at most"):
        mmfi.read_points(path, "lidar")
    assert any(str(path) in p and "70000" in p for p in _problems(seq.parents[2]))


def test_unreadable_file_and_folder_are_problems_not_tracebacks(seq, monkeypatch):
    bad_file = mmfi.frame_path(seq, "lidar", 13)
    bad_folder = seq / schema.MMFI_FOLDERS["mmwave"]
    real_read, real_iterdir = Path.read_bytes, Path.iterdir

    def read_bytes(self):
        if self == bad_file:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    def iterdir(self):
        if self == bad_folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(mmfi.MMFiFormatError, match="cannot be read"):
        mmfi.read_points(bad_file, "lidar")
    problems = _problems(seq.parents[2])
    assert any(str(bad_file) in p and "cannot be read" in p for p in problems)
    assert any(str(bad_folder) in p and "cannot be read" in p for p in problems)
    with pytest.raises(mmfi.MMFiLayoutError, match="cannot be read"):
        mmfi._named_dirs(bad_folder, ["x"])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_unreadable_files_by_permission(seq):
    path = mmfi.frame_path(seq, "lidar", 14)
    path.chmod(0)
    folder = seq / schema.MMFI_FOLDERS["wifi"]
    folder.chmod(0)
    try:
        problems = _problems(seq.parents[2])
        assert any(str(path) in p for p in problems) and any(str(folder) in p for p in problems)
    finally:
        path.chmod(0o644)
        folder.chmod(0o755)
