"""Self-describing checkpoints: ``checkpoint.pt`` (latest, resumable) and ``best.pt``.

A checkpoint carries the model state, optimizer and scheduler states, the completed epoch, the
resolved config (so the model can be rebuilt without any other file), the schema version, the
config hash, the validation metrics and the per-epoch history.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from sensors.core import schema
from training import config as config_mod
from training.model import PoseModel, build_model


def save_checkpoint(path: str | Path, model: PoseModel, cfg: config_mod.Config, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    metrics: dict[str, Any] | None = None, history: list[dict] | None = None,
                    best: float | None = None) -> None:
    path = Path(path)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "config_hash": config_mod.config_hash(cfg),
        "schema_version": schema.SCHEMA_VERSION,
        "modalities": list(schema.MODALITIES),
        "metrics": metrics or {},
        "history": history or [],
        "best": best,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


class CheckpointError(ValueError):
    """A file that is not a training checkpoint this code can read; the message says what to pass."""


ONNX_HINT = ("an exported ONNX model, not a training checkpoint: pass the run's best.pt or checkpoint.pt "
             "(the .onnx file is what `runtime serve --model` takes)")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a run's checkpoint.pt or best.pt")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is {ONNX_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a torch checkpoint ({type(err).__name__}: {str(err)[:120]}); "
                              "pass a run's checkpoint.pt or best.pt from `training fit`") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an awc-pose checkpoint (expected keys model, config, epoch)")
    if state.get("schema_version") != schema.SCHEMA_VERSION:
        raise CheckpointError(f"{path} was written with schema version {state.get('schema_version')}, this code "
                         f"reads version {schema.SCHEMA_VERSION}; retrain or use a matching release")
    return state


def load_checkpoint(path: str | Path) -> tuple[PoseModel, config_mod.Config, dict[str, Any]]:
    """-> (model in eval mode, resolved config, info: epoch, metrics, config_hash, history, ...)."""
    state = read_checkpoint(path)
    cfg = config_mod.from_dict(state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    model.eval()
    info = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler")}
    return model, cfg, info
