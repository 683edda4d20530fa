"""training.data: the memory-mapped dataset gives the same batches as the in-memory one, and
builds with memory bounded by one sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import data
from training.config import resolve


def _cfg(root, cache_dir="", **model):
    return resolve("tiny", flags={"data": {"root": str(root), "cache_dir": str(cache_dir)},
                                  "model": {"modalities": ["rgb", "lidar", "wifi"], **model}})


@pytest.fixture(scope="module")
def both(tiny_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("array-cache")
    return (data.load_split(_cfg(tiny_dataset), "test", progress=False),
            data.load_split(_cfg(tiny_dataset, cache), "test", progress=False), cache)


def test_mapped_split_keeps_inputs_on_disk_and_small_arrays_in_memory(both):
    memory, mapped, cache = both
    assert not memory.mapped and set(mapped.mapped) == set(data.MAPPED_KEYS)
    assert all(isinstance(a, np.memmap) for a in mapped.mapped.values())
    assert set(mapped.tensors) == {"joints", "presence"}
    assert len(mapped) == len(memory) > 0
    folder = next(cache.glob("test-*"))
    assert (folder / data.COMPLETE).is_file() and not list(cache.glob("*.tmp"))


def test_mapped_batches_equal_in_memory_batches(both):
    memory, mapped, _ = both
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(memory), generator=gen)[:37]
    a, b = memory.batch(idx), mapped.batch(idx)
    assert set(a) == set(b) == set(data.TENSOR_KEYS)
    for k in data.TENSOR_KEYS:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # disabled modality (mmwave) is absent in both
    assert (b["presence"][:, 2] == 0).all()
    for k in data.META_KEYS:
        np.testing.assert_array_equal(memory.meta[k], mapped.meta[k])


def test_take_composes_without_reading_the_inputs(both):
    memory, mapped, _ = both
    first = data.evenly_spaced(len(memory), 100)
    sub_m, sub_d = memory.take(first), mapped.take(first)
    assert sub_d.mapped is mapped.mapped and len(sub_d.rows) == 100      # rows, not copies
    second = np.array([99, 3, 50, 0])
    a, b = sub_m.take(second), sub_d.take(second)
    torch.testing.assert_close(a.batch(torch.arange(4)), b.batch(torch.arange(4)), rtol=0, atol=0)
    np.testing.assert_array_equal(a.meta["frame"], b.meta["frame"])


def test_a_partial_cache_folder_is_not_read(tiny_dataset, tmp_path):
    cfg = _cfg(tiny_dataset, tmp_path)
    folder = tmp_path / f"test-{data._cache_key(cfg, 'test')}"
    folder.mkdir()
    (folder / "joints.npy").write_bytes(b"half-written")
    with pytest.raises(FileNotFoundError, match="not a complete array cache"):
        data.open_mapped(folder)
    split = data.load_split(cfg, "test", progress=False)      # load_split rebuilds it
    assert len(split) > 0


def test_build_memory_is_bounded_by_one_sequence(tiny_dataset, tmp_path):
    """Building the mapped cache holds one sequence at a time: its peak allocation does not grow
    with the number of sequences (1 vs 3), unlike the in-memory arrays it replaces."""
    import tracemalloc

    cfg = _cfg(tiny_dataset, tmp_path, lidar_cap=256)
    ds = data._dataset(cfg, "train")
    key = ds.keys[0]
    peaks = {}
    for n in (1, 3):
        ds.keys = [key] * n
        tracemalloc.start()
        data.build_mapped(cfg, "train", tmp_path / f"train-{n}", progress=False, dataset=ds)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    mapped = data.open_mapped(tmp_path / "train-3")
    arrays_3 = sum(a.nbytes for a in mapped.mapped.values())
    assert len(mapped) == 3 * 297
    # Three sequences peak no higher than one plus half a sequence's arrays: nothing accumulates.
    assert peaks[3] - peaks[1] < 0.5 * arrays_3 / 3, (peaks, arrays_3)
