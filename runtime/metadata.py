"""The self-description of an exported model, as the runtime holds it: ``ModelMetadata`` is the
model's contract (``sensors.core.contract.ModelContract``: window, caps, crop, columns, modalities,
training facts, parsed from the ``awc.*`` metadata entries, docs/export.md) plus the contribution
baseline measured at export. Torch-free; ``runtime.inference`` loads the file and re-exports these
names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sensors.core import schema
from sensors.core.contract import (
    EXPORT_HINT,
    SUPPORTED_SCHEMA_VERSIONS,
    ModelContract,
    ModelError,
    PropReader,
    TensorSpec,
)

__all__ = ["EXPORT_HINT", "SUPPORTED_SCHEMA_VERSIONS", "ContributionBaseline", "ModelError", "ModelMetadata",
           "TensorSpec"]


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
class ModelMetadata(ModelContract):
    """Everything the ONNX file says about itself, parsed and checked: its contract and the
    contribution baseline (None when the export had no calibration data, with the reason)."""

    baseline: ContributionBaseline | None = None
    baseline_missing_reason: str = ""

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``metadata_props`` (key -> string). Raises ModelError naming the bad key."""
        values = ModelContract.values_from_props(props, source)
        baseline, missing = _parse_baseline(PropReader(props, source).json("contribution_baseline", dict), source)
        meta = cls(**values, baseline=baseline, baseline_missing_reason=missing)
        meta.validate(source)
        return meta

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``runtime info --json`` and logs)."""
        return {
            "schema_version": self.schema_version, "fusion": self.fusion, "config_hash": self.config_hash,
            "enabled_modalities": list(self.enabled_modalities),
            "modalities": list(self.modalities),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocessing_settings().items()},
            "inputs": {k: v.describe() for k, v in self.inputs.items()},
            "outputs": {k: v.describe() for k, v in self.outputs.items()},
            "units": dict(self.units), "preprocessing": dict(self.preprocessing),
            "validation_metrics": self.validation_metrics, "producer": self.producer,
            "trained_on": self.training_summary(),
            "contribution_baseline": None if self.baseline is None else {
                "window": self.baseline.window, "n_windows": self.baseline.n_windows,
                "n_frames": self.baseline.n_frames, "label_free": dict(self.baseline.label_free),
                "labelled": None if self.baseline.labelled is None else dict(self.baseline.labelled),
                "source": dict(self.baseline.source)},
            "baseline_missing_reason": self.baseline_missing_reason,
            "config": self.config,
        }


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
