"""Load and run the exported pose model with onnxruntime (torch-free).

The ONNX file describes itself (``training export`` writes the metadata, see docs/export.md):
``OnnxPoseModel.load`` parses and checks that metadata, refuses a file it cannot serve and says why,
picks the execution provider, and ``OnnxPoseModel.run`` validates every input before inference.

Model inputs and outputs: names ``schema.MODEL_INPUTS`` / ``MODEL_OUTPUTS``, shapes
``schema.model_shapes`` (R, Cl, Cm from the metadata), built from frames by
``sensors.core.preprocess.frame_inputs``; ``pose`` [B, 17, 3] metres (camera frame) and
``coalition_poses`` [B, 16, 17, 3] (coalition c uses ``schema.COALITION_MASKS[c] * presence``).

``runtime info --model awc.onnx`` prints the metadata, the contribution baseline and the
provider that really runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtime.metadata import (
    EXPORT_HINT,
    SUPPORTED_SCHEMA_VERSIONS,
    ContributionBaseline,
    ModelError,
    ModelMetadata,
    TensorSpec,
)
from sensors.core import schema

__all__ = ["CPU_PROVIDER", "CUDA_PROVIDER", "PROVIDERS", "SUPPORTED_SCHEMA_VERSIONS", "ContributionBaseline",
           "ModelError", "ModelMetadata", "OnnxPoseModel", "TensorSpec", "choose_providers"]

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
GPU_INSTALL_HINT = "pip uninstall -y onnxruntime && pip install 'awc-pose[gpu]'"

# onnxruntime's type strings -> numpy dtypes of the inputs it may declare.
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(bool)": "bool"}
_ORT_STATE = ort.capi.onnxruntime_pybind11_state
_ORT_LOAD_ERRORS = (RuntimeError, ValueError, _ORT_STATE.InvalidProtobuf, _ORT_STATE.InvalidGraph,
                    _ORT_STATE.Fail, _ORT_STATE.NotImplemented, _ORT_STATE.InvalidArgument)


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
class OnnxPoseModel:
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
             intra_op_threads: int = 2) -> OnnxPoseModel:
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
                             f"unexpected {extra}. Start from OnnxPoseModel.empty_inputs().")
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
                                 f"sensors.core.preprocess (which repairs CSI and drops non-finite points)")
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
        model = OnnxPoseModel.load(args.model, provider=args.provider, require_gpu=args.require_gpu,
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


def describe(model: OnnxPoseModel) -> str:
    """Human-readable summary of a loaded model."""
    m = model.metadata
    lines = [
        f"model            {model.path} ({model.path.stat().st_size / 1e6:.2f} MB)",
        f"schema version   {m.schema_version}",
        f"fusion           {m.fusion} over {', '.join(m.enabled_modalities)}",
        f"config hash      {m.config_hash}",
        f"producer         {json.dumps(m.producer)}",
        f"rgb window       {m.rgb_window} frames; point caps lidar {m.lidar_cap}"
        f"{'' if m.lidar_crop else ' (raw scan, not cropped)'}, mmwave {m.mmwave_cap}",
        f"mmwave columns   {', '.join(m.mmwave_columns)}",
        "inputs           " + "; ".join(s.describe() for s in m.inputs.values()),
        "outputs          " + "; ".join(s.describe() for s in m.outputs.values()),
        f"validation       {json.dumps(m.validation_metrics)}",
        f"trained on       {_trained_on(m)}",
    ]
    if m.baseline is None:
        lines.append(f"baseline         MISSING ({m.baseline_missing_reason}): contribution drift cannot be judged")
    else:
        b = m.baseline
        lines.append(f"baseline         {b.n_windows} windows of {b.window} frames ({b.n_frames} frames)"
                     f" {_baseline_set(b.source)}")
        lines.append("                 modality   share(label-free)  shapley   share(labels)")
        for i, mod in enumerate(m.modalities):
            lab = "-" if b.labelled is None else f"{b.labelled['shares'][i]:.3f}"
            lines.append(f"                 {mod:<10} {b.label_free['shares'][i]:>10.3f}  "
                         f"{b.label_free['shapley'][i]:>12.3f}   {lab:>8}")
    lines.append(f"provider         requested {model.requested_provider}, used {model.provider} "
                 f"(available: {', '.join(ort.get_available_providers())})")
    return "\n".join(lines)


def _trained_on(m) -> str:
    """What the model learnt from (``ModelContract.trained_*``), in a line."""
    if not m.trained_actions:
        return "NOT RECORDED (an older or untrained export): the runtime cannot tell an exercise it never saw"
    subjects = f"{m.trained_subjects} subject(s)" if m.trained_subjects else "subjects not recorded"
    return (f"protocol {m.trained_protocol or '?'}, split {m.trained_split or '?'}, {subjects}, "
            f"actions {', '.join(m.trained_actions)}")


def _baseline_set(source: Mapping[str, Any]) -> str:
    """Which frames the baseline was measured on (``awc.contribution_baseline.source.set``)."""
    kind = source.get("set")
    if kind == "sequences":
        return f"on {source.get('sequences', '?')} held-out training recording(s), never trained on"
    if kind == "test":
        note = source.get("note")
        return "on the test subset" + (f" ({note})" if note else "")
    return f"on the {source.get('subset', 'unrecorded')} subset" + ("" if kind else " (set not recorded: older export)")
