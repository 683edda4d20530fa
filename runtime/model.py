"""Load and run the exported pose model with onnxruntime (torch-free).

The ONNX file describes itself (``training export`` writes the metadata, see docs/export.md):
``PoseModel.load`` parses and checks that metadata, refuses a file it cannot serve and says why,
picks the execution provider, and ``PoseModel.run`` validates every input before inference.

Model inputs and outputs (B = batch; R, Cl, Cm from the metadata):

    rgb          float32 [B, R, 17, 2]    sensors.preprocess.rgb_window
    lidar        float32 [B, Cl, 3]       sensors.preprocess.sample_points (+ lidar_mask bool [B, Cl])
    mmwave       float32 [B, Cm, 5]       sensors.preprocess.sample_points (+ mmwave_mask bool [B, Cm])
    wifi         float32 [B, 3, 114, 20]  sensors.preprocess.resample_packets -> wifi_input
    presence     float32 [B, 4]           1 = modality present
    -> pose            float32 [B, 17, 3]      metres, camera frame
    -> coalition_poses float32 [B, 16, 17, 3]  coalition c uses schema.COALITION_MASKS[c] * presence

``runtime info --model awc.onnx`` prints the metadata, the contribution baseline and the
provider that really runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sensors import schema

log = logging.getLogger(__name__)

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (schema.SCHEMA_VERSION,)
PROVIDERS = ("auto", "cpu", "cuda")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
GPU_INSTALL_HINT = "pip uninstall -y onnxruntime && pip install 'awc-pose[gpu]'"
EXPORT_HINT = "export it with `training export --checkpoint RUN/best.pt --out awc.onnx`"

# onnxruntime's type strings -> numpy dtypes of the inputs it may declare.
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(bool)": "bool"}
_ORT_STATE = ort.capi.onnxruntime_pybind11_state
_ORT_LOAD_ERRORS = (RuntimeError, ValueError, _ORT_STATE.InvalidProtobuf, _ORT_STATE.InvalidGraph,
                    _ORT_STATE.Fail, _ORT_STATE.NotImplemented, _ORT_STATE.InvalidArgument)


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
            "lidar_cap": self.lidar_cap, "mmwave_cap": self.mmwave_cap,
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


# ----------------------------------------------------------------------------------------------
# Provider selection
# ----------------------------------------------------------------------------------------------
def choose_providers(requested: str, require_gpu: bool, available: Sequence[str]) -> list[str]:
    """Execution providers to ask onnxruntime for, best first. Pure; raises ModelError.

    ``auto``: CUDA if onnxruntime offers it, else CPU. ``cuda``: CUDA (falls back to CPU with a
    warning unless ``require_gpu``). ``cpu``: CPU only.
    """
    if requested not in PROVIDERS:
        raise ModelError(f"provider must be one of {list(PROVIDERS)}, got {requested!r}")
    if require_gpu and requested == "cpu":
        raise ModelError("require_gpu contradicts provider='cpu': ask for provider 'cuda' or 'auto'")
    has_cuda = CUDA_PROVIDER in available
    if require_gpu and not has_cuda:
        raise ModelError(
            f"a GPU is required but this onnxruntime offers only {list(available)} (no {CUDA_PROVIDER}). "
            f"Install the GPU build ({GPU_INSTALL_HINT}) on a machine with CUDA and cuDNN, "
            f"or drop --require-gpu to run on CPU.")
    if requested == "cpu" or not has_cuda:
        if requested == "cuda":
            log.warning("CUDA requested but onnxruntime offers %s: falling back to CPU (%s)",
                        list(available), GPU_INSTALL_HINT)
        return [CPU_PROVIDER]
    return [CUDA_PROVIDER, CPU_PROVIDER]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class PoseModel:
    """An onnxruntime session over an exported awc-pose model, with its checked metadata."""

    def __init__(self, session: ort.InferenceSession, metadata: ModelMetadata, path: Path,
                 requested_provider: str):
        self.session = session
        self.metadata = metadata
        self.path = path
        self.requested_provider = requested_provider
        self.provider: str = session.get_providers()[0]
        self._output_names = list(schema.MODEL_OUTPUTS)

    @classmethod
    def load(cls, path: str | Path, provider: str = "auto", require_gpu: bool = False,
             intra_op_threads: int = 2) -> PoseModel:
        """Open, check and prepare ``path``. Raises ModelError saying what is wrong and how to fix it."""
        path = Path(path)
        providers = choose_providers(provider, require_gpu, ort.get_available_providers())
        data = _read_model_bytes(path)
        session = _open_session(data, path, providers, intra_op_threads)
        if require_gpu and session.get_providers()[0] != CUDA_PROVIDER:
            raise ModelError(f"a GPU is required but onnxruntime runs {path} on {session.get_providers()}: "
                             f"CUDA failed to initialise (check the CUDA/cuDNN libraries onnxruntime-gpu needs)")
        meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
        _check_session_signature(session, meta, str(path))
        model = cls(session, meta, path, provider)
        log.info("loaded %s (fusion %s, config %s) on %s", path, meta.fusion, meta.config_hash, model.provider)
        return model

    @property
    def gpu_fallback(self) -> bool:
        """True when CUDA was asked for explicitly but the CPU provider runs."""
        return self.requested_provider == "cuda" and self.provider != CUDA_PROVIDER

    def empty_inputs(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero-filled inputs (masks False, presence 0) of the right shapes and dtypes."""
        if batch < 1:
            raise ModelError(f"batch must be >= 1, got {batch}")
        return {name: np.zeros(self.metadata.input_shape(name, batch), dtype=spec.dtype)
                for name, spec in self.metadata.inputs.items()}

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Validate names, dtypes, shapes and finiteness; return the batch size."""
        names = set(inputs)
        missing = [n for n in schema.MODEL_INPUTS if n not in names]
        extra = sorted(names - set(schema.MODEL_INPUTS))
        if missing or extra:
            raise ModelError(f"model inputs must be exactly {list(schema.MODEL_INPUTS)}; missing {missing}, "
                             f"unexpected {extra}. Start from PoseModel.empty_inputs().")
        batch = None
        for name, spec in self.metadata.inputs.items():
            arr = inputs[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ModelError(f"input {name!r} must be a numpy {spec.dtype} array, got {got}; "
                                 f"convert with .astype(np.{spec.dtype})")
            if arr.ndim != len(spec.shape) or arr.shape[1:] != spec.shape[1:] or arr.shape[0] < 1:
                raise ModelError(f"input {name!r} must have shape {spec.describe().split(' ', 2)[2]} "
                                 f"(B >= 1), got {list(arr.shape)}")
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise ModelError(f"all inputs must share the batch size: {schema.MODEL_INPUTS[0]!r} has "
                                 f"{batch}, {name!r} has {arr.shape[0]}")
            if spec.dtype == "float32" and not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                raise ModelError(f"input {name!r} holds {bad} NaN/inf values; preprocess with "
                                 f"sensors.preprocess (which repairs CSI and drops non-finite points)")
        presence = inputs["presence"]
        if not np.isin(presence, (0.0, 1.0)).all():
            raise ModelError(f"presence must hold only 0 and 1, got values {np.unique(presence)[:8].tolist()}")
        return int(batch)

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """inputs (see the module doc) -> (pose [B,17,3], coalition_poses [B,16,17,3]) metres."""
        self.check_inputs(inputs)
        feed = {name: np.ascontiguousarray(inputs[name]) for name in schema.MODEL_INPUTS}
        pose, coalition_poses = self.session.run(self._output_names, feed)
        return pose, coalition_poses


def _read_model_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; {EXPORT_HINT}")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"model file {path} is empty (0 bytes): the export or copy was interrupted; re-export it")
    if data[:2] == b"PK":
        raise ModelError(f"{path} is a zip archive (a PyTorch checkpoint?), not an ONNX model; {EXPORT_HINT}")
    return data


def _open_session(data: bytes, path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except _ORT_LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ModelError(f"onnxruntime cannot load {path} ({len(data)} bytes) as an ONNX model: the file is "
                         f"truncated, corrupt or not ONNX ({first}). Copy it again or re-export it; "
                         f"{EXPORT_HINT}") from None


def _check_session_signature(session: ort.InferenceSession, meta: ModelMetadata, source: str) -> None:
    """The graph's real inputs/outputs must be the ones the metadata declares."""
    for kind, nodes, specs in (("input", session.get_inputs(), meta.inputs),
                               ("output", session.get_outputs(), meta.outputs)):
        names = [n.name for n in nodes]
        if names != list(specs):
            raise ModelError(f"{source}: the graph's {kind}s are {names} but its metadata declares "
                             f"{list(specs)}; the file was edited or mis-exported. Re-export it.")
        for node in nodes:
            spec = specs[node.name]
            dims = tuple(d if isinstance(d, int) else None for d in node.shape)
            dtype = _ORT_DTYPES.get(node.type, node.type)
            if dims != spec.shape or dtype != spec.dtype:
                got = TensorSpec(node.name, dims, dtype).describe()
                raise ModelError(f"{source}: graph {kind} is {got} but the metadata declares "
                                 f"{spec.describe()}; re-export the model")


# ----------------------------------------------------------------------------------------------
# CLI: runtime info
# ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported ONNX file (from `training export`)")
    parser.add_argument("--provider", choices=PROVIDERS, default="auto", help="execution provider to ask for")
    parser.add_argument("--require-gpu", action="store_true", help="fail unless CUDA really runs the model")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the full metadata as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        model = PoseModel.load(args.model, provider=args.provider, require_gpu=args.require_gpu,
                               intra_op_threads=args.threads)
    except ModelError as err:
        log.error("%s", err)
        return 2
    if args.json:
        info = model.metadata.summary()
        info["provider"] = {"requested": model.requested_provider, "used": model.provider,
                            "available": ort.get_available_providers()}
        print(json.dumps(info, indent=2))
    else:
        print(describe(model))
    return 0


def describe(model: PoseModel) -> str:
    """Human-readable summary of a loaded model."""
    m = model.metadata
    lines = [
        f"model            {model.path} ({model.path.stat().st_size / 1e6:.2f} MB)",
        f"schema version   {m.schema_version}",
        f"fusion           {m.fusion} over {', '.join(m.enabled_modalities)}",
        f"config hash      {m.config_hash}",
        f"producer         {json.dumps(m.producer)}",
        f"rgb window       {m.rgb_window} frames; point caps lidar {m.lidar_cap}, mmwave {m.mmwave_cap}",
        f"mmwave columns   {', '.join(m.mmwave_columns)}",
        "inputs           " + "; ".join(s.describe() for s in m.inputs.values()),
        "outputs          " + "; ".join(s.describe() for s in m.outputs.values()),
        f"validation       {json.dumps(m.validation_metrics)}",
    ]
    if m.baseline is None:
        lines.append(f"baseline         MISSING ({m.baseline_missing_reason}): contribution drift cannot be judged")
    else:
        b = m.baseline
        lines.append(f"baseline         {b.n_windows} windows of {b.window} frames ({b.n_frames} frames)")
        lines.append("                 modality   share(label-free)  shapley   share(labels)")
        for i, mod in enumerate(m.modalities):
            lab = "-" if b.labelled is None else f"{b.labelled['shares'][i]:.3f}"
            lines.append(f"                 {mod:<10} {b.label_free['shares'][i]:>10.3f}  "
                         f"{b.label_free['shapley'][i]:>12.3f}   {lab:>8}")
    lines.append(f"provider         requested {model.requested_provider}, used {model.provider} "
                 f"(available: {', '.join(ort.get_available_providers())})")
    return "\n".join(lines)
