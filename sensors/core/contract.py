"""What a model expects, in one torch-free object: ``ModelContract``.

Export writes it into the ONNX file (``to_props``: the ``awc.*`` metadata keys, docs/export.md);
the runtime reads it back (``from_props``, then ``runtime.metadata.ModelMetadata`` adds the
contribution baseline) and makes its inputs by it; the training data, the export's calibration
and the encoder probes make theirs by the same object (``sensors.core.preprocess.frame_inputs``),
so a frame means the same to the model wherever it comes from.

Its fields: how frames become inputs (the preprocessing settings, named as the training config's
``model`` keys: the RGB window, the point caps, the LiDAR crop, the mmWave column order), what the
model is (modality order, enabled modalities, fusion) and the training facts (schema version,
config and its hash, validation metrics, producer; the units and preprocessing notes; what it was
trained on: protocol, split, actions and how many subjects, which the rehabilitation trust reads to
mark an exercise the model never saw).

Adding a preprocessing setting takes four files: a field here (with ``preprocessing=True``
metadata, and its value for files written before it in ``LEGACY``), its use in
``sensors/core/preprocess.py``, the training config key of the same name
(``training/config.py``, ``ModelConfig``), and its line in docs/export.md. Export, the runtime,
the reader, the calibration and the probes pass the contract and need no change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from sensors.core import schema

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (schema.SCHEMA_VERSION,)
EXPORT_HINT = "export it with `training export --checkpoint RUN/best.pt --out awc.onnx`"
# Preprocessing settings added after models had been exported and runs recorded, with the value that
# reproduces what a file or a saved config without them was made with (not today's default). The
# one place for it: ``from_props`` reads it for ONNX files, ``training.config.LEGACY`` for configs.
LEGACY: dict[str, Any] = {"lidar_crop": True,
                          # training facts: a file without them does not say what it was trained on
                          "trained_protocol": "", "trained_split": "", "trained_actions": (), "trained_subjects": 0}
PRESENCE_NOTE = ("1.0 where the modality has data for the frame, 0.0 where absent (inputs zero-filled); "
                 "a point cloud counts as present when it holds at least one finite point (as "
                 "sensors.core.preprocess.frame_inputs decides); the same mask as a Shapley coalition "
                 "(bit i = MODALITIES[i])")
POSE_UNITS = "metres, camera frame (x right, y down, z depth), Human3.6M-17 order"
COALITIONS_NOTE = {"order": "bitmask: bit i = modalities[i]; 0 = empty, 15 = all",
                   "masks": schema.COALITION_MASKS.astype(int).tolist(), "effective_mask": "masks[c] * presence"}
PRE = {"preprocessing": True}   # field metadata: a preprocessing setting


class ModelError(RuntimeError):
    """The model file or the inputs given to it cannot be served; the message says how to fix it."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: shape with None for the batch axis, numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("B" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype} [{dims}]"


def default_units() -> dict[str, str]:
    return {**{m: s.units for m, s in schema.MODALITY_SPECS.items()}, "pose": POSE_UNITS}


def default_preprocessing() -> dict[str, str]:
    return {**{m: s.preprocessing for m, s in schema.MODALITY_SPECS.items()}, "presence": PRESENCE_NOTE}


@dataclass(frozen=True)
class ModelContract:
    """What a model expects and what it is (see the module doc); frozen, torch-free."""

    # how frames become inputs (training config `model.*` keys of the same names)
    rgb_window: int = field(default=schema.DEFAULT_RGB_WINDOW, metadata=PRE)
    lidar_cap: int = field(default=schema.DEFAULT_LIDAR_CAP, metadata=PRE)
    lidar_crop: bool = field(default=True, metadata=PRE)   # LiDAR cropped to the body before the cap
    mmwave_cap: int = field(default=schema.DEFAULT_MMWAVE_CAP, metadata=PRE)
    mmwave_columns: tuple[str, ...] = field(default=schema.MMWAVE_COLUMNS, metadata=PRE)   # model's order
    # what the model is
    modalities: tuple[str, ...] = schema.MODALITIES        # order of presence, coalitions and shares
    enabled_modalities: tuple[str, ...] = schema.MODALITIES   # trained encoders; others always absent
    fusion: str = "concat"
    # training facts
    schema_version: int = schema.SCHEMA_VERSION
    config_hash: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    validation_metrics: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=default_units)
    preprocessing: Mapping[str, str] = field(default_factory=default_preprocessing)
    # what it was trained on (the frames it learnt from, validation subjects excluded); empty / 0
    # when the file does not say (exported before these keys, or never trained)
    trained_protocol: str = ""
    trained_split: str = ""
    trained_actions: tuple[str, ...] = ()     # MM-Fi action codes (A01 ...), sorted
    trained_subjects: int = 0                 # distinct subjects in the training frames

    def __post_init__(self):
        for key in schema.SIZE_KEYS:
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ModelError(f"{key} must be an integer >= 1, got {getattr(self, key)!r}")
        for name in ("mmwave_columns", "modalities", "enabled_modalities", "trained_actions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.trained_subjects, int) or self.trained_subjects < 0:
            raise ModelError(f"trained_subjects must be an integer >= 0, got {self.trained_subjects!r}")

    # -- building one ---------------------------------------------------------------------------
    @classmethod
    def of(cls, model_config: Any, **facts: Any) -> ModelContract:
        """The contract of a training ``model`` config section (or any object with attributes of
        the preprocessing fields' names, plus ``modalities`` and ``fusion``), with ``facts``."""
        pre = {f.name: getattr(model_config, f.name) for f in fields(cls) if f.metadata.get("preprocessing")
               and hasattr(model_config, f.name)}
        enabled = tuple(m for m in schema.MODALITIES if m in model_config.modalities)
        return cls(**pre, enabled_modalities=enabled, fusion=str(model_config.fusion), **facts)

    # -- what it implies ------------------------------------------------------------------------
    def trained_on(self, action: str | None) -> bool | None:
        """Whether the model learnt from frames of ``action`` (an MM-Fi code); None when the file
        does not say what it was trained on, or no action is named."""
        if not self.trained_actions or not action:
            return None
        return str(action).strip().upper() in self.trained_actions

    @property
    def validation_mpjpe_mm(self) -> float | None:
        """MPJPE (mm) of the exported checkpoint on its validation set, when recorded."""
        value = self.validation_metrics.get("val_mpjpe")
        return None if value is None else float(value)

    def training_summary(self) -> dict[str, Any]:
        """The training facts as plain values (``runtime info``, the rehabilitation trust)."""
        return {"protocol": self.trained_protocol or None, "split": self.trained_split or None,
                "actions": list(self.trained_actions) or None, "subjects": self.trained_subjects or None,
                "validation_mpjpe_mm": self.validation_mpjpe_mm,
                "validation_set": self.validation_metrics.get("val_set")}

    def preprocessing_settings(self) -> dict[str, Any]:
        """The settings that decide how a frame becomes inputs (a cache key of preprocessed data)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("preprocessing")}

    def size(self, spec: schema.ModalitySpec) -> int | None:
        """Window or cap of a modality's input (``ModalitySpec.size_key``); None for a fixed size."""
        return getattr(self, spec.size_key) if spec.size_key else None

    def crop(self, spec: schema.ModalitySpec) -> bool:
        """Whether the modality is cropped to the body (``ModalitySpec.crop_key``)."""
        return bool(getattr(self, spec.crop_key)) if spec.crop_key else False

    def columns(self, spec: schema.ModalitySpec) -> tuple[str, ...]:
        """The column order the model takes a modality's points in (``ModalitySpec.columns_key``)."""
        return tuple(getattr(self, spec.columns_key)) if spec.columns_key else spec.columns

    def shapes(self, batch: int | str | None = schema.BATCH_AXIS) -> dict[str, tuple]:
        """Every input and output shape (``schema.model_shapes``)."""
        return schema.model_shapes({k: getattr(self, k) for k in schema.SIZE_KEYS}, batch)

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        """Model inputs in ``schema.MODEL_INPUTS`` order, batch axis None."""
        return {n: s for n, s in self.tensor_specs().items() if n in schema.MODEL_INPUTS}

    @property
    def outputs(self) -> dict[str, TensorSpec]:
        return {n: s for n, s in self.tensor_specs().items() if n in schema.MODEL_OUTPUTS}

    def tensor_specs(self) -> dict[str, TensorSpec]:
        return {k: TensorSpec(k, s, schema.MODEL_DTYPES[k]) for k, s in self.shapes(batch=None).items()}

    def input_shape(self, name: str, batch: int) -> tuple[int, ...]:
        return tuple(batch if d is None else d for d in self.inputs[name].shape)

    # -- the awc.* metadata ---------------------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        """Every ``awc.*`` entry but the contribution baseline, as key (without prefix) -> string."""
        def described(shapes: Mapping[str, tuple]) -> str:
            return json.dumps({n: {"shape": list(s), "dtype": schema.MODEL_DTYPES[n]} for n, s in shapes.items()})

        shapes = self.shapes()
        props = {"schema_version": str(self.schema_version), "modalities": json.dumps(list(self.modalities)),
                 "inputs": described({n: shapes[n] for n in schema.MODEL_INPUTS}),
                 "outputs": described({n: shapes[n] for n in schema.MODEL_OUTPUTS})}
        for key in self.preprocessing_settings():
            props[key] = _encode(getattr(self, key))
        props.update(units=_encode(self.units), preprocessing=_encode(self.preprocessing),
                     coalitions=json.dumps(COALITIONS_NOTE))
        for key in ("fusion", "enabled_modalities", "config_hash", "config", "validation_metrics", "producer",
                    "trained_protocol", "trained_split", "trained_actions", "trained_subjects"):
            props[key] = _encode(getattr(self, key))
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelContract:
        """Parse ``metadata_props`` (key -> string); raises ModelError naming the bad key."""
        contract = cls(**cls.values_from_props(props, source))
        contract.validate(source)
        return contract

    @classmethod
    def values_from_props(cls, props: Mapping[str, str], source: str) -> dict[str, Any]:
        """The contract's fields as read from ``props`` (keys a file predates take ``LEGACY``)."""
        reader = PropReader(props, source)
        version = reader.integer("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ModelError(
                f"{source} was exported with schema version {version}; this runtime serves schema "
                f"version(s) {list(SUPPORTED_SCHEMA_VERSIONS)}. Install the awc-pose release that "
                f"matches the model, or re-export the checkpoint with this release's `training export`.")
        values = {f.name: reader.read(f.name, f.type, LEGACY) for f in fields(ModelContract)
                  if f.name != "schema_version"}
        _check_declared(_parse_specs(reader.json("inputs", dict), "inputs", source),
                        _parse_specs(reader.json("outputs", dict), "outputs", source), cls(**values), source)
        return {**values, "schema_version": version}

    def validate(self, source: str = "model") -> None:
        """Check against this release's schema; raise ModelError if it disagrees."""
        if self.modalities != schema.MODALITIES:
            raise ModelError(f"{source} orders its modalities {list(self.modalities)}; this runtime expects "
                             f"{list(schema.MODALITIES)}. Re-export the model with this release.")
        if not set(self.enabled_modalities) <= set(schema.MODALITIES):
            raise ModelError(f"{source}: enabled_modalities {list(self.enabled_modalities)} must be a subset "
                             f"of {list(schema.MODALITIES)}")
        for spec in schema.MODALITY_SPECS.values():
            if spec.columns_key and sorted(self.columns(spec)) != sorted(spec.columns):
                raise ModelError(f"{source}: {spec.columns_key} must be a permutation of {list(spec.columns)}, "
                                 f"got {list(self.columns(spec))}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    return json.dumps(dict(value), default=_json_default)


def _check_declared(inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec], contract: ModelContract,
                    source: str) -> None:
    """The inputs and outputs a file declares must be the ones its window and caps imply."""
    if tuple(inputs) != schema.MODEL_INPUTS or tuple(outputs) != schema.MODEL_OUTPUTS:
        raise ModelError(f"{source} declares inputs {list(inputs)} and outputs {list(outputs)}; "
                         f"expected {list(schema.MODEL_INPUTS)} and {list(schema.MODEL_OUTPUTS)}.")
    sizes = ", ".join(f"{k}={getattr(contract, k)}" for k in schema.SIZE_KEYS)
    for name, want in contract.tensor_specs().items():
        got = inputs.get(name) or outputs[name]
        if got != want:
            raise ModelError(f"{source}: metadata says {got.describe()}, but its window/caps ({sizes}) imply "
                             f"{want.describe()}. The metadata is inconsistent; re-export.")


class PropReader:
    """Typed access to ``awc.*`` metadata props with errors that name the key."""

    def __init__(self, props: Mapping[str, str], source: str):
        self.props, self.source = props, source

    def read(self, key: str, annotation: str, legacy: Mapping[str, Any]) -> Any:
        """The value of a contract field, by its type annotation; ``legacy[key]`` when absent."""
        if key in legacy and schema.META_PREFIX + key not in self.props:
            return legacy[key]
        if annotation == "bool":
            return self.flag(key)
        if annotation == "int":
            return self.integer(key)
        if annotation == "str":
            return self.text(key)
        if annotation.startswith("tuple"):
            return tuple(self.json(key, list))
        return dict(self.json(key, dict))

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

    def flag(self, key: str) -> bool:
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
    specs = {}
    for name, spec in raw.items():
        try:
            shape = tuple(None if d == schema.BATCH_AXIS else int(d) for d in spec["shape"])
            specs[name] = TensorSpec(name, shape, str(spec["dtype"]))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{source}: metadata {schema.META_PREFIX}{what}[{name!r}] must be "
                             f"{{'shape': [...], 'dtype': ...}}, got {spec!r}") from None
    return specs
