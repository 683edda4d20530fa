"""The self-description of an exported model: the ``awc.*`` metadata entries of the ONNX file
(docs/export.md), parsed into typed values and checked against this release's schema. Torch-free;
``runtime.inference`` loads the file and re-exports these names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sensors.core import schema

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (schema.SCHEMA_VERSION,)
EXPORT_HINT = "export it with `training export --checkpoint RUN/best.pt --out awc.onnx`"


class ModelError(RuntimeError):
    """The model file or the inputs given to it cannot be served; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: shape with None for the batch axis, numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("B" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype} [{dims}]"


@dataclass(frozen=True)
class ContributionBaseline:
    """Per-modality Shapley values and shares measured on validation data at export time.

    ``label_free``: profit of a coalition = Pearson agreement of its prediction with the full
    prediction (what the runtime measures live); ``labelled``: agreement with the true pose.
    Each is a dict with ``shapley`` [4], ``shares`` [4] (sum 1) and ``share_std`` [4] (spread of
    the per-window shares), in ``schema.MODALITIES`` order. Figures are over windows of
    ``window`` consecutive frames.
    """

    window: int
    n_windows: int
    n_frames: int
    label_free: Mapping[str, tuple[float, ...]]
    labelled: Mapping[str, tuple[float, ...]] | None
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shares(self) -> np.ndarray:
        """Label-free shares [4] (the live runtime's measure), float64, sum 1."""
        return np.asarray(self.label_free["shares"], np.float64)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the ONNX file says about itself, parsed and checked."""

    schema_version: int
    modalities: tuple[str, ...]
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    rgb_window: int
    lidar_cap: int
    mmwave_cap: int
    mmwave_columns: tuple[str, ...]
    units: Mapping[str, str]
    preprocessing: Mapping[str, str]
    fusion: str
    enabled_modalities: tuple[str, ...]
    config_hash: str
    config: Mapping[str, Any]
    validation_metrics: Mapping[str, Any]
    baseline: ContributionBaseline | None
    baseline_missing_reason: str
    producer: Mapping[str, Any]
    lidar_crop: bool = True   # LiDAR cropped to the body before the cap (absent = true: older exports)

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``metadata_props`` (key -> string). Raises ModelError naming the bad key."""
        reader = _PropReader(props, source)
        version = reader.integer("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ModelError(
                f"{source} was exported with schema version {version}; this runtime serves schema "
                f"version(s) {list(SUPPORTED_SCHEMA_VERSIONS)}. Install the awc-pose release that "
                f"matches the model, or re-export the checkpoint with this release's `training export`.")
        baseline_json = reader.json("contribution_baseline", dict)
        baseline, missing = _parse_baseline(baseline_json, source)
        meta = cls(
            schema_version=version,
            modalities=tuple(reader.json("modalities", list)),
            inputs=_parse_specs(reader.json("inputs", dict), "inputs", source),
            outputs=_parse_specs(reader.json("outputs", dict), "outputs", source),
            rgb_window=reader.integer("rgb_window"),
            lidar_cap=reader.integer("lidar_cap"),
            mmwave_cap=reader.integer("mmwave_cap"),
            mmwave_columns=tuple(reader.json("mmwave_columns", list)),
            units=dict(reader.json("units", dict)),
            preprocessing=dict(reader.json("preprocessing", dict)),
            fusion=reader.text("fusion"),
            enabled_modalities=tuple(reader.json("enabled_modalities", list)),
            config_hash=reader.text("config_hash"),
            config=reader.json("config", dict),
            validation_metrics=reader.json("validation_metrics", dict),
            baseline=baseline,
            baseline_missing_reason=missing,
            producer=reader.json("producer", dict),
            lidar_crop=reader.flag("lidar_crop", default=True),
        )
        meta.validate(source)
        return meta

    def validate(self, source: str = "model") -> None:
        """Check the metadata against this release's schema; raise ModelError if it disagrees."""
        if self.modalities != schema.MODALITIES:
            raise ModelError(f"{source} orders its modalities {list(self.modalities)}; this runtime expects "
                             f"{list(schema.MODALITIES)}. Re-export the model with this release.")
        if tuple(self.inputs) != schema.MODEL_INPUTS or tuple(self.outputs) != schema.MODEL_OUTPUTS:
            raise ModelError(f"{source} declares inputs {list(self.inputs)} and outputs {list(self.outputs)}; "
                             f"expected {list(schema.MODEL_INPUTS)} and {list(schema.MODEL_OUTPUTS)}.")
        for name, want in expected_specs(self.rgb_window, self.lidar_cap, self.mmwave_cap).items():
            got = self.inputs.get(name) or self.outputs.get(name)
            if got != want:
                raise ModelError(f"{source}: metadata says {got.describe()}, but its window/caps "
                                 f"(R={self.rgb_window}, Cl={self.lidar_cap}, Cm={self.mmwave_cap}) "
                                 f"imply {want.describe()}. The metadata is inconsistent; re-export.")
        if not set(self.enabled_modalities) <= set(schema.MODALITIES):
            raise ModelError(f"{source}: enabled_modalities {list(self.enabled_modalities)} must be a subset "
                             f"of {list(schema.MODALITIES)}")
        if sorted(self.mmwave_columns) != sorted(schema.MMWAVE_COLUMNS):
            raise ModelError(f"{source}: mmwave_columns must be a permutation of {list(schema.MMWAVE_COLUMNS)}, "
                             f"got {list(self.mmwave_columns)}")

    def input_shape(self, name: str, batch: int) -> tuple[int, ...]:
        return tuple(batch if d is None else d for d in self.inputs[name].shape)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``runtime info --json`` and logs)."""
        return {
            "schema_version": self.schema_version, "fusion": self.fusion, "config_hash": self.config_hash,
            "enabled_modalities": list(self.enabled_modalities),
            "modalities": list(self.modalities), "rgb_window": self.rgb_window,
            "lidar_cap": self.lidar_cap, "lidar_crop": self.lidar_crop, "mmwave_cap": self.mmwave_cap,
            "mmwave_columns": list(self.mmwave_columns),
            "inputs": {k: v.describe() for k, v in self.inputs.items()},
            "outputs": {k: v.describe() for k, v in self.outputs.items()},
            "units": dict(self.units), "preprocessing": dict(self.preprocessing),
            "validation_metrics": self.validation_metrics, "producer": self.producer,
            "contribution_baseline": None if self.baseline is None else {
                "window": self.baseline.window, "n_windows": self.baseline.n_windows,
                "n_frames": self.baseline.n_frames, "label_free": dict(self.baseline.label_free),
                "labelled": None if self.baseline.labelled is None else dict(self.baseline.labelled),
                "source": dict(self.baseline.source)},
            "baseline_missing_reason": self.baseline_missing_reason,
            "config": self.config,
        }


def expected_specs(rgb_window: int, lidar_cap: int, mmwave_cap: int) -> dict[str, TensorSpec]:
    """The inputs and outputs a model with this window and these caps must have (``schema.model_shapes``)."""
    shapes = schema.model_shapes(rgb_window, lidar_cap, mmwave_cap, batch=None)
    return {k: TensorSpec(k, s, schema.MODEL_DTYPES[k]) for k, s in shapes.items()}


class _PropReader:
    """Typed access to ``awc.*`` metadata props with errors that name the key."""

    def __init__(self, props: Mapping[str, str], source: str):
        self.props, self.source = props, source

    def text(self, key: str) -> str:
        full = schema.META_PREFIX + key
        if full not in self.props:
            raise ModelError(f"{self.source} lacks the metadata key {full!r}; it was not written by this "
                             f"release's `training export` (or the file is truncated). Re-export: {EXPORT_HINT}.")
        return self.props[full]

    def integer(self, key: str) -> int:
        raw = self.text(key)
        try:
            return int(raw)
        except ValueError:
            raise ModelError(f"{self.source}: metadata {schema.META_PREFIX}{key} must be an integer, got {raw!r}") from None

    def flag(self, key: str, default: bool) -> bool:
        """A "true"/"false" key; ``default`` when the key predates the file (older exports)."""
        if schema.META_PREFIX + key not in self.props:
            return default
        raw = self.text(key)
        if raw not in ("true", "false"):
            raise ModelError(f"{self.source}: metadata {schema.META_PREFIX}{key} must be 'true' or 'false', "
                             f"got {raw[:40]!r}; re-export the model")
        return raw == "true"

    def json(self, key: str, kind: type | None = None) -> Any:
        """The JSON value of ``key``; with ``kind`` (dict or list) it must be of that type."""
        raw = self.text(key)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ModelError(f"{self.source}: metadata {schema.META_PREFIX}{key} is not valid JSON ({err}); "
                             f"re-export the model") from None
        if kind is not None and not isinstance(value, kind):
            what = "a JSON object" if kind is dict else "a JSON list"
            raise ModelError(f"{self.source}: metadata {schema.META_PREFIX}{key} must be {what}, got {raw[:80]!r}; "
                             f"re-export the model")
        return value


def _parse_specs(raw: Any, what: str, source: str) -> dict[str, TensorSpec]:
    if not isinstance(raw, dict):
        raise ModelError(f"{source}: metadata {schema.META_PREFIX}{what} must map names to shapes, got {type(raw).__name__}")
    specs = {}
    for name, spec in raw.items():
        try:
            shape = tuple(None if d == schema.BATCH_AXIS else int(d) for d in spec["shape"])
            specs[name] = TensorSpec(name, shape, str(spec["dtype"]))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{source}: metadata {schema.META_PREFIX}{what}[{name!r}] must be "
                             f"{{'shape': [...], 'dtype': ...}}, got {spec!r}") from None
    return specs


def _parse_baseline(raw: Any, source: str) -> tuple[ContributionBaseline | None, str]:
    """-> (baseline, "") or (None, why it is missing)."""
    if not isinstance(raw, dict) or "available" not in raw:
        raise ModelError(f"{source}: metadata {schema.META_PREFIX}contribution_baseline must be an object with "
                         f"'available', got {raw!r}")
    if not raw["available"]:
        return None, str(raw.get("reason", "not calibrated"))
    parts = {}
    for kind in ("label_free", "labelled"):
        part = raw.get(kind)
        if part is None and kind == "labelled":
            parts[kind] = None
            continue
        parts[kind] = {k: _four_finite(part, k, kind, source) for k in ("shapley", "shares", "share_std")}
        shares = np.asarray(parts[kind]["shares"])
        if (shares < 0).any() or abs(shares.sum() - 1.0) > 1e-4:
            raise ModelError(f"{source}: baseline {kind} shares must be >= 0 and sum to 1, got {shares.tolist()}; "
                             f"re-export the model")
    try:
        counts = {k: int(raw[k]) for k in ("window", "n_windows", "n_frames")}
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{source}: baseline needs integer window, n_windows and n_frames; re-export the model") from None
    baseline = ContributionBaseline(**counts, label_free=parts["label_free"], labelled=parts["labelled"],
                                    source=raw.get("source", {}))
    return baseline, ""


def _four_finite(part: Any, key: str, kind: str, source: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in part[key])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{source}: baseline {kind}.{key} missing or not numeric in {part!r}") from None
    if len(values) != schema.N_MODALITIES or not np.isfinite(values).all():
        raise ModelError(f"{source}: baseline {kind}.{key} must be {schema.N_MODALITIES} finite numbers "
                         f"({', '.join(schema.MODALITIES)}), got {list(values)}")
    return values
