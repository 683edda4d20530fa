"""Input health of each modality at a tick (pure, torch-free).

Per modality and tick, ``InputHealthChecker.observe`` turns the synced sample into components in
[0, 1] (1 = failed):

=============  ====================================================================================
missing        1 when the modality has no sample at this tick (stopped, or older than the sync's
               maximum age); a modality never seen yet counts only after ``startup_grace_ticks``
stale          age of the used sample beyond the sync tolerance, scaled to 1 at the maximum age
clock          how far the modality's newest capture time runs AHEAD of the runtime's clock (wall
               clock, or the data clock of a replay) beyond the tolerance, 1 at the maximum age: a
               sensor clock that is wrong (capture times in the future)
loss           fraction of messages lost upstream (sequence gaps) over the last ``loss_window_ticks``,
               scaled to 1 at ``loss_full``; a gap found when a missing stream resumes is the outage
               itself (already ``missing``) and is not counted again
non_finite     fraction of NaN/inf values in the sample, scaled to 1 at ``non_finite_full``
points         point count outside the modality's plausible range (LiDAR too few, any cloud too many)
frozen         1 once ``frozen_ticks`` consecutive NEW messages (new sequence number) carried
               byte-identical arrays (a stuck driver re-sending its last frame); empty clouds never count
range          fraction of finite values outside the modality's plausible value range, scaled to 1
               at ``range_full``
noise          roughness of the sample relative to its own running reference (learnt over healthy
               messages after ``noise_warmup`` of them): 0 below ``noise_ratio_on`` times the
               reference, 1 at ``noise_ratio_full`` times. Roughness (``roughness``): RGB = mean
               keypoint displacement since the previous message (px); LiDAR = median distance between
               consecutive points of the scan (m, points come ring by ring); mmWave = mean distance of
               the points to their median (m); WiFi = median amplitude step between adjacent
               subcarriers (dB). Catches corruption that stays inside the plausible ranges.
=============  ====================================================================================

The input score of a modality is the largest component: any one failure is enough.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np

from sensors.core import schema

COMPONENTS: tuple[str, ...] = ("missing", "stale", "clock", "loss", "non_finite", "points", "frozen", "range", "noise")
# Smallest roughness reference per modality (px, m, m, dB): a perfectly still scene is not "noise-free".
ROUGHNESS_FLOOR: dict[str, float] = {m: spec.roughness_floor for m, spec in schema.MODALITY_SPECS.items()}
# Plausible value range per modality and value column (inclusive), before model preprocessing.
DEFAULT_VALUE_RANGES: dict[str, list[list[float]]] = {
    m: [list(r) for r in spec.value_ranges] for m, spec in schema.MODALITY_SPECS.items()}
DEFAULT_POINT_RANGES: dict[str, list[int]] = {
    m: list(spec.point_range) for m, spec in schema.MODALITY_SPECS.items() if spec.point_range}


@dataclass(frozen=True)
class HealthConfig:
    frozen_ticks: int = 3          # identical new messages in a row before `frozen` is 1
    non_finite_full: float = 0.05  # fraction of NaN/inf values giving score 1
    range_full: float = 0.10       # fraction of out-of-range values giving score 1
    loss_window_ticks: int = 20
    loss_full: float = 0.5         # lost-message fraction giving score 1
    startup_grace_ticks: int = 50  # a modality never seen yet is not `missing` during the first ticks
    noise_ratio_on: float = 3.0    # roughness / reference where `noise` starts
    noise_ratio_full: float = 6.0  # ... and where it reaches 1
    noise_warmup: int = 20         # new messages before the reference is trusted
    noise_ref_alpha: float = 0.02  # EWMA weight of a healthy message in the reference
    tolerance_s: float = 0.05      # sync tolerance: no staleness below it
    max_age_s: float = 0.3         # sync maximum age: staleness 1 there
    value_ranges: dict[str, list[list[float]]] = field(default_factory=lambda: dict(DEFAULT_VALUE_RANGES))
    point_ranges: dict[str, list[int]] = field(default_factory=lambda: dict(DEFAULT_POINT_RANGES))

    def __post_init__(self):
        if not 1.0 <= self.noise_ratio_on < self.noise_ratio_full:
            raise ValueError(f"health needs 1 <= noise_ratio_on < noise_ratio_full, got {self.noise_ratio_on}, "
                             f"{self.noise_ratio_full}")
        if self.noise_warmup < 1 or not 0.0 < self.noise_ref_alpha <= 1.0:
            raise ValueError(f"health.noise_warmup must be >= 1 and noise_ref_alpha in (0, 1], got "
                             f"{self.noise_warmup}, {self.noise_ref_alpha}")
        if self.startup_grace_ticks < 0:
            raise ValueError(f"health.startup_grace_ticks must be >= 0, got {self.startup_grace_ticks}")
        for f in ("frozen_ticks", "loss_window_ticks"):
            if getattr(self, f) < 1:
                raise ValueError(f"health.{f} must be >= 1, got {getattr(self, f)}")
        for f in ("non_finite_full", "range_full", "loss_full"):
            if not 0.0 < getattr(self, f) <= 1.0:
                raise ValueError(f"health.{f} must be in (0, 1], got {getattr(self, f)}")
        if not 0.0 <= self.tolerance_s < self.max_age_s:
            raise ValueError(f"health needs 0 <= tolerance_s < max_age_s, got {self.tolerance_s} and "
                             f"{self.max_age_s}")
        for m, ranges in self.value_ranges.items():
            if m not in schema.MODALITIES:
                raise ValueError(f"health.value_ranges: unknown modality {m!r}, expected one of {schema.MODALITIES}")
            for lo_hi in ranges:
                if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                    raise ValueError(f"health.value_ranges.{m}: each entry must be [low, high] with low < high, "
                                     f"got {lo_hi}")
        for m, (lo, hi) in self.point_ranges.items():
            if m not in schema.POINT_MODALITIES or not 0 <= lo <= hi:
                raise ValueError(f"health.point_ranges: expected {'/'.join(schema.POINT_MODALITIES)} -> [min, max] "
                                 f"with 0 <= min <= max, got {m}: {[lo, hi]}")


@dataclass
class InputHealth:
    """Components in [0, 1] of one modality at one tick (1 = failed)."""

    missing: float = 0.0
    stale: float = 0.0
    clock: float = 0.0
    loss: float = 0.0
    non_finite: float = 0.0
    points: float = 0.0
    frozen: float = 0.0
    range: float = 0.0
    noise: float = 0.0

    @property
    def score(self) -> float:
        return max(getattr(self, f.name) for f in fields(self))

    def worst(self) -> str:
        """Name of the largest component (the reason to show an operator)."""
        return max((f.name for f in fields(self)), key=lambda n: getattr(self, n))


def _clip01(x: float) -> float:
    """Clip to [0, 1]; NaN (a value that cannot be judged) counts as failed, 1."""
    x = float(x)
    return 1.0 if x != x else min(1.0, max(0.0, x))


def _digest(arrays: dict[str, np.ndarray]) -> bytes | None:
    """Content hash of a sample's arrays; None when they hold no values (empty cloud)."""
    if all(np.asarray(a).size == 0 for a in arrays.values()):
        return None
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()


def value_columns(modality: str, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The value columns checked against ``value_ranges`` (one flat array per range entry):
    keypoints and points column by column, CSI array by array (amplitude, phase)."""
    spec = schema.MODALITY_SPECS[modality]
    if spec.kind == schema.CSI:
        return [np.asarray(arrays[a.name]).ravel() for a in spec.wire]
    values = np.asarray(arrays[spec.wire[0].name])
    if spec.kind == schema.KEYPOINTS:
        values = values.reshape(-1, values.shape[-1])
    return [values[..., i].ravel() for i in range(values.shape[-1])] if values.ndim == 2 else [values.ravel()]


def _displacement(spec: schema.ModalitySpec, arrays, previous) -> float | None:
    """Mean keypoint displacement since the previous message (px)."""
    if previous is None:
        return None
    name = spec.wire[0].name
    with np.errstate(invalid="ignore", over="ignore"):   # NaN/inf keypoints: left out below
        d = np.linalg.norm(np.asarray(arrays[name], np.float64) - np.asarray(previous[name], np.float64), axis=-1)
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else None


def _ring_step(spec: schema.ModalitySpec, arrays, previous) -> float | None:
    """Median distance between consecutive points of the scan (m; points come ring by ring)."""
    p = np.asarray(arrays[spec.wire[0].name], np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    return float(np.median(np.linalg.norm(np.diff(p, axis=0), axis=-1))) if len(p) >= 10 else None


def _spread(spec: schema.ModalitySpec, arrays, previous) -> float | None:
    """Mean distance of the points (x, y, z) to their median (m)."""
    p = np.asarray(arrays[spec.wire[0].name], np.float64)[:, :3]
    p = p[np.isfinite(p).all(axis=1)]
    return float(np.linalg.norm(p - np.median(p, axis=0), axis=-1).mean()) if len(p) >= 3 else None


def _subcarrier_step(spec: schema.ModalitySpec, arrays, previous) -> float | None:
    """Median amplitude step between adjacent subcarriers (dB)."""
    amp = np.asarray(arrays[spec.wire[0].name], np.float64)
    with np.errstate(invalid="ignore"):   # inf - inf in raw CSI: dropped just below
        step = np.abs(np.diff(amp, axis=-1))
    step = step[np.isfinite(step)]
    return float(np.median(step)) if step.size else None


# The roughness measures a modality can name (``ModalitySpec.roughness``).
ROUGHNESS = {"displacement": _displacement, "ring_step": _ring_step, "spread": _spread,
             "subcarrier_step": _subcarrier_step}


def roughness(modality: str, arrays: dict[str, np.ndarray], previous: dict[str, np.ndarray] | None) -> float | None:
    """Roughness of one sample (see the module doc), or None when it cannot be measured (too few
    points, no previous keypoints, no finite value)."""
    spec = schema.MODALITY_SPECS[modality]
    return ROUGHNESS[spec.roughness](spec, arrays, previous)


class InputHealthChecker:
    """Stateful over ticks (frozen runs, loss history); one instance per runtime."""

    def __init__(self, config: HealthConfig | None = None):
        self.config = config or HealthConfig()
        self._last_id: dict[str, tuple] = {}
        self._last_digest: dict[str, bytes | None] = {}
        self._frozen_run: dict[str, int] = dict.fromkeys(schema.MODALITIES, 0)
        self._seen: set[str] = set()
        self._was_missing: dict[str, bool] = {}
        self._previous: dict[str, dict[str, np.ndarray]] = {}
        self._rough_ref = dict.fromkeys(schema.MODALITIES, 0.0)
        self._rough_seen = dict.fromkeys(schema.MODALITIES, 0)
        self._noise: dict[str, float] = dict.fromkeys(schema.MODALITIES, 0.0)
        self._observed: dict[str, int] = dict.fromkeys(schema.MODALITIES, 0)
        w = self.config.loss_window_ticks
        self._loss: dict[str, deque[tuple[int, int]]] = {m: deque(maxlen=w) for m in schema.MODALITIES}

    def observe(self, modality: str, arrays: dict[str, np.ndarray] | None, *, age_s: float = 0.0, lead_s: float = 0.0,
                message_id: tuple | None = None, received: int = 0, lost: int = 0) -> InputHealth:
        """One modality at one tick.

        arrays: the synced sample's arrays (wire names: ``kpts``, ``points``, ``amp``/``phase``),
        None when absent. age_s: tick time minus capture time (s). lead_s: newest capture time of
        the modality minus the runtime's clock (s; > 0 = in the future). message_id: (src, seq) of the
        sample, so a sample reused at several ticks is not taken for a frozen sensor. received /
        lost: messages received and lost upstream (sequence gaps) since the previous tick.
        """
        c = self.config
        # Messages lost while the modality was missing are that outage itself (already `missing`):
        # `loss` is about drops while the stream is up, so a resumed stream is not flagged on.
        if self._was_missing.get(modality, False):
            lost = 0
        self._was_missing[modality] = arrays is None
        h = InputHealth(loss=self._loss_score(modality, received, lost),
                        clock=_clip01((lead_s - c.tolerance_s) / (c.max_age_s - c.tolerance_s)))
        self._observed[modality] += 1
        if arrays is None:
            grace = modality not in self._seen and self._observed[modality] <= self.config.startup_grace_ticks
            h.missing = 0.0 if grace else 1.0
            return h
        self._seen.add(modality)
        h.stale = _clip01((abs(age_s) - c.tolerance_s) / (c.max_age_s - c.tolerance_s))
        columns = value_columns(modality, arrays)
        values = np.concatenate([np.asarray(v, np.float64).ravel() for v in columns]) if columns else np.zeros(0)
        if values.size:
            finite = np.isfinite(values)
            h.non_finite = _clip01((1.0 - finite.mean()) / c.non_finite_full)
            h.range = _clip01(self._out_of_range(modality, columns) / c.range_full)
        h.points = self._points_score(modality, arrays)
        new = message_id is None or self._last_id.get(modality) != message_id
        if new:
            self._noise[modality] = self._noise_score(modality, arrays)
        h.noise = self._noise[modality]
        h.frozen = self._frozen_score(modality, arrays, message_id)
        return h

    def _noise_score(self, modality: str, arrays: dict[str, np.ndarray]) -> float:
        """Roughness against the running reference; learns the reference from healthy messages."""
        c = self.config
        r = roughness(modality, arrays, self._previous.get(modality))
        self._previous[modality] = arrays
        if r is None:
            return self._noise[modality]
        seen = self._rough_seen[modality]
        ratio = r / max(self._rough_ref[modality], ROUGHNESS_FLOOR[modality])
        warm = seen >= c.noise_warmup
        if not warm or ratio < c.noise_ratio_on:
            a = max(c.noise_ref_alpha, 1.0 / (seen + 1)) if not warm else c.noise_ref_alpha
            self._rough_ref[modality] = r if seen == 0 else (1 - a) * self._rough_ref[modality] + a * r
            self._rough_seen[modality] = seen + 1
        if not warm:
            return 0.0
        return _clip01((ratio - c.noise_ratio_on) / (c.noise_ratio_full - c.noise_ratio_on))

    def _loss_score(self, modality: str, received: int, lost: int) -> float:
        hist = self._loss[modality]
        hist.append((int(received), int(lost)))
        got = sum(r for r, _ in hist)
        gone = sum(lo for _, lo in hist)
        if got + gone == 0:
            return 0.0
        return _clip01(gone / (got + gone) / self.config.loss_full)

    def _out_of_range(self, modality: str, columns: list[np.ndarray]) -> float:
        ranges = self.config.value_ranges.get(modality)
        if not ranges:
            return 0.0
        bad = total = 0
        for col, (lo, hi) in zip(columns, ranges):
            col = np.asarray(col, np.float64)
            col = col[np.isfinite(col)]
            bad += int(((col < lo) | (col > hi)).sum())
            total += col.size
        return bad / total if total else 0.0

    def _points_score(self, modality: str, arrays: dict[str, np.ndarray]) -> float:
        rng = self.config.point_ranges.get(modality)
        spec = schema.MODALITY_SPECS[modality]
        if rng is None or spec.kind != schema.POINTS or spec.wire[0].name not in arrays:
            return 0.0
        points = np.asarray(arrays[spec.wire[0].name])
        n = int(points.shape[0]) if points.ndim else 0
        return 0.0 if rng[0] <= n <= rng[1] else 1.0

    def _frozen_score(self, modality: str, arrays: dict[str, np.ndarray], message_id: tuple | None) -> float:
        if message_id is not None and self._last_id.get(modality) == message_id:
            # The same message reused at another tick: no new evidence either way.
            return 1.0 if self._frozen_run[modality] >= self.config.frozen_ticks else 0.0
        digest = _digest(arrays)
        previous = self._last_digest.get(modality)
        if digest is not None and digest == previous:
            self._frozen_run[modality] += 1
        else:
            self._frozen_run[modality] = 0
        self._last_digest[modality] = digest
        if message_id is not None:
            self._last_id[modality] = message_id
        return 1.0 if self._frozen_run[modality] >= self.config.frozen_ticks else 0.0
