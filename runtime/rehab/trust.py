"""How much to trust a figure measured over a span of ticks (a repetition), from what the runtime
knew at each of those ticks: which modalities were fused, which were flagged degraded, the live
contribution shares, and which plausibility checks the pose failed (``runtime.rehab.plausibility``).

Per span: ``fused_fraction`` (ticks fused with all four modalities / ticks), ``degraded`` (the
modalities flagged degraded at any tick of it), ``degraded_fraction`` per modality,
``mean_shares`` (mean label-free contribution shares), ``key_degraded_fraction`` (ticks with a key
modality degraded or absent), ``implausible_pose_fraction`` (ticks failing any plausibility check,
and per check in ``implausible_checks``), and the verdict: ``trust_flags`` (codes, ``FLAGS``) and
``low_confidence`` (any flag). A span is flagged when

* ``key_degraded``: a key modality was flagged degraded at any of its ticks (the degradation
  monitor's hysteresis already ignores a single bad tick): no repetition is "ok" while the
  modalities the fused pose leans on are degraded;
* ``key_absent``: a key modality was absent on more than ``low_confidence_fraction`` of its ticks;
* ``implausible_pose``: more than ``implausible_fraction`` of its ticks failed a plausibility check.

Key modalities are the strong ones the fused pose leans on (RGB and LiDAR by default: the
contribution baseline of a trained model and the paper's uni-modal table both rank them first).
The monitor adds two flags of its own: ``implausible_angle`` (the counted angle dropped by the
physiological gate on most ticks) and ``untrained_exercise`` (the model never learnt the exercise).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from runtime.rehab.plausibility import CHECKS
from sensors.core import schema

# Trust flags, in the order they are reported, with the words a therapist reads.
FLAGS: dict[str, str] = {
    "untrained_exercise": "the model was never trained on this exercise",
    "key_degraded": "a key sensor was degraded",
    "key_absent": "a key sensor was missing for most of it",
    "implausible_pose": "the pose was implausible on many ticks",
    "implausible_angle": "the angle left the physiological range on most ticks",
}


@dataclass(frozen=True)
class TrustConfig:
    key_modalities: tuple[str, ...] = schema.REHAB_KEY_MODALITIES
    low_confidence_fraction: float = 0.5
    implausible_fraction: float = 0.25  # of a repetition's ticks failing a plausibility check
    history_ticks: int = 3000           # ticks kept (a repetition longer than this is judged on its tail)

    def __post_init__(self):
        object.__setattr__(self, "key_modalities", tuple(self.key_modalities))
        bad = [m for m in self.key_modalities if m not in schema.MODALITIES]
        if bad or not self.key_modalities:
            raise ValueError(f"rehab.key_modalities: expected a non-empty subset of {schema.MODALITIES}, got "
                             f"{list(self.key_modalities)}")
        if not 0 < self.low_confidence_fraction <= 1 or not 0 < self.implausible_fraction <= 1 \
                or self.history_ticks < 10:
            raise ValueError(f"rehab: low_confidence_fraction and implausible_fraction must be in (0, 1] and "
                             f"history_ticks >= 10, got {self.low_confidence_fraction}, {self.implausible_fraction}, "
                             f"{self.history_ticks}")


def trust_words(flags) -> list[str]:
    """The trust flags of a repetition, in words (``FLAGS``), in the order of ``FLAGS``."""
    return [FLAGS[f] for f in FLAGS if f in set(flags or ())]


def with_flag(rep: dict, flag: str) -> dict:
    """Add ``flag`` to a repetition's verdict (it becomes low-confidence)."""
    flags = set(rep.get("trust_flags") or ()) | {flag}
    rep["trust_flags"] = [f for f in FLAGS if f in flags]
    rep["low_confidence"] = True
    return rep


class TrustTracker:
    """Per-tick trust inputs in a bounded history; ``over(start, end)`` judges a span of ticks."""

    def __init__(self, config: TrustConfig = TrustConfig()):
        self.config = config
        self.key = np.array([schema.MODALITY_INDEX[m] for m in config.key_modalities])
        self._rows: deque[tuple[int, bool, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]] = deque(
            maxlen=config.history_ticks)

    def add(self, tick: int, presence, degraded, shares=None, implausible=()) -> None:
        """presence, degraded: [4] 0/1 in MODALITIES order; shares: [4] or None (not yet known);
        implausible: the plausibility checks the tick's pose failed (``plausibility.CHECKS`` names)."""
        present = np.asarray(presence, bool).reshape(schema.N_MODALITIES)
        flags = np.asarray(degraded, bool).reshape(schema.N_MODALITIES)
        s = None if shares is None else np.asarray(shares, np.float64).reshape(schema.N_MODALITIES)
        failed = np.array([c in implausible for c in CHECKS])
        self._rows.append((int(tick), bool(present.all()), present, flags, s, failed))

    def over(self, start_tick: int, end_tick: int) -> dict:
        rows = [r for r in self._rows if start_tick <= r[0] <= end_tick]
        if not rows:
            return {"ticks": 0, "fused_fraction": None, "degraded": [], "degraded_fraction": {},
                    "mean_shares": None, "key_degraded_fraction": None, "implausible_pose_fraction": None,
                    "implausible_checks": {}, "trust_flags": ["key_absent"], "low_confidence": True}
        fused = np.array([r[1] for r in rows])
        present = np.stack([r[2] for r in rows])
        flags = np.stack([r[3] for r in rows])
        shares = [r[4] for r in rows if r[4] is not None]
        failed = np.stack([r[5] for r in rows])
        frac = flags.mean(axis=0)
        key_flagged = flags[:, self.key].any()
        key_frac = float((flags[:, self.key] | ~present[:, self.key]).any(axis=1).mean())
        absent_frac = float((~present[:, self.key]).any(axis=1).mean())
        pose_frac = float(failed.any(axis=1).mean())
        verdict = [f for f, on in (("key_degraded", key_flagged),
                                   ("key_absent", absent_frac > self.config.low_confidence_fraction),
                                   ("implausible_pose", pose_frac > self.config.implausible_fraction)) if on]
        return {
            "ticks": len(rows),
            "fused_fraction": round(float(fused.mean()), 3),
            "degraded": [m for m, f in zip(schema.MODALITIES, frac) if f > 0],
            "degraded_fraction": {m: round(float(f), 3) for m, f in zip(schema.MODALITIES, frac)},
            "mean_shares": None if not shares else
            {m: round(float(v), 3) for m, v in zip(schema.MODALITIES, np.mean(shares, axis=0))},
            "key_degraded_fraction": round(key_frac, 3),
            "implausible_pose_fraction": round(pose_frac, 3),
            "implausible_checks": {c: round(float(f), 3) for c, f in zip(CHECKS, failed.mean(axis=0))},
            "trust_flags": [f for f in FLAGS if f in verdict],
            "low_confidence": bool(verdict),
        }
