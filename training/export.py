"""Export a trained model to one self-describing ONNX file (``training export``).

The graph runs the four encoders once and the fusion head over all 16 coalitions:

    inputs  rgb [B,R,17,2] f32, lidar [B,Cl,3] f32, lidar_mask [B,Cl] bool, mmwave [B,Cm,5] f32,
            mmwave_mask [B,Cm] bool, wifi [B,3,114,20] f32, presence [B,4] f32
    outputs pose [B,17,3] f32 (metres), coalition_poses [B,16,17,3] f32 where coalition c uses
            the effective mask schema.COALITION_MASKS[c] * presence

B is dynamic; the window R and the point caps are fixed by the model config. The opset and IR
version are pinned so every onnxruntime the project supports (>= 1.20) can read the file.
``metadata_props`` (keys ``awc.*``, docs/export.md) describe inputs, preprocessing, units, the
training config and the contribution baseline measured at export time on the validation recordings
the checkpoint's run held out of training (or its test subset where that run validated on it).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from sensors.core import schema
from sensors.core.contract import ModelContract
from sensors.simulate.writer import dataset_kind
from training.calibration import (
    CALIBRATION_MAX_FRAMES,
    CALIBRATION_WINDOW,
    CalibrationSet,
    ExportError,
    load_calibration,
    measure_baseline,
    training_facts,
)
from training.config import Config, model_contract, resolve

__all__ = ["CALIBRATION_MAX_FRAMES", "CALIBRATION_WINDOW", "CalibrationSet", "ExportError", "ModelContract",
           "example_inputs", "export_checkpoint", "export_onnx", "export_untrained", "load_calibration",
           "measure_baseline", "to_torch"]

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 10  # onnxruntime 1.20 reads IR <= 10; onnx 1.23 would write 11 by default
OPSETS = range(14, 22)  # what IR 10 and onnxruntime 1.20 both cover (opset 21 is onnxruntime 1.20's newest)

# ----------------------------------------------------------------------------------------------
# Graph wrappers
# ----------------------------------------------------------------------------------------------
class CoalitionGraph(nn.Module):
    """Encoders once, then the fusion head for the presence mask and for all 16 coalitions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("coalition_masks", torch.from_numpy(schema.COALITION_MASKS.copy()),
                             persistent=False)  # [16, 4]

    def forward(self, *inputs):   # schema.MODEL_INPUTS: the modalities' inputs, then presence [B, 4]
        *tensors, presence = inputs
        feats = self.model.encode(*tensors)  # mod -> [B, D]
        masks = self.coalition_masks.unsqueeze(0) * presence.unsqueeze(1)  # [B, 16, 4]
        coalition_poses = self.model.fuse_coalitions(feats, masks)  # [B, 16, 17, 3]
        pose = self.model.fuse(feats, presence)  # [B, 17, 3]
        return pose, coalition_poses


class PoseGraph(nn.Module):
    """The plain model (pose only), for latency comparisons."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):   # schema.MODEL_INPUTS
        return self.model(*inputs)


# ----------------------------------------------------------------------------------------------
# Example inputs
# ----------------------------------------------------------------------------------------------
def example_inputs(contract: ModelContract, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random model inputs (numpy) with partly filled masks and mixed presence."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    shapes = contract.shapes(batch)
    for name in schema.MODEL_INPUTS:
        shape, spec = shapes[name], schema.spec_of(name)
        if name.endswith("_mask"):
            n_real = rng.integers(0, shape[1] + 1, size=batch)
            out[name] = np.arange(shape[1])[None, :] < n_real[:, None]
        elif name == "presence":
            out[name] = (rng.random(shape) < 0.7).astype(np.float32)
        elif spec is not None and spec.kind == schema.CSI:   # min-max normalised to [0, 1]
            out[name] = rng.random(shape, dtype=np.float32)
        else:
            out[name] = rng.normal(0.0, 0.5, size=shape).astype(np.float32)
    out["presence"][0] = 1.0
    out[schema.MODALITY_INPUTS[schema.POINT_MODALITIES[0]][1]][0, :] = True   # one full cloud
    return out


def to_torch(inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """numpy inputs -> torch tensors in schema.MODEL_INPUTS order."""
    return tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in schema.MODEL_INPUTS)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def trace_to_onnx(module: nn.Module, contract: ModelContract, output_names: tuple[str, ...], opset: int = OPSET
                  ) -> onnx.ModelProto:
    """torch.onnx.export (TorchScript exporter) with a dynamic batch axis; IR version pinned."""
    if opset not in OPSETS:
        raise ExportError(f"opset must be {OPSETS.start}..{OPSETS.stop - 1} (IR version {IR_VERSION}, readable by "
                          f"onnxruntime >= 1.20), got {opset}; the default is {OPSET}")
    module = module.eval()
    device = next(module.parameters()).device   # trace where the model is; the file is device-independent
    args = tuple(a.to(device) for a in to_torch(example_inputs(contract, batch=2)))
    dynamic = {n: {0: schema.BATCH_AXIS} for n in (*schema.MODEL_INPUTS, *output_names)}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(module, args, buf, input_names=list(schema.MODEL_INPUTS),
                          output_names=list(output_names), dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = IR_VERSION
    return proto


def export_onnx(model: nn.Module, cfg: Config, out_path: str | Path, calibration: CalibrationSet | None = None,
                metrics: Mapping[str, Any] | None = None, opset: int = OPSET,
                no_calibration_reason: str = "exported without calibration data",
                calibration_window: int = CALIBRATION_WINDOW, facts: Mapping[str, Any] | None = None) -> Path:
    """Export ``model`` (the training API: encode / fuse / fuse_coalitions) with full metadata.

    cfg: the resolved training config (training.config.Config). calibration: validation frames for the contribution baseline
    (None -> the metadata records the baseline as missing, with ``no_calibration_reason``).
    metrics: validation metrics to record. calibration_window: frames per baseline window.
    facts: what the model was trained on (``training_facts``: ``trained_protocol`` ...; none for a
    model that was never trained). Returns the written path.
    """
    out_path = Path(out_path)
    contract = export_contract(cfg, metrics or {}, opset, facts or {})
    proto = trace_to_onnx(CoalitionGraph(model), contract, schema.MODEL_OUTPUTS, opset)
    props = contract.to_props()
    if calibration is None:
        baseline: dict[str, Any] = {"available": False, "reason": no_calibration_reason}
    else:
        baseline = measure_baseline(proto.SerializeToString(), calibration, window=calibration_window)
    props["contribution_baseline"] = json.dumps(baseline)
    set_metadata(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    _save_atomic(proto, out_path)
    log.info("wrote %s (%.2f MB, opset %d, IR %d)", out_path, out_path.stat().st_size / 1e6, opset,
             proto.ir_version)
    return out_path


def export_pose_only(model: nn.Module, contract: ModelContract, out_path: str | Path, opset: int = OPSET) -> Path:
    """The plain pose graph (no coalitions, no metadata): only for latency comparisons."""
    proto = trace_to_onnx(PoseGraph(model), contract, ("pose",), opset)
    onnx.checker.check_model(proto)
    _save_atomic(proto, Path(out_path))
    return Path(out_path)


def export_contract(cfg: Config, metrics: Mapping[str, Any], opset: int,
                    facts: Mapping[str, Any] | None = None) -> ModelContract:
    """The model's contract as the export records it: ``training.config.model_contract`` with the
    validation metrics, the producer (versions, opset, training data, time) and what the model was
    trained on (``facts``)."""
    producer = {"torch": torch.__version__, "onnx": onnx.__version__, "opset": opset,
                "training_data": dataset_kind(cfg.data.root),
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "ir_version": IR_VERSION, "exporter": "torch.onnx.export(dynamo=False)"}
    metrics = json.loads(json.dumps(dict(metrics), default=_json_default))
    return model_contract(cfg, validation_metrics=metrics, producer=producer, **dict(facts or {}))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def set_metadata(proto: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Replace the ``awc.*`` metadata_props of ``proto`` with ``props`` (keys without prefix)."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(schema.META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = schema.META_PREFIX + key, value


def _save_atomic(proto: onnx.ModelProto, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------
def export_checkpoint(checkpoint: str | Path, out_path: str | Path, data_root: str | Path | None = None,
                      calibrate: bool = True, opset: int = OPSET,
                      max_calibration_frames: int = CALIBRATION_MAX_FRAMES,
                      calibration_window: int = CALIBRATION_WINDOW, device: str = "cpu") -> Path:
    """``training export``: checkpoint -> ONNX with metadata and (unless told not to) the baseline.
    ``device`` (training.device spec): where torch traces the model; the ONNX file is the same."""
    from training import device as device_mod
    from training.checkpoint import load_checkpoint

    model, cfg, info = load_checkpoint(checkpoint)
    model.to(device_mod.resolve(device)).eval()
    calibration = None
    if calibrate:
        calibration = load_calibration(cfg, data_root, "validation", max_frames=max_calibration_frames,
                                       window=calibration_window)
    metrics = checkpoint_metrics(info)
    return export_onnx(model, cfg, out_path, calibration=calibration, metrics=metrics, opset=opset,
                       no_calibration_reason="exported with --no-calibration",
                       calibration_window=calibration_window, facts=training_facts(cfg, data_root, progress=False))


def checkpoint_metrics(info: Mapping[str, Any]) -> dict[str, Any]:
    """The validation metrics a checkpoint carries (``training.checkpoint.save_checkpoint``: ``metrics``)."""
    return json.loads(json.dumps(dict(info.get("metrics") or {}), default=_json_default))


def export_untrained(out_path: str | Path, fusion: str = "concat", preset: str = "small", seed: int = 0,
                     data_root: str | Path | None = None,
                     max_calibration_frames: int = 1024) -> Path:
    """Export a freshly initialised model of ``preset`` (deterministic for ``seed``), for tests
    and demos. With ``data_root``, the baseline is measured on its test frames (all frames when
    the split leaves no test frames); without, the metadata records the baseline as missing."""
    from training.model import build_model

    cfg = resolve(preset=preset, flags={"model": {"fusion": fusion}})
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    calibration = None
    if data_root is not None:
        try:
            calibration = load_calibration(cfg, data_root, "test", max_calibration_frames, progress=False)
        except ExportError:
            calibration = load_calibration(cfg, data_root, "all", max_calibration_frames, progress=False)
    return export_onnx(model, cfg, out_path, calibration=calibration, metrics={"trained": False},
                       no_calibration_reason="untrained model exported without calibration data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (e.g. runs/NAME/best.pt)")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--data", default=None,
                        help="dataset for the contribution baseline (default: the checkpoint's data.root); "
                             "the baseline is measured on the training recordings the checkpoint's run held out "
                             "for validation, or on the test subset (with a warning) where that run validated on it")
    parser.add_argument("--no-calibration", action="store_true",
                        help="export without the contribution baseline (the runtime then cannot judge drift)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--device", default="cpu",
                        help="where torch traces the model: cpu (default), auto, cuda or cuda:N; the file is the same")
    parser.add_argument("--calibration-frames", type=int, default=CALIBRATION_MAX_FRAMES,
                        help="at most this many validation frames for the baseline (whole windows of whole recordings)")
    parser.add_argument("--calibration-window", type=int, default=CALIBRATION_WINDOW,
                        help="consecutive frames per baseline window (match the runtime's contributions window)")


def run(args: argparse.Namespace) -> int:
    try:
        path = export_checkpoint(args.checkpoint, args.out, data_root=args.data, calibrate=not args.no_calibration,
                                 opset=args.opset, max_calibration_frames=args.calibration_frames,
                                 calibration_window=args.calibration_window, device=args.device)
    except ExportError as err:
        log.error("%s", err)
        return 2
    print(f"wrote {path}; check it with `runtime info --model {path}`")
    return 0
