"""Live Shapley contributions over a sliding window of ticks (pure, torch-free).

Every tick the model gives the prediction of all 16 coalitions (``coalition_poses`` [16, 17, 3],
bitmask order of ``sensors.core.schema``). Over the last N ticks:

* label-free: the profit of coalition S is the Pearson profit (``posemath.pearson_profit``) of its
  predictions against the full prediction of the present modalities;
* with labels: when the replay sends ground truth (``gt`` topic), the profit of S is measured
  against the true joints of the ticks that carry them (at least 2 in the window).

A modality that is absent at a tick cannot contribute at that tick: coalition S is read as
``S & presence`` (the prediction of the present part of S), so a modality absent over the whole
window gets exactly zero Shapley value and share, whatever the model does with zero inputs.

Shapley values come from ``posemath.shapley_values`` (exact, 16 coalitions), shares from
``posemath.contribution_shares``. The exact per-window values go on the pose stream; EWMA-smoothed
values feed the gauges.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sensors.core import posemath, schema

# For each coalition c and presence index p: the coalition that is really evaluated, c & p.
_EFFECTIVE = np.array([[c & p for c in range(schema.N_COALITIONS)] for p in range(schema.N_COALITIONS)])


@dataclass(frozen=True)
class ContributionConfig:
    """window_ticks: sliding window length N (ticks); ewma_alpha: smoothing of the gauge values
    (weight of the newest tick); min_gt_ticks: ticks with ground truth needed for labelled values."""

    window_ticks: int = 30
    ewma_alpha: float = 0.2
    min_gt_ticks: int = 5

    def __post_init__(self):
        if self.window_ticks < 2:
            raise ValueError(f"contributions.window_ticks must be >= 2 (Pearson needs 2 ticks), "
                             f"got {self.window_ticks}")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError(f"contributions.ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        if not 2 <= self.min_gt_ticks <= self.window_ticks:
            raise ValueError(f"contributions.min_gt_ticks must be in 2..window_ticks ({self.window_ticks}), "
                             f"got {self.min_gt_ticks}")


@dataclass(frozen=True)
class Contributions:
    """One tick's view of the window. Arrays are float64; [16] in bitmask order, [4] in MODALITIES
    order. ``*_gt`` are None when the window holds too few ground-truth ticks."""

    ticks: int                    # ticks in the window
    values: np.ndarray            # [16] coalition profits, label-free
    shapley: np.ndarray           # [4]
    shares: np.ndarray            # [4], sum 1
    smoothed_shapley: np.ndarray  # [4] EWMA of shapley
    smoothed_shares: np.ndarray   # [4] EWMA of shares
    values_gt: np.ndarray | None = None
    shapley_gt: np.ndarray | None = None
    shares_gt: np.ndarray | None = None


def effective_coalitions(coalition_poses: np.ndarray, presence) -> np.ndarray:
    """[16, 17, 3] -> [16, 17, 3] where entry c is the prediction of ``c & presence``."""
    p = schema.coalition_index(np.asarray(presence) > 0)
    return np.asarray(coalition_poses)[_EFFECTIVE[p]]


def window_values(preds: np.ndarray, target: np.ndarray, seen: int = schema.FULL_COALITION
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """preds [N, 16, 17, 3] (effective coalitions), target [N, 17, 3], seen: bitmask of the
    modalities present at some tick of the window -> (values [16], shapley [4], shares [4]).

    A coalition made only of modalities never seen in the window evaluates the empty coalition at
    every tick, so its value is v(empty) = 0.
    """
    values = posemath.coalition_values(preds, target)
    values[[c for c in range(schema.N_COALITIONS) if c & seen == 0]] = 0.0
    phi = posemath.shapley_values(values)
    phi[[m for m in range(schema.N_MODALITIES) if not seen >> m & 1]] = 0.0   # exact 0, not 1e-17
    return values, phi, posemath.contribution_shares(phi)


class ContributionTracker:
    """Sliding window of coalition predictions; ``update`` once per tick."""

    def __init__(self, config: ContributionConfig | None = None):
        self.config = config or ContributionConfig()
        n = self.config.window_ticks
        self._preds: deque[np.ndarray] = deque(maxlen=n)   # [16, 17, 3] effective
        self._gt: deque[np.ndarray | None] = deque(maxlen=n)
        self._present: deque[int] = deque(maxlen=n)   # presence bitmask per tick
        self._ewma_phi: np.ndarray | None = None
        self._ewma_shares: np.ndarray | None = None

    def reset(self) -> None:
        self._preds.clear()
        self._gt.clear()
        self._present.clear()
        self._ewma_phi = self._ewma_shares = None

    def update(self, coalition_poses: np.ndarray, presence, gt: np.ndarray | None = None) -> Contributions:
        """coalition_poses [16, 17, 3] metres; presence [4] 0/1; gt [17, 3] metres or None."""
        eff = effective_coalitions(coalition_poses, presence)
        self._preds.append(eff.astype(np.float64))
        self._present.append(schema.coalition_index(np.asarray(presence) > 0))
        self._gt.append(None if gt is None else np.asarray(gt, np.float64).reshape(schema.N_JOINTS, 3))
        preds = np.stack(self._preds)
        seen = int(np.bitwise_or.reduce(np.asarray(self._present)))
        values, phi, shares = window_values(preds, preds[:, schema.FULL_COALITION], seen)
        self._smooth(phi, shares)
        values_gt = phi_gt = shares_gt = None
        with_gt = [i for i, g in enumerate(self._gt) if g is not None]
        if len(with_gt) >= self.config.min_gt_ticks:
            target = np.stack([self._gt[i] for i in with_gt])
            seen_gt = int(np.bitwise_or.reduce(np.asarray(self._present)[with_gt]))
            values_gt, phi_gt, shares_gt = window_values(preds[with_gt], target, seen_gt)
        return Contributions(len(self._preds), values, phi, shares, self._ewma_phi.copy(),
                             self._ewma_shares.copy(), values_gt, phi_gt, shares_gt)

    def _smooth(self, phi: np.ndarray, shares: np.ndarray) -> None:
        a = self.config.ewma_alpha
        if self._ewma_phi is None:
            self._ewma_phi, self._ewma_shares = phi.copy(), shares.copy()
        else:
            self._ewma_phi = (1 - a) * self._ewma_phi + a * phi
            self._ewma_shares = (1 - a) * self._ewma_shares + a * shares
