"""How much to trust a figure measured over a span of ticks (a repetition), from what the runtime
knew at each of those ticks: which modalities were fused, which were flagged degraded, and the
live contribution shares.

Per span: ``fused_fraction`` (ticks fused with all four modalities / ticks), ``degraded`` (the
modalities flagged degraded at any tick of it), ``degraded_fraction`` per modality,
``mean_shares`` (mean label-free contribution shares), and ``low_confidence``: true when more than
``low_confidence_fraction`` of the ticks had a key modality degraded or absent. Key modalities are
the strong ones the fused pose leans on (RGB and LiDAR by default: the contribution baseline of a
trained model and the paper's uni-modal table both rank them first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sensors.core import schema


@dataclass(frozen=True)
class TrustConfig:
    key_modalities: tuple[str, ...] = schema.REHAB_KEY_MODALITIES
    low_confidence_fraction: float = 0.5
    history_ticks: int = 3000           # ticks kept (a repetition longer than this is judged on its tail)

    def __post_init__(self):
        object.__setattr__(self, "key_modalities", tuple(self.key_modalities))
        bad = [m for m in self.key_modalities if m not in schema.MODALITIES]
        if bad or not self.key_modalities:
            raise ValueError(f"rehab.key_modalities: expected a non-empty subset of {schema.MODALITIES}, got "
                             f"{list(self.key_modalities)}")
        if not 0 < self.low_confidence_fraction <= 1 or self.history_ticks < 10:
            raise ValueError(f"rehab: low_confidence_fraction must be in (0, 1] and history_ticks >= 10, got "
                             f"{self.low_confidence_fraction}, {self.history_ticks}")


class TrustTracker:
    """Per-tick trust inputs in a bounded history; ``over(start, end)`` judges a span of ticks."""

    def __init__(self, config: TrustConfig = TrustConfig()):
        self.config = config
        self.key = np.array([schema.MODALITY_INDEX[m] for m in config.key_modalities])
        self._rows: deque[tuple[int, bool, np.ndarray, np.ndarray, np.ndarray | None]] = deque(
            maxlen=config.history_ticks)

    def add(self, tick: int, presence, degraded, shares=None) -> None:
        """presence, degraded: [4] 0/1 in MODALITIES order; shares: [4] or None (not yet known)."""
        present = np.asarray(presence, bool).reshape(schema.N_MODALITIES)
        flags = np.asarray(degraded, bool).reshape(schema.N_MODALITIES)
        s = None if shares is None else np.asarray(shares, np.float64).reshape(schema.N_MODALITIES)
        self._rows.append((int(tick), bool(present.all()), present, flags, s))

    def over(self, start_tick: int, end_tick: int) -> dict:
        rows = [r for r in self._rows if start_tick <= r[0] <= end_tick]
        if not rows:
            return {"ticks": 0, "fused_fraction": None, "degraded": [], "degraded_fraction": {},
                    "mean_shares": None, "key_degraded_fraction": None, "low_confidence": True}
        fused = np.array([r[1] for r in rows])
        present = np.stack([r[2] for r in rows])
        flags = np.stack([r[3] for r in rows])
        shares = [r[4] for r in rows if r[4] is not None]
        bad_key = (flags[:, self.key] | ~present[:, self.key]).any(axis=1)
        frac = flags.mean(axis=0)
        key_frac = float(bad_key.mean())
        return {
            "ticks": len(rows),
            "fused_fraction": round(float(fused.mean()), 3),
            "degraded": [m for m, f in zip(schema.MODALITIES, frac) if f > 0],
            "degraded_fraction": {m: round(float(f), 3) for m, f in zip(schema.MODALITIES, frac)},
            "mean_shares": None if not shares else
            {m: round(float(v), 3) for m, v in zip(schema.MODALITIES, np.mean(shares, axis=0))},
            "key_degraded_fraction": round(key_frac, 3),
            "low_confidence": key_frac > self.config.low_confidence_fraction,
        }
