"""Synced tick -> model inputs (batch 1), by ``sensors.core.preprocess.frame_inputs`` and the
model's contract (``sensors.core.contract.ModelContract``: the runtime's model metadata is one),
the same rule the MM-Fi reader uses for training.

What the runtime adds around it, per kind of modality (``schema.ModalitySpec.kind``): the keypoints
of the last R ticks (the causal window; ticks without keypoints are edge-padded from their
neighbours), the points of the synced message, and the CSI packets of the sync window
([P, 3, 114], any P >= 1) resampled to one frame of 10 (``preprocess.resample_packets``).
Absent modalities are zero-filled with presence 0 (the same mask as a Shapley coalition); an
empty point cloud (no detections, a normal radar frame) arrived but is absent to the model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sensors.core import preprocess, schema
from sensors.core.contract import ModelContract


@dataclass(frozen=True)
class TickFeatures:
    inputs: dict[str, np.ndarray]   # schema.MODEL_INPUTS, batch 1
    presence: np.ndarray            # float32 [4]


def csi_packets_of(spec: schema.ModalitySpec, sample) -> tuple[np.ndarray, ...] | None:
    """(amp [P, 3, 114], phase [P, 3, 114]) of a CSI modality's sync window (``runtime.sync`` puts
    the packets of the window in its sample), or None when absent or unusable."""
    if sample is None:
        return None
    arrays = tuple(np.asarray(sample.arrays[a.name]) for a in spec.wire)
    if arrays[0].ndim != 3 or arrays[0].shape[0] == 0 or any(a.shape != arrays[0].shape for a in arrays):
        return None
    return arrays


class FeatureBuilder:
    """Holds the keypoint history; ``build`` once per tick, in tick order."""

    def __init__(self, contract: ModelContract | None = None):
        self.contract = contract if contract is not None else ModelContract()
        self._history: dict[str, deque[np.ndarray | None]] = {
            m: deque(maxlen=self.contract.size(s)) for m, s in schema.MODALITY_SPECS.items()
            if s.kind == schema.KEYPOINTS}

    @classmethod
    def from_metadata(cls, meta: ModelContract) -> FeatureBuilder:
        """For a loaded model (``runtime.metadata.ModelMetadata`` is a ModelContract)."""
        return cls(meta)

    def build(self, tick) -> TickFeatures:
        """tick: TickInputs (``samples``: modality -> SyncedSample | None)."""
        frames: dict[str, object] = {}
        for m, spec in schema.MODALITY_SPECS.items():
            sample = tick.samples.get(m)
            if spec.kind == schema.KEYPOINTS:
                history = self._history[m]
                history.append(None if sample is None else np.asarray(sample.arrays[spec.wire[0].name], np.float32))
                frames[m] = list(history)
            elif spec.kind == schema.POINTS:
                frames[m] = None if sample is None else np.asarray(sample.arrays[spec.wire[0].name])
            else:
                packets = csi_packets_of(spec, sample)
                frames[m] = None if packets is None else tuple(
                    preprocess.resample_packets(p, spec.shape[-1]) for p in packets)
        inputs = preprocess.frame_inputs(frames, self.contract)
        return TickFeatures({k: v[None] for k, v in inputs.items()}, inputs["presence"].copy())
