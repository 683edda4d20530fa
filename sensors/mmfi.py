"""Read MM-Fi (and the synthetic MM-Fi-format datasets) from disk.

Layout: ``ROOT/E01..E04/S01..S40/A01..A27/`` sequence folders, each with
``rgb/ lidar/ mmwave/ wifi-csi/`` (plus ``infra1/ infra2/ depth/`` that we do not read) holding
``frame001..frame297`` files, and ``ground_truth.npy``. Anything else in the tree (stray files,
unrelated folders, extra frame files) is ignored.

Raw readers (a public API, used by training and by the replay publisher; they live in
``sensors.mmfi_files`` and are re-exported here):

* ``read_frame(seq_dir, modality, frame)`` -> the frame as stored, or None when the modality is
  absent for that frame: ``rgb`` float32 [17, 2] pixels (COCO-17), ``lidar`` float64 [N, 3],
  ``mmwave`` float64 [N, 5] (disk column order), ``wifi`` ``CSIFrame(amp, phase)`` each float64
  [3, 114, 10].
* ``read_ground_truth(seq_dir)`` -> float32 [297, 17, 3] metres (H36M-17, camera frame).

Policies (docs/mmfi.md explains them):

* a 0-byte ``.bin`` means "no detections": the modality is absent for that frame (None);
* a missing frame file is treated as absent too (``missing="absent"``, the default), counted and
  logged once per sequence folder and modality; ``missing="error"`` raises ``MMFiMissingFileError``.
  Absence is what the model is built for (the presence mask), and a copy of a 77 GB dataset with a
  few lost files should not stop a long run, but it must not pass silently either;
* a missing modality folder (of a requested modality) or ``ground_truth.npy`` is an error when a
  dataset is built, naming the path;
* a file of the wrong size, shape or content raises ``MMFiFormatError`` naming the path, what was
  expected and what came.

``MMFiDataset`` selects the sequences of a protocol/split/subset and turns frames into model inputs,
only through ``sensors.core.preprocess``; nothing is read before it is asked for.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sensors import splits
from sensors.core import preprocess, schema
from sensors.core.contract import ModelContract
from sensors.mmfi_files import (
    CSI_KEYS,
    FRAME_STATUSES,
    MISSING_POLICIES,
    CSIFrame,
    MMFiFormatError,
    MMFiLayoutError,
    MMFiMissingFileError,
    _check_policy,
    _missing_frame,
    frame_path,
    mmwave_permutation,
    point_file_problem,
    read_csi,
    read_frame,
    read_frame_status,
    read_ground_truth,
    read_keypoints,
    read_points,
)

__all__ = ["CSI_KEYS", "FRAME_STATUSES", "MISSING_POLICIES", "CSIFrame", "MMFiDataset", "MMFiFormatError",
           "MMFiLayoutError", "MMFiMissingFileError", "SequenceKey", "describe_root", "discover_sequences",
           "frame_path", "mmwave_permutation", "point_file_problem", "read_csi", "read_frame",
           "read_frame_status", "read_ground_truth", "read_keypoints", "read_points"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class SequenceKey:
    """One MM-Fi sequence, e.g. ``SequenceKey("E01", "S01", "A02")`` (``str()`` -> "E01/S01/A02")."""

    env: str
    subject: str
    action: str

    def __post_init__(self) -> None:
        if self.subject not in schema.SUBJECTS or self.action not in schema.ACTIONS:
            raise ValueError(f"bad sequence key {self.env}/{self.subject}/{self.action}: "
                             "expected subject S01..S40 and action A01..A27")
        expected = schema.environment_of(self.subject)
        if self.env != expected:
            raise ValueError(f"subject {self.subject} belongs to {expected}, not {self.env!r}")

    @classmethod
    def of(cls, subject: str, action: str) -> SequenceKey:
        """The key of (subject, action); the environment follows from the subject."""
        return cls(schema.environment_of(subject), subject, action)

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.env / self.subject / self.action

    def __str__(self) -> str:
        return f"{self.env}/{self.subject}/{self.action}"


# ----------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------
def _named_dirs(parent: Path, names: Sequence[str]) -> list[Path]:
    """Sub-folders of ``parent`` whose name is in ``names``, sorted; everything else is ignored."""
    try:
        return sorted(p for p in parent.iterdir() if p.name in names and p.is_dir())
    except OSError as err:   # unreadable folder (permissions, I/O error)
        raise MMFiLayoutError(f"{parent}: the folder cannot be read ({err.strerror or err}); check its "
                              "permissions (the reader needs r and x on every folder of the dataset)") from err


def discover_sequences(root: str | Path) -> list[SequenceKey]:
    """All ``ROOT/Exx/Syy/Azz`` sequence folders, sorted. Stray files and unrelated folders at any
    level are ignored. A subject folder under the wrong environment raises ``MMFiLayoutError``."""
    root = Path(root)
    if not root.is_dir():
        raise MMFiLayoutError(f"MM-Fi root {root} is not a folder: point --data at the folder that "
                              "holds E01..E04")
    keys: list[SequenceKey] = []
    for env_dir in _named_dirs(root, schema.ENVIRONMENTS):
        for subj_dir in _named_dirs(env_dir, schema.SUBJECTS):
            expected = schema.environment_of(subj_dir.name)
            if env_dir.name != expected:
                raise MMFiLayoutError(f"{subj_dir}: subject {subj_dir.name} belongs to {expected} "
                                      f"(E01=S01-S10 ... E04=S31-S40), found under {env_dir.name}; "
                                      f"move it to {root / expected / subj_dir.name}")
            keys += [SequenceKey(env_dir.name, subj_dir.name, a.name)
                     for a in _named_dirs(subj_dir, schema.ACTIONS)]
    return keys


def describe_root(root: str | Path, limit: int = 8) -> str:
    """A short listing of what is in ``root`` (for error messages)."""
    root = Path(root)
    if not root.is_dir():
        return f"{root} does not exist"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    hint = ""
    if root.name in schema.ENVIRONMENTS or root.name in schema.SUBJECTS or root.name in schema.ACTIONS:
        hint = f" ({root.name} is a level inside MM-Fi: point at the folder that holds E01..E04)"
    return f"{root} contains: {shown or 'nothing'}{hint}"


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
class MMFiDataset:
    """The frames of one protocol/split/subset of an MM-Fi-format dataset, as model inputs.

    Lazy: construction only lists folders; ``ds[i]`` reads frame i (297 per sequence, sequences
    sorted); ``load_arrays()`` reads the whole subset once; ``sequence_frames(key)`` yields raw frames
    for replay. ``missing`` counts the frame files found missing so far, per modality.
    """

    def __init__(self, root: str | Path, protocol: str = "P1", split: str = "S1", subset: str = "train",
                 seed: int = 0, contract: ModelContract | None = None,
                 modalities: Sequence[str] = schema.MODALITIES,
                 mmwave_columns: Sequence[str] = schema.MMWAVE_COLUMNS, missing: str = "absent") -> None:
        """``contract``: the model the inputs are made for (window, caps, crop; the default
        contract without); ``mmwave_columns``: the column order of the mmWave files on disk."""
        self.root = Path(root)
        self.protocol, self.split, self.subset, self.seed = protocol, split, subset, int(seed)
        self.contract = contract if contract is not None else ModelContract()
        self.modalities = tuple(modalities)
        self.mmwave_columns = tuple(mmwave_columns)
        self.missing_policy = missing
        self._validate()
        self._mmwave_perm = mmwave_permutation(self.mmwave_columns)
        wanted = splits.subset_pairs(protocol, split, subset, self.seed)
        found = discover_sequences(self.root)
        self.keys: list[SequenceKey] = [k for k in found if (k.subject, k.action) in wanted]
        if not self.keys:
            raise MMFiLayoutError(self._nothing_selected(found))
        self._check_folders()
        self.missing: Counter[str] = Counter()
        self.invalid: Counter[str] = Counter()   # frames read as absent because their values are unusable
        self._gt: tuple[SequenceKey, np.ndarray] | None = None

    # -- construction checks --------------------------------------------------------------------
    def _validate(self) -> None:
        splits.check_protocol(self.protocol)
        splits.check_split(self.split)
        if self.subset not in splits.SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(splits.SUBSETS)}, got {self.subset!r}")
        unknown = [m for m in self.modalities if m not in schema.MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {schema.MODALITIES}, got {self.modalities}")
        _check_policy(self.missing_policy)

    def _nothing_selected(self, found: list[SequenceKey]) -> str:
        what = f"protocol {self.protocol}, split {self.split}, subset {self.subset!r} (seed {self.seed})"
        if not found:
            return (f"no MM-Fi sequences under {self.root} for {what}: expected "
                    f"ROOT/E01..E04/S01..S40/A01..A27 folders; {describe_root(self.root)}")
        subjects = sorted({k.subject for k in found})
        actions = sorted({k.action for k in found})
        return (f"none of the {len(found)} sequences under {self.root} belongs to {what}; on disk: "
                f"subjects {', '.join(subjects)}; actions {', '.join(actions)}. Generate or copy sequences "
                "of that protocol's actions and subset's subjects, or choose another protocol/split/subset")

    def _check_folders(self) -> None:
        for key in self.keys:
            seq = key.path(self.root)
            for m in self.modalities:
                folder = seq / schema.MMFI_FOLDERS[m]
                if not folder.is_dir():
                    raise MMFiLayoutError(f"{folder}: {m} folder missing in sequence {key}; restore it, or "
                                          f"leave {m} out of modalities={self.modalities}")
            if not (seq / schema.MMFI_GT_FILE).is_file():
                raise MMFiMissingFileError(f"{seq / schema.MMFI_GT_FILE}: ground truth missing in sequence {key}")

    # -- indexing -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys) * schema.FRAMES_PER_SEQUENCE

    def __repr__(self) -> str:
        return (f"MMFiDataset({str(self.root)!r}, {self.protocol}/{self.split}/{self.subset}: "
                f"{len(self.keys)} sequences, {len(self)} frames, modalities={self.modalities})")

    def locate(self, index: int) -> tuple[SequenceKey, int]:
        """(sequence key, 0-based frame) of dataset index ``index`` (negative counts from the end)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} frames")
        index %= n
        return self.keys[index // schema.FRAMES_PER_SEQUENCE], index % schema.FRAMES_PER_SEQUENCE

    def _read(self, key: SequenceKey, modality: str, frame: int) -> Any:
        """One raw frame of a requested modality, or None (absent, missing, or not requested)."""
        if modality not in self.modalities:
            return None
        seq = key.path(self.root)
        value, status = read_frame_status(seq, modality, frame)
        if status == "missing":
            self.missing[modality] += 1
            _missing_frame(seq, modality, frame, self.missing_policy)
        elif status == "invalid":
            self.invalid[modality] += 1
            if self.invalid[modality] == 1:
                log.warning("%s: %s values with NaN/inf: the frame is treated as absent (presence 0); "
                            "further ones are counted (MMFiDataset.invalid), not logged",
                            frame_path(seq, modality, frame), modality)
        if schema.MODALITY_SPECS[modality].columns_key and value is not None:
            value = value[:, self._mmwave_perm]   # disk order -> schema order
        return value

    def _ground_truth(self, key: SequenceKey) -> np.ndarray:
        if self._gt is None or self._gt[0] != key:
            self._gt = (key, read_ground_truth(key.path(self.root)))
        return self._gt[1]

    def _inputs(self, raw_of, t: int) -> dict[str, np.ndarray]:
        """Model inputs of frame ``t``; ``raw_of(modality, frame)`` gives a raw frame. Keypoint
        modalities get the causal window of frames ending at ``t``."""
        frames: dict[str, Any] = {}
        for m, spec in schema.MODALITY_SPECS.items():
            if spec.kind == schema.KEYPOINTS:
                first = max(0, t - self.contract.size(spec) + 1)
                frames[m] = [raw_of(m, j) for j in range(first, t + 1)] if m in self.modalities else []
            else:
                frames[m] = raw_of(m, t)
        return preprocess.frame_inputs(frames, self.contract)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, t = self.locate(index)
        sample: dict[str, Any] = self._inputs(lambda m, j: self._read(key, m, j), t)
        sample["joints"] = self._ground_truth(key)[t].copy()
        sample.update(env=key.env, subject=key.subject, action=key.action, frame=t)
        return sample

    # -- whole-subset and per-sequence access ---------------------------------------------------
    def _read_sequence(self, key: SequenceKey) -> dict[str, list[Any]]:
        """Every frame of every modality of one sequence, each file read once."""
        frames = range(schema.FRAMES_PER_SEQUENCE)
        return {m: [self._read(key, m, t) for t in frames] for m in schema.MODALITIES}

    def _empty_arrays(self, n: int) -> dict[str, np.ndarray]:
        """Zeroed numeric model inputs and joints for ``n`` frames."""
        shapes = self.contract.shapes(batch=n)
        out = {k: np.zeros(shapes[k], schema.MODEL_DTYPES[k]) for k in schema.MODEL_INPUTS}
        out["joints"] = np.zeros((n, schema.N_JOINTS, 3), np.float32)
        return out

    def sequence_arrays(self, key: SequenceKey) -> dict[str, np.ndarray]:
        """Model inputs and joints of every frame of one sequence, [297, ...] per key of ``ds[i]``
        (numeric keys only). Each file is read once; the keypoint windows are built in memory."""
        raw = self._read_sequence(key)
        out = self._empty_arrays(schema.FRAMES_PER_SEQUENCE)
        for t in range(schema.FRAMES_PER_SEQUENCE):
            for name, value in self._inputs(lambda m, j: raw[m][j], t).items():
                out[name][t] = value
        out["joints"][:] = read_ground_truth(key.path(self.root))
        return out

    def load_arrays(self, progress: bool = True) -> dict[str, np.ndarray]:
        """The whole subset as stacked arrays, the same keys and values as ``ds[i]`` with a leading
        frame axis [N, ...] (env/subject/action as numpy str arrays, frame as int64). Reads each file
        once, sequence by sequence (tqdm progress bar). Training keeps these arrays in its own cache
        (``training.data``, ``data.cache_dir``)."""
        n_frames = schema.FRAMES_PER_SEQUENCE
        out = self._empty_arrays(len(self))
        for s, key in enumerate(tqdm(self.keys, desc=f"reading {self.subset} sequences", unit="seq",
                                     disable=not progress)):
            arrays = self.sequence_arrays(key)
            for name, value in arrays.items():
                out[name][s * n_frames:(s + 1) * n_frames] = value
        for field in ("env", "subject", "action"):
            out[field] = np.repeat(np.array([getattr(k, field) for k in self.keys], dtype=str), n_frames)
        out["frame"] = np.tile(np.arange(n_frames, dtype=np.int64), len(self.keys))
        return out

    def sequence_frames(self, key: SequenceKey) -> Iterator[dict[str, Any]]:
        """Raw frames of one sequence in frame order, read lazily (for replay): dicts with ``frame``
        (0-based), ``rgb`` float32 [17, 2] px, ``lidar`` float64 [N, 3], ``mmwave`` float64 [N, 5] in
        schema column order, ``wifi`` CSIFrame of float64 [3, 114, 10] (each None where absent or not
        requested) and ``joints`` float32 [17, 3] metres."""
        if not key.path(self.root).is_dir():
            raise MMFiLayoutError(f"{key.path(self.root)}: no such sequence folder")
        joints = read_ground_truth(key.path(self.root))
        for t in range(schema.FRAMES_PER_SEQUENCE):
            frame: dict[str, Any] = {"frame": t}
            frame.update({m: self._read(key, m, t) for m in schema.MODALITIES})
            frame["joints"] = joints[t]
            yield frame
