"""In-memory datasets and deterministic batching.

MM-Fi-format data (the real release or a generated one) is read once by ``sensors.mmfi`` into
stacked numpy arrays and kept as tensors: on a 2-core machine a per-sample DataLoader over files
would spend more time in Python than in the model.

Array keys (N = frames): rgb [N,R,17,2], lidar [N,Cl,3], lidar_mask [N,Cl] bool, mmwave [N,Cm,5],
mmwave_mask [N,Cm] bool, wifi [N,3,114,20], presence [N,4], joints [N,17,3] metres; metadata
env / subject / action (str) and frame (int).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sensors import preprocess, schema
from training.config import Config

log = logging.getLogger(__name__)

TENSOR_KEYS = ("rgb", "lidar", "lidar_mask", "mmwave", "mmwave_mask", "wifi", "presence", "joints")
META_KEYS = ("env", "subject", "action", "frame")


@dataclass
class Split:
    """One split in memory: tensors (float32 / bool) and per-frame metadata (numpy)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.tensors["joints"].shape[0])

    def take(self, idx: torch.Tensor | np.ndarray) -> Split:
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Split({k: v[idx_t] for k, v in self.tensors.items()},
                     {k: v[idx_t.numpy()] for k, v in self.meta.items()})

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.tensors.items()}


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
         "seed": cfg.data.split_seed, "subset": subset, "window": cfg.model.rgb_window,
         "lidar_cap": cfg.model.lidar_cap, "mmwave_cap": cfg.model.mmwave_cap, "schema": schema.SCHEMA_VERSION,
         "preprocess": hashlib.sha256(Path(preprocess.__file__).read_bytes()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def read_arrays(cfg: Config, subset: str, progress: bool = True) -> dict[str, np.ndarray]:
    """Read one subset ("train" | "test") of the configured protocol/split with ``sensors.mmfi``.

    All four modalities are always read (so a cached file serves every modality subset); the
    model's enabled modalities are applied in ``from_arrays``.
    """
    from sensors.mmfi import MMFiDataset

    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found: point --data at an MM-Fi-format folder "
                                f"(E01/S01/A02/...) or generate one with `sensors simulate --preset bench`")
    cache = Path(cfg.data.cache_dir) / f"{subset}-{_cache_key(cfg, subset)}.npz" if cfg.data.cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    ds = MMFiDataset(root, protocol=cfg.data.protocol, split=cfg.data.split, subset=subset,
                     seed=cfg.data.split_seed, rgb_window=cfg.model.rgb_window, lidar_cap=cfg.model.lidar_cap,
                     mmwave_cap=cfg.model.mmwave_cap, modalities=schema.MODALITIES)
    arrays = ds.load_arrays(progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # ranks may write at once
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        tmp.replace(cache)
    return arrays


def load_splits(cfg: Config, progress: bool = True) -> tuple[Split, Split]:
    """(train, test) of the configured protocol/split, subsampled by data.max_train."""
    train = from_arrays(read_arrays(cfg, "train", progress), cfg.model.modalities)
    test = from_arrays(read_arrays(cfg, "test", progress), cfg.model.modalities)
    if len(train) < 2 or len(test) < 1:
        raise ValueError(f"{cfg.data.root} {cfg.data.protocol}/{cfg.data.split} gives {len(train)} training and "
                         f"{len(test)} test frames; need at least 2 and 1 (is it the right protocol?)")
    if cfg.data.max_train:
        train = train.take(evenly_spaced(len(train), cfg.data.max_train))
    return train, test


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
