"""Per-modality degradation score and flag with hysteresis (pure, torch-free).

Three kinds of evidence, each in [0, 1] per modality, are combined as a noisy-OR

    score = 1 - (1 - input) * (1 - w_loo * loo) * (1 - w_drift * drift)

* ``input``: the input-health score of ``runtime.health`` (missing, stale, sequence-gap loss,
  NaN/inf, point counts, frozen frames, value ranges). Any hard input failure alone gives 1.
* ``loo``: leave-one-out disagreement — mean joint distance (m) between the full prediction and
  the prediction without the modality, relative to its own running reference (EWMA over healthy
  ticks after a warm-up). A dominant modality that fails drags the full prediction with it, so its
  contribution share can stay high; its disagreement with the others does not.
  ``loo = clip((ratio - loo_ratio_on) / (loo_ratio_full - loo_ratio_on))``.
* ``drift``: distance of the live contribution share from the baseline share measured on
  validation data (model metadata): ``clip((|share - baseline| - drift_tolerance) / drift_span)``.
  With the default ``w_drift`` = 0.4 < ``theta_on`` drift alone never flags; it adds to the others.

Flag (hysteresis): a modality becomes degraded after ``k_on`` consecutive ticks with
score >= ``theta_on`` and recovers after ``k_off`` consecutive ticks with score <= ``theta_off``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.core import schema


@dataclass(frozen=True)
class DegradationConfig:
    theta_on: float = 0.5
    theta_off: float = 0.3
    k_on: int = 3
    k_off: int = 5
    w_loo: float = 0.7
    w_drift: float = 0.4
    loo_ratio_on: float = 3.0
    loo_ratio_full: float = 6.0
    loo_warmup_ticks: int = 20
    loo_ref_alpha: float = 0.02
    loo_floor_m: float = 0.005     # reference never below 5 mm (a modality the model ignores)
    drift_tolerance: float = 0.2
    drift_span: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.theta_off < self.theta_on <= 1.0:
            raise ValueError(f"degradation needs 0 <= theta_off < theta_on <= 1, got theta_off={self.theta_off}, "
                             f"theta_on={self.theta_on}")
        if self.k_on < 1 or self.k_off < 1:
            raise ValueError(f"degradation.k_on and k_off must be >= 1, got {self.k_on}, {self.k_off}")
        for f in ("w_loo", "w_drift", "loo_ref_alpha"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"degradation.{f} must be in [0, 1], got {getattr(self, f)}")
        if not 1.0 <= self.loo_ratio_on < self.loo_ratio_full:
            raise ValueError(f"degradation needs 1 <= loo_ratio_on < loo_ratio_full, got {self.loo_ratio_on}, "
                             f"{self.loo_ratio_full}")
        if self.loo_warmup_ticks < 1 or self.loo_floor_m <= 0 or self.drift_span <= 0 or self.drift_tolerance < 0:
            raise ValueError("degradation.loo_warmup_ticks >= 1, loo_floor_m > 0, drift_span > 0 and "
                             "drift_tolerance >= 0 are required")


@dataclass(frozen=True)
class DegradationResult:
    """One tick. Arrays [4] in MODALITIES order."""

    score: np.ndarray         # float [4] in [0, 1]
    degraded: np.ndarray      # bool [4], with hysteresis
    became_degraded: tuple[str, ...]   # modalities flagged at this tick
    recovered: tuple[str, ...]         # modalities unflagged at this tick
    input: np.ndarray         # float [4] input-health score
    loo: np.ndarray           # float [4] leave-one-out component
    drift: np.ndarray         # float [4] share-drift component
    loo_m: np.ndarray         # float [4] raw leave-one-out disagreement (metres)
    reasons: tuple[str, ...] = ("",) * schema.N_MODALITIES   # largest component per modality, "" if none


def dominant_reasons(input_score, input_reasons, loo_part, drift_part, floor: float = 0.05) -> tuple[str, ...]:
    """Per modality, what drives its score (for an operator): the input-health component's name
    (``missing``, ``stale``, ...), ``disagreement`` (leave-one-out) or ``drift`` (share drift),
    whichever weighs most in the noisy-OR; "" when all are below ``floor``."""
    out = []
    for i in range(schema.N_MODALITIES):
        parts = {input_reasons[i] if input_reasons is not None else "input": float(input_score[i]),
                 "disagreement": float(loo_part[i]), "drift": float(drift_part[i])}
        name, value = max(parts.items(), key=lambda kv: kv[1])
        out.append(name if value >= floor else "")
    return tuple(out)


def leave_one_out_disagreement(coalition_poses: np.ndarray, presence) -> np.ndarray:
    """Mean joint distance (m) between the full prediction of the present modalities and the
    prediction without each one. coalition_poses [16, 17, 3]; presence [4]. Returns [4] (0 for an
    absent modality)."""
    p = schema.coalition_index(np.asarray(presence) > 0)
    full = coalition_poses[p]
    out = np.zeros(schema.N_MODALITIES)
    for m in range(schema.N_MODALITIES):
        if p >> m & 1:
            out[m] = float(np.linalg.norm(coalition_poses[p & ~(1 << m)] - full, axis=-1).mean())
    return out


class DegradationMonitor:
    """Keeps the hysteresis state and the leave-one-out references; ``update`` once per tick."""

    def __init__(self, config: DegradationConfig | None = None):
        self.config = config or DegradationConfig()
        n = schema.N_MODALITIES
        self.degraded = np.zeros(n, dtype=bool)
        self._run_on = np.zeros(n, dtype=int)
        self._run_off = np.zeros(n, dtype=int)
        self._loo_ref = np.zeros(n)
        self._loo_seen = np.zeros(n, dtype=int)
        self.events = np.zeros(n, dtype=int)

    def update(self, input_score, loo_m, shares=None, baseline=None, presence=None,
               input_reasons=None) -> DegradationResult:
        """input_score [4] in [0, 1]; loo_m [4] metres (``leave_one_out_disagreement``); shares and
        baseline [4] contribution shares or None (no drift term); presence [4] 0/1 or None;
        input_reasons [4] names of the worst input-health component (``InputHealth.worst``) or None."""
        c = self.config
        input_score = np.clip(np.asarray(input_score, np.float64), 0.0, 1.0)
        loo_m = np.asarray(loo_m, np.float64)
        present = np.ones(schema.N_MODALITIES, bool) if presence is None else np.asarray(presence) > 0
        loo = self._loo_component(loo_m, present, input_score)
        drift = np.zeros(schema.N_MODALITIES)
        if shares is not None and baseline is not None:
            gap = np.abs(np.asarray(shares, np.float64) - np.asarray(baseline, np.float64))
            drift = np.clip((gap - c.drift_tolerance) / c.drift_span, 0.0, 1.0)
        score = 1.0 - (1.0 - input_score) * (1.0 - c.w_loo * loo) * (1.0 - c.w_drift * drift)
        on, off = self._hysteresis(score)
        reasons = dominant_reasons(input_score, input_reasons, c.w_loo * loo, c.w_drift * drift)
        return DegradationResult(score, self.degraded.copy(), on, off, input_score, loo, drift, loo_m, reasons)

    def _loo_component(self, loo_m: np.ndarray, present: np.ndarray, input_score: np.ndarray) -> np.ndarray:
        c = self.config
        ref = np.maximum(self._loo_ref, c.loo_floor_m)
        warm = self._loo_seen >= c.loo_warmup_ticks
        ratio = loo_m / ref
        loo = np.where(warm & present, np.clip((ratio - c.loo_ratio_on) / (c.loo_ratio_full - c.loo_ratio_on),
                                               0.0, 1.0), 0.0)
        # Learn the reference only from healthy ticks (present, inputs fine, not flagged, not an outlier).
        healthy = present & (input_score < c.theta_off) & ~self.degraded & (~warm | (ratio < c.loo_ratio_on))
        for m in np.flatnonzero(healthy):
            if self._loo_seen[m] == 0:
                self._loo_ref[m] = loo_m[m]
            else:
                # Faster learning during warm-up (running mean), slow EWMA after.
                a = max(c.loo_ref_alpha, 1.0 / (self._loo_seen[m] + 1)) if not warm[m] else c.loo_ref_alpha
                self._loo_ref[m] = (1 - a) * self._loo_ref[m] + a * loo_m[m]
            self._loo_seen[m] += 1
        return loo

    def _hysteresis(self, score: np.ndarray) -> tuple[tuple[str, ...], tuple[str, ...]]:
        c = self.config
        self._run_on = np.where(score >= c.theta_on, self._run_on + 1, 0)
        self._run_off = np.where(score <= c.theta_off, self._run_off + 1, 0)
        became = ~self.degraded & (self._run_on >= c.k_on)
        recovered = self.degraded & (self._run_off >= c.k_off)
        self.degraded = (self.degraded | became) & ~recovered
        self.events += became
        names = schema.MODALITIES
        return tuple(names[i] for i in np.flatnonzero(became)), tuple(names[i] for i in np.flatnonzero(recovered))
