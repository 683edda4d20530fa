"""Datasets (in memory or memory-mapped) and deterministic batching.

MM-Fi-format data (the real release or a generated one) is read once by ``sensors.mmfi`` into
stacked arrays: on a 2-core machine a per-sample DataLoader over files would spend more time in
Python than in the model. Two ways to hold them:

* no ``data.cache_dir``: in memory as tensors (small datasets, tests);
* with ``data.cache_dir``: written once, sequence by sequence, into one ``.npy`` file per key
  (``<cache_dir>/<subset>-<key>/``) and opened memory-mapped. Only the small per-frame arrays
  (joints, presence, metadata) are loaded; the model inputs (rgb, lidar, mmwave, wifi and masks)
  stay on disk and each batch reads its rows. Memory is bounded by one sequence while building
  and by the batch while training (plus the OS page cache, which the kernel evicts as needed), so
  the full MM-Fi (P3: 320k frames, ~45 KB each at the paper's caps) trains on a machine whose RAM
  is far smaller than the dataset, and every DDP rank on the host shares the same cached pages.

Array keys (N = frames): rgb [N,R,17,2], lidar [N,Cl,3], lidar_mask [N,Cl] bool, mmwave [N,Cm,5],
mmwave_mask [N,Cm] bool, wifi [N,3,114,20], presence [N,4], joints [N,17,3] metres; metadata
env / subject / action (str) and frame (int).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sensors.core import preprocess, schema
from training.config import Config, DataConfig, model_contract

log = logging.getLogger(__name__)

TENSOR_KEYS = (*schema.MODEL_INPUTS, "joints")
META_KEYS = ("env", "subject", "action", "frame")
MAPPED_KEYS = tuple(n for n in schema.MODEL_INPUTS if n != "presence")   # the modalities' inputs: big, stay on disk
COMPLETE = "complete.json"   # written last into a memory-mapped cache folder


@dataclass
class Split:
    """One split: tensors in memory (float32 / bool), per-frame metadata (numpy) and, for a
    memory-mapped dataset, the big input arrays on disk (``mapped``, rows ``rows`` of them)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, np.ndarray]
    mapped: dict[str, np.ndarray] = field(default_factory=dict)   # np.memmap [N_all, ...], read per batch
    rows: np.ndarray | None = None                                # this split's rows of ``mapped`` (None = all)

    def __len__(self) -> int:
        return int(self.tensors["joints"].shape[0])

    def take(self, idx: torch.Tensor | np.ndarray) -> Split:
        idx_np = np.asarray(idx, dtype=np.int64)
        idx_t = torch.as_tensor(idx_np, dtype=torch.long)
        rows = None if not self.mapped else (idx_np if self.rows is None else self.rows[idx_np])
        return Split({k: v[idx_t] for k, v in self.tensors.items()},
                     {k: v[idx_np] for k, v in self.meta.items()}, self.mapped, rows)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {k: v[idx] for k, v in self.tensors.items()}
        if self.mapped:
            i = np.asarray(idx, dtype=np.int64)
            rows = i if self.rows is None else self.rows[i]
            for k, a in self.mapped.items():   # reads only these rows from disk (or the page cache)
                out[k] = torch.from_numpy(np.ascontiguousarray(a[rows]))
        return out


def from_arrays(arrays: dict[str, np.ndarray], modalities: tuple[str, ...] = schema.MODALITIES) -> Split:
    """Stacked arrays -> Split. Presence of disabled modalities is forced to 0."""
    missing = [k for k in TENSOR_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"dataset arrays lack {missing}; expected keys {list(TENSOR_KEYS)}")
    tensors = {}
    for k in TENSOR_KEYS:
        a = np.asarray(arrays[k])
        tensors[k] = torch.from_numpy(np.ascontiguousarray(a.astype(bool if k.endswith("_mask") else np.float32)))
    enabled = torch.tensor([1.0 if m in modalities else 0.0 for m in schema.MODALITIES])
    tensors["presence"] = tensors["presence"] * enabled
    n = tensors["joints"].shape[0]
    meta = {k: np.asarray(arrays[k]) if k in arrays else np.array([""] * n) for k in META_KEYS}
    return Split(tensors, meta)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """k evenly spaced indices of range(n) (all of them if k <= 0 or k >= n)."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def sequence_ids(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(the split's distinct ``env/subject/action`` recordings, sorted; each frame's index into them)."""
    return group_ids(split, "recording")


# What a validation hold-out groups by, per split: the unit the split generalises across (S2 tests
# unseen subjects, S3 unseen rooms; with only three training rooms a held-out room would take a third
# of the data, so S3 holds out subjects too, the next unit that is unseen at test time).
HOLDOUT_UNIT: dict[str, str] = {"S1": "recording", "S2": "subject", "S3": "subject"}


UNIT_FIELDS: dict[str, tuple[str, ...]] = {"recording": ("env", "subject", "action"), "subject": ("env", "subject")}


def group_ids(split: Split, unit: str = "recording") -> tuple[np.ndarray, np.ndarray]:
    """(the split's distinct groups, sorted; each frame's index into them): ``recording`` =
    ``env/subject/action``, ``subject`` = ``env/subject`` (``UNIT_FIELDS``)."""
    if unit not in UNIT_FIELDS:
        raise ValueError(f"unknown hold-out unit {unit!r}: one of {sorted(UNIT_FIELDS)}")
    fields = [split.meta[f].astype(str) for f in UNIT_FIELDS[unit]]
    keys = fields[0]
    for f in fields[1:]:
        keys = np.char.add(np.char.add(keys, "/"), f)
    return np.unique(keys, return_inverse=True)


def split_sequences(split: Split, n_groups: int, unit: str = "recording") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(held-out frame indices, kept frame indices, held-out recordings): every frame of
    ``n_groups`` whole recordings (``unit="recording"``) or whole subjects (``"subject"``), taken
    evenly through the sorted list of them, leaves the kept set. Whole recordings because frames
    interleaved with trained ones are near-copies of them at 10 Hz: their error tracks the training
    error and says nothing of unseen recordings; whole subjects where the test's are unseen."""
    groups, inverse = group_ids(split, unit)
    chosen = evenly_spaced(len(groups), n_groups) if n_groups > 0 else np.zeros(0, np.int64)
    out = np.isin(inverse, chosen)
    seqs, seq_of = sequence_ids(split)
    return np.flatnonzero(out), np.flatnonzero(~out), [str(k) for k in seqs[np.unique(seq_of[out])]]


def holdout_sequences(train: Split, frames: int, per_sequence: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """G-Blending's held-out frames: (held-out frame indices, kept frame indices), ``frames``
    frames evenly spread over ceil(frames / per_sequence) whole recordings (``split_sequences``);
    every frame of those recordings leaves the kept set. At most a quarter of the recordings is
    held out; with fewer than 4 recordings, evenly spaced frames instead."""
    seqs, _ = sequence_ids(train)
    if len(seqs) < 4:
        hold = evenly_spaced(len(train), min(frames, len(train) // 4))
        return hold, np.setdiff1d(np.arange(len(train)), hold)
    pool, kept, _ = split_sequences(train, min(len(seqs) // 4, max(1, -(-frames // per_sequence))))
    return pool[evenly_spaced(len(pool), min(frames, len(pool)))], kept


@dataclass
class Validation:
    """The frames that choose ``best.pt`` and where they come from."""

    frames: Split                  # evaluated every epoch (at most data.max_val, evenly spaced)
    source: str                    # "sequences" (held-out training recordings) or "test"
    sequences: list[str] = field(default_factory=list)   # the held-out recordings (env/subject/action)
    note: str = ""                 # why the test subset stands in for held-out recordings, if it does
    unit: str = "recording"        # what was held out whole: "recording" or "subject" (HOLDOUT_UNIT)

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"set": self.source, "frames": len(self.frames)}
        if self.source == "sequences":
            out["unit"] = self.unit
            out["sequences"] = list(self.sequences)
        if self.note:
            out["note"] = self.note
        return out


def hold_out_validation(data: DataConfig, train: Split, test: Split) -> tuple[Split, Validation]:
    """(the frames to train on, the validation set) per ``data.validation``.

    ``sequences``: whole training recordings are held out of training and validate. They are
    grouped by the unit the split generalises across (``HOLDOUT_UNIT``): S1 holds out
    round(val_fraction x recordings) recordings, S2 and S3 round(val_fraction x subjects) whole
    subjects (every recording of theirs), so that validation, like the test, sees no frame of the
    held-out people. At least one group is held out and one always stays for training; too few
    groups to hold one out (fewer than 1 / (2 x val_fraction), or only one) falls back to the test
    subset, saying so in ``Validation.note``. ``test``: the training frames are untouched and the
    test subset validates, as before held-out validation existed."""
    def on_test(note: str = "") -> tuple[Split, Validation]:
        return train, Validation(test.take(evenly_spaced(len(test), data.max_val)), "test", note=note)

    if data.validation == "test":
        return on_test()
    unit = HOLDOUT_UNIT.get(data.split, "recording")
    groups, _ = group_ids(train, unit)
    n = min(int(np.floor(data.val_fraction * len(groups) + 0.5)), len(groups) - 1)
    if n < 1:
        return on_test(f"data.validation=sequences: {len(groups)} training {unit}(s) are too few to hold out "
                       f"{data.val_fraction:g} of them, so the test subset validates and chooses best.pt "
                       f"(more {unit}s or a larger data.val_fraction avoid this)")
    held, kept, keys = split_sequences(train, n, unit)
    val = train.take(held)
    return train.take(kept), Validation(val.take(evenly_spaced(len(val), data.max_val)), "sequences", keys,
                                        unit=unit)


def _data_fingerprint(root: Path) -> str:
    """Size and modification time of every sequence's ground truth: a dataset regenerated or
    replaced at the same root gets a new cache key (a cheap stat per sequence, no reading)."""
    h = hashlib.sha256()
    for p in sorted(root.glob(f"E*/S*/A*/{schema.MMFI_GT_FILE}")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _cache_key(cfg: Config, subset: str) -> str:
    d = {"root": str(Path(cfg.data.root).resolve()), "data": _data_fingerprint(Path(cfg.data.root)),
         "protocol": cfg.data.protocol, "split": cfg.data.split,
         "seed": cfg.data.split_seed, "subset": subset,
         "preprocessing": model_contract(cfg).preprocessing_settings(), "schema": schema.SCHEMA_VERSION,
         "preprocess": hashlib.sha256(Path(preprocess.__file__).read_bytes()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def read_arrays(cfg: Config, subset: str, progress: bool = True) -> dict[str, np.ndarray]:
    """Read one subset ("train" | "test") of the configured protocol/split into memory with
    ``sensors.mmfi`` (all four modalities, so one read serves every modality subset; the model's
    enabled modalities are applied in ``from_arrays``). Large datasets: ``load_split`` with a
    ``data.cache_dir`` instead."""
    return _dataset(cfg, subset).load_arrays(progress=progress)


def _dataset(cfg: Config, subset: str):
    from sensors.mmfi import MMFiDataset

    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found: point --data at an MM-Fi-format folder "
                                f"(E01/S01/A02/...) or generate one with `sensors simulate --preset bench`")
    return MMFiDataset(root, protocol=cfg.data.protocol, split=cfg.data.split, subset=subset,
                       seed=cfg.data.split_seed, contract=model_contract(cfg), modalities=schema.MODALITIES)


def build_mapped(cfg: Config, subset: str, folder: Path, progress: bool = True, dataset=None) -> Path:
    """Write one subset as memory-mappable ``.npy`` files (one per key, [N, ...]) into ``folder``,
    sequence by sequence: peak memory is one sequence's arrays. Built in a temporary folder and
    renamed into place, so a half-written cache is never read (ranks may build at once)."""
    from tqdm import tqdm

    ds = dataset if dataset is not None else _dataset(cfg, subset)
    n_seq, per = len(ds.keys), schema.FRAMES_PER_SEQUENCE
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, np.ndarray] = {}
    for s, key in enumerate(tqdm(ds.keys, desc=f"caching {subset} sequences", unit="seq", disable=not progress)):
        arrays = ds.sequence_arrays(key)
        for name, value in arrays.items():
            if name not in files:
                files[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=value.dtype,
                                                        shape=(n_seq * per, *value.shape[1:]))
            files[name][s * per:(s + 1) * per] = value
        del arrays, value   # before the next sequence is read: one sequence in memory at a time
    for a in files.values():
        a.flush()
    del files
    for name in ("env", "subject", "action"):
        np.save(tmp / f"{name}.npy", np.repeat(np.array([getattr(k, name) for k in ds.keys], dtype=str), per))
    np.save(tmp / "frame.npy", np.tile(np.arange(per, dtype=np.int64), n_seq))
    (tmp / COMPLETE).write_text(json.dumps({"frames": n_seq * per, "sequences": n_seq,
                                            "missing_files": dict(ds.missing)}))
    if folder.exists() and not (folder / COMPLETE).is_file():
        shutil.rmtree(folder, ignore_errors=True)   # left by an interrupted run: never complete
    try:
        tmp.rename(folder)
    except OSError:   # another rank finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def open_mapped(folder: Path, modalities: tuple[str, ...] = schema.MODALITIES) -> Split:
    """A memory-mapped cache folder -> Split: joints, presence and metadata in memory, the model
    inputs memory-mapped (read per batch)."""
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"{folder} is not a complete array cache (no {COMPLETE}); delete it and rerun")
    mapped = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in MAPPED_KEYS}
    enabled = torch.tensor([1.0 if m in modalities else 0.0 for m in schema.MODALITIES])
    tensors = {"joints": torch.from_numpy(np.load(folder / "joints.npy").astype(np.float32)),
               "presence": torch.from_numpy(np.load(folder / "presence.npy").astype(np.float32)) * enabled}
    meta = {k: np.load(folder / f"{k}.npy") for k in META_KEYS}
    return Split(tensors, meta, mapped)


def load_split(cfg: Config, subset: str, progress: bool = True) -> Split:
    """One subset: memory-mapped from ``data.cache_dir`` (built on first use) or, without a cache
    dir, read into memory."""
    if not cfg.data.cache_dir:
        return from_arrays(read_arrays(cfg, subset, progress), cfg.model.modalities)
    folder = Path(cfg.data.cache_dir) / f"{subset}-{_cache_key(cfg, subset)}"
    if not (folder / COMPLETE).is_file():
        build_mapped(cfg, subset, folder, progress)
    return open_mapped(folder, cfg.model.modalities)


def load_splits(cfg: Config, progress: bool = True) -> tuple[Split, Split]:
    """(train, test) of the configured protocol/split, subsampled by data.max_train."""
    train = load_split(cfg, "train", progress)
    test = load_split(cfg, "test", progress)
    if len(train) < 2 or len(test) < 1:
        raise ValueError(f"{cfg.data.root} {cfg.data.protocol}/{cfg.data.split} gives {len(train)} training and "
                         f"{len(test)} test frames; need at least 2 and 1 (is it the right protocol?)")
    return subsample_training(cfg, train), test


def subsample_training(cfg: Config, train: Split) -> Split:
    """``data.max_train`` evenly spaced frames of ``train`` (all of them when 0): the first step of
    the training frame selection (``load_splits`` and ``training.calibration`` call it)."""
    return train.take(evenly_spaced(len(train), cfg.data.max_train)) if cfg.data.max_train else train


def select_frames(cfg: Config, split: Split) -> Split:
    """The frames of ``split`` a run of ``cfg`` uses (``data.frames``): all, or ``complete_frames``.
    The second step of the selection, after ``subsample_training`` and before
    ``hold_out_validation``; ``training fit`` and ``training.calibration`` both call it."""
    return complete_frames(split, cfg.model.modalities) if cfg.data.frames == "complete" else split


def complete_frames(split: Split, modalities: tuple[str, ...]) -> Split:
    """The frames of ``split`` where every modality of ``modalities`` is present (``data.frames=complete``)."""
    idx = [schema.MODALITY_INDEX[m] for m in modalities]
    keep = (split.tensors["presence"][:, idx] > 0).all(dim=1)
    if not bool(keep.any()):
        raise ValueError(f"no frame has all of {list(modalities)} present; use data.frames=all")
    return split.take(torch.nonzero(keep).flatten())


def batches(n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool,
            rank: int = 0, world: int = 1, min_last: int = 2) -> Iterator[torch.Tensor]:
    """Global batches of ``batch_size`` indices (shuffled by ``generator``), this rank's shard of each.

    Every rank sees the same number of steps. A last global batch smaller than
    ``max(min_last, 2 * world)`` is dropped (a Pearson profit needs >= 2 frames per batch).
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if start > 0 and len(idx) < max(min_last, 2 * world):
            break
        yield torch.tensor_split(idx, world)[rank]
