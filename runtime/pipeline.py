"""One tick, pure: synced inputs -> features -> ONE inference (pose + 16 coalitions) ->
contributions -> degradation -> ``TickResult``.

``Pipeline.step(inputs)`` reads no clock but ``perf_counter`` (stage durations), touches no socket,
file or metric and logs nothing: it only updates the state its stages keep between ticks (the
RGB keypoint history, input health, the contribution window, degradation hysteresis). What
surrounds it lives elsewhere:

* ``runtime.loop``: the wall and data clocks, message buffering for sync, latest-wins tick
  dropping, and the per-tick gathering of ``StepInputs``;
* ``runtime.outputs``: what is done with a ``TickResult`` (Prometheus metrics, pose stream,
  recorder, console, log lines), behind one small interface that ``runtime.serve`` assembles;
* ``runtime.ingest``: decoding and the counting of sequence gaps (``Message.lost``).

Whatever modalities are present are served (absent ones zero-filled, presence 0); a tick with no
modality at all has outcome ``empty`` and no pose. Non-finite values never reach an output as
valid: a modality whose model input holds NaN/inf is masked out (presence 0) and flagged
(``non_finite`` = 1 in its input health, so it degrades); a pose or coalition output with NaN/inf
gives outcome ``invalid``: no pose is published and the contribution window is not fed. A tick whose inputs the model refuses raises
``ModelError``; inputs the preprocessing cannot read raise ``ValueError`` (the loop counts both).

Adding a per-tick value: add a field to ``TickResult`` (with a default) and fill it in ``step``;
outputs read it from there (see docs/runtime.md, "Adding an output or a tick field").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime.config import RuntimeConfig
from runtime.contributions import Contributions, ContributionTracker
from runtime.degradation import DegradationMonitor, DegradationResult, leave_one_out_disagreement
from runtime.features import FeatureBuilder
from runtime.health import InputHealth, InputHealthChecker
from runtime.rehab.monitor import RehabMonitor, RehabTick
from runtime.sync import TickInputs
from sensors.core import schema

OUTCOMES: tuple[str, ...] = ("fused", "partial", "empty", "invalid")
MODALITY_INPUTS = schema.MODALITY_INPUTS   # model inputs of each modality, for masking one out


def mask_non_finite(inputs: dict[str, np.ndarray], presence: np.ndarray) -> list[int]:
    """Zero-fill (and mark absent) every present modality whose model inputs hold NaN/inf; returns
    their indices. ``inputs``/``presence`` are updated in place (copies where arrays are replaced)."""
    bad = []
    for i, m in enumerate(schema.MODALITIES):
        if presence[i] and not all(np.isfinite(inputs[k]).all() for k in MODALITY_INPUTS[m]):
            bad.append(i)
            for k in MODALITY_INPUTS[m]:
                inputs[k] = np.zeros_like(inputs[k])
            presence[i] = 0.0
    if bad:
        inputs["presence"] = presence[None].astype(inputs["presence"].dtype)
    return bad


def _is_empty_cloud(sample) -> bool:
    """A synced LiDAR/radar message with no points (a still subject gives the radar nothing)."""
    points = None if sample is None else sample.arrays.get("points")
    return points is not None and len(points) == 0


def _zeros_i8() -> np.ndarray:
    return np.zeros(schema.N_MODALITIES, np.int64)


@dataclass
class StepInputs:
    """Everything one tick needs, gathered by ``runtime.loop``. Arrays in MODALITIES order."""

    synced: TickInputs                                    # samples nearest the tick (runtime.sync)
    received: np.ndarray = field(default_factory=_zeros_i8)   # messages per modality since the last tick
    lost: np.ndarray = field(default_factory=_zeros_i8)       # messages lost before those (Message.lost)
    lead_s: np.ndarray = field(default_factory=lambda: np.zeros(schema.N_MODALITIES))
    # ^ newest capture time of the modality minus the clock's "now" (s; > 0 = a sensor clock ahead)
    exercise: list[tuple[int, str, str | None]] = field(default_factory=list)
    # ^ (capture t_ns, exercise, session) from input headers since the last tick (runtime.rehab.monitor)


@dataclass
class TickResult:
    """Everything one tick produced. Arrays in MODALITIES order; poses in metres."""

    tick: int
    tick_ns: int
    outcome: str                          # fused | partial | empty
    presence: np.ndarray                  # float32 [4]: input present to the model
    health: list[InputHealth]             # per modality
    degradation: DegradationResult
    pose: np.ndarray | None = None        # float32 [17, 3]
    coalition_poses: np.ndarray | None = None   # float32 [16, 17, 3]
    contributions: Contributions | None = None
    gt: np.ndarray | None = None          # float32 [17, 3] when the replay sent ground truth
    input_t_ns: np.ndarray = field(default_factory=_zeros_i8)   # capture time of each used sample (0 = absent)
    skew_s: np.ndarray = field(default_factory=lambda: np.zeros(schema.N_MODALITIES))   # used sample - tick (s)
    staleness_s: np.ndarray = field(default_factory=lambda: np.full(schema.N_MODALITIES, np.nan))
    # ^ tick - newest capture at or before it (s; NaN = none yet)
    latency_ns: int = 0                   # newest used capture time -> outputs called (set by the loop)
    durations: dict[str, float] = field(default_factory=dict)   # stage -> seconds
    inputs: dict[str, np.ndarray] | None = None                 # model inputs (batch 1), when recorded
    received: np.ndarray = field(default_factory=lambda: np.zeros(schema.N_MODALITIES, np.float32))
    # ^ 1 = a message of the modality was synced for this tick, empty or not ("silent" when 0)
    empty: np.ndarray = field(default_factory=lambda: np.zeros(schema.N_MODALITIES, np.float32))
    # ^ 1 = that message was an empty point cloud (the sensor runs but saw nothing; absent to the model)
    points: dict[str, np.ndarray] | None = None   # lidar/mmwave points used, when output.forward_points > 0
    rehab: RehabTick | None = None        # joint angles, repetitions (runtime.rehab.monitor), when enabled


def forwarded_points(samples: dict, cap: int) -> dict[str, np.ndarray] | None:
    """The LiDAR and mmWave points of this tick's samples, evenly thinned to ``cap`` each (float32,
    sensor frame), for viewers; None when ``cap`` is 0."""
    if cap <= 0:
        return None
    out = {}
    for m in schema.POINT_MODALITIES:
        s = samples.get(m)
        if s is not None:
            p = np.asarray(s.arrays[schema.MODALITY_SPECS[m].wire[0].name], np.float32)
            if len(p) > cap:
                p = p[np.linspace(0, len(p) - 1, cap).astype(int)]
            out[m] = np.ascontiguousarray(p)
    return out


class Pipeline:
    """The per-tick stages of one station around a loaded ``OnnxPoseModel``."""

    def __init__(self, config: RuntimeConfig, model):
        self.config = config
        self.model = model
        self.features = FeatureBuilder.from_metadata(model.metadata)
        self.health = InputHealthChecker(config.health)
        self.contributions = ContributionTracker(config.contributions)
        self.degradation = DegradationMonitor(config.degradation)
        baseline = model.metadata.baseline
        self.baseline_shares = None if baseline is None else baseline.shares
        self.record_inputs = config.recorder.record_inputs
        trained = getattr(model.metadata, "trained_actions", ()) or None    # () = the file does not say
        self.rehab = RehabMonitor(config.rehab, config.sync.rate_hz, trained) if config.rehab.enabled else None

    def step(self, inputs: StepInputs) -> TickResult:
        """Run one tick on the synced ``inputs``; no I/O."""
        tick = inputs.synced
        durations: dict[str, float] = {}
        t1 = time.perf_counter()
        feats = self.features.build(tick)
        health = self._observe_health(inputs)
        t2 = time.perf_counter()
        durations["preprocess"] = t2 - t1
        presence = feats.presence
        for i in mask_non_finite(feats.inputs, presence):
            health[i].non_finite = 1.0
        n_present = int(presence.sum())
        outcome = "empty" if n_present == 0 else ("fused" if n_present == schema.N_MODALITIES else "partial")
        samples = [tick.samples.get(m) for m in schema.MODALITIES]
        newest = [tick.newest_ns.get(m) for m in schema.MODALITIES]
        result = TickResult(
            tick=tick.index, tick_ns=int(tick.tick_ns), outcome=outcome, presence=presence, health=health,
            degradation=None, gt=tick.gt, durations=durations,
            input_t_ns=np.array([0 if s is None else s.t_ns for s in samples], np.int64),
            skew_s=np.array([0.0 if s is None else s.skew_s for s in samples]),
            staleness_s=np.array([np.nan if n is None else (tick.tick_ns - n) / 1e9 for n in newest]),
            inputs=feats.inputs if self.record_inputs else None, received=tick.presence(),
            empty=np.array([_is_empty_cloud(s) for s in samples], np.float32),
            points=forwarded_points(tick.samples, self.config.output.forward_points))
        loo = np.zeros(schema.N_MODALITIES)
        shares = None
        if n_present:
            pose, coalitions = self.model.run(feats.inputs)
            t3 = time.perf_counter()
            durations["inference"] = t3 - t2
            t2 = t3
            if np.isfinite(pose).all() and np.isfinite(coalitions).all():
                result.pose, result.coalition_poses = pose[0], coalitions[0]
                result.contributions = self.contributions.update(coalitions[0], presence, tick.gt)
                t4 = time.perf_counter()
                durations["contributions"] = t4 - t3
                loo = leave_one_out_disagreement(coalitions[0], presence)
                if result.contributions.ticks >= self.config.contributions.window_ticks:
                    shares = result.contributions.smoothed_shares
                t2 = t4
            else:
                result.outcome = "invalid"   # never published as a valid pose
        result.degradation = self.degradation.update([h.score for h in health], loo, shares,
                                                     self.baseline_shares, presence, [h.worst() for h in health])
        t5 = time.perf_counter()
        durations["degradation"] = t5 - t2
        if self.rehab is not None:
            for t_ns, exercise, session in inputs.exercise:
                self.rehab.request(t_ns, exercise, session)
            c = result.contributions
            result.rehab = self.rehab.update(result.tick, result.tick_ns, result.pose, presence,
                                             result.degradation.degraded, None if c is None else c.shares)
            durations["rehab"] = time.perf_counter() - t5
        return result

    def _observe_health(self, inputs: StepInputs) -> list[InputHealth]:
        tick = inputs.synced
        out = []
        for i, m in enumerate(schema.MODALITIES):
            s = tick.samples.get(m)
            out.append(self.health.observe(
                m, None if s is None else s.arrays, age_s=0.0 if s is None else -s.skew_s,
                lead_s=float(inputs.lead_s[i]), message_id=None if s is None else (s.src, s.seq),
                received=int(inputs.received[i]), lost=int(inputs.lost[i])))
        return out
