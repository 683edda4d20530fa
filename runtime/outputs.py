"""What is done with each ``TickResult``: the outputs of the runtime, behind one small interface.

An output is any callable taking a ``TickResult``; it may have ``close()`` (called once on the way
out: flush files, close sockets) and ``every_tick = True`` (called for every tick; otherwise only
for ticks that produced a pose, i.e. not ``empty``). ``runtime.serve.build_outputs`` assembles them
from the config; ``Outputs`` calls them in order after each tick, then updates the Prometheus
metrics (``MetricsOutput``) with the stage durations including the outputs' own (``publish``).

Shipped outputs: ``PublisherOutput`` (wire ``pose`` stream), ``RecorderOutput`` (JSONL/NPZ),
``EventLog`` (a log line when a modality becomes degraded or recovers), ``runtime.console.ConsoleView``.
Adding one: write the callable here (or in its own module), append it in ``build_outputs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from exporters.metrics import EXERCISE_LABELS, UNKNOWN_EXERCISE, RuntimeMetrics
from runtime.config import RuntimeConfig
from runtime.pipeline import TickResult
from runtime.rehab import angles as ang
from sensors.core import schema
from sensors.core.pose_record import PoseRecord

log = logging.getLogger(__name__)

Output = Callable[[TickResult], None]


class Outputs:
    """The outputs of one runtime, called in order after every tick, then the metrics."""

    def __init__(self, outputs: list[Output] | None = None, metrics: MetricsOutput | None = None):
        self.items: list[Output] = list(outputs or [])
        self.metrics = metrics

    def emit(self, result: TickResult) -> None:
        t0 = time.perf_counter()
        for output in self.items:
            if result.pose is not None or getattr(output, "every_tick", False):
                output(result)
        t1 = time.perf_counter()
        result.durations["publish"] = t1 - t0
        if self.metrics is not None:
            self.metrics(result)
        result.durations["metrics"] = time.perf_counter() - t1   # not a histogram stage: for the bench

    def dropped(self, n: int) -> None:
        """``n`` due ticks skipped (latest wins)."""
        if self.metrics is not None:
            self.metrics.metrics.ticks.labels(outcome="dropped").inc(n)

    def failed(self, stage: str) -> None:
        """A tick failed in ``stage`` (inference or preprocess) and was skipped."""
        if self.metrics is not None:
            self.metrics.metrics.tick_errors.labels(stage=stage).inc()

    def running(self, flag: bool) -> None:
        if self.metrics is not None:
            self.metrics.metrics.ready.set(1.0 if flag else 0.0)

    def close(self) -> None:
        """Flush and close every output that can be closed (recorder, publisher)."""
        self.running(False)
        for output in self.items:
            close = getattr(output, "close", None)
            if close is not None:
                close()


class MetricsOutput:
    """Prometheus metrics from each tick: counters, stage histograms and EWMA-smoothed gauges."""

    every_tick = True

    def __init__(self, metrics: RuntimeMetrics, config: RuntimeConfig, model):
        self.metrics = metrics
        self.alpha = config.contributions.ewma_alpha
        self._ewma: dict[str, np.ndarray] = {}
        self._exercise: str | None = None
        m, meta = metrics, model.metadata
        m.tick_rate.set(config.sync.rate_hz)
        m.model_info.info({"schema_version": str(meta.schema_version), "fusion": meta.fusion,
                           "config_hash": meta.config_hash, "rgb_window": str(meta.rgb_window),
                           "lidar_cap": str(meta.lidar_cap), "mmwave_cap": str(meta.mmwave_cap)})
        m.provider_info.info({"requested": str(getattr(model, "requested_provider", "")),
                              "used": str(getattr(model, "provider", ""))})
        m.gpu_fallback.set(1.0 if getattr(model, "gpu_fallback", False) else 0.0)
        producer = meta.producer
        m.set_model_build(meta.config_hash, str(producer.get("training_data", "unknown")),
                          str(producer.get("exported_at", "")))
        if meta.baseline is not None:
            for i, mod in enumerate(schema.MODALITIES):
                m.baseline_share.labels(modality=mod).set(float(meta.baseline.shares[i]))

    @property
    def registry(self):
        return self.metrics.registry

    def _smooth(self, key: str, value: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        value = np.asarray(value, np.float64)
        prev = self._ewma.get(key)
        if prev is not None:   # a non-finite value never sticks in a gauge: keep the previous one
            value = np.where(np.isfinite(value), value, prev)
        elif not np.isfinite(value).all():
            value = np.where(np.isfinite(value), value, 0.0)
        new = value if prev is None else (1 - self.alpha) * prev + self.alpha * value
        if mask is not None and prev is not None:
            new = np.where(mask, new, prev)
        self._ewma[key] = new
        return new

    def __call__(self, result: TickResult) -> None:
        m = self.metrics
        m.ticks.labels(outcome=result.outcome).inc()
        for stage, seconds in result.durations.items():
            if stage != "metrics":
                m.stage_duration.labels(stage=stage).observe(seconds)
        if result.pose is not None:
            m.end_to_end_latency.observe(result.latency_ns / 1e9)
        presence = self._smooth("presence", result.presence)
        received = self._smooth("received", result.received)
        empty = self._smooth("empty", result.empty)
        skew = self._smooth("skew", result.skew_s, mask=result.presence > 0)
        score = self._smooth("score", result.degradation.score)
        c = result.contributions
        for i, mod in enumerate(schema.MODALITIES):
            m.presence.labels(modality=mod).set(presence[i])
            m.received.labels(modality=mod).set(received[i])
            m.empty.labels(modality=mod).set(empty[i])
            m.sync_skew.labels(modality=mod).set(skew[i])
            m.staleness.labels(modality=mod).set(result.staleness_s[i])
            m.degradation_score.labels(modality=mod).set(score[i])
            m.degraded.labels(modality=mod).set(1.0 if result.degradation.degraded[i] else 0.0)
            if c is not None:
                m.contribution_share.labels(modality=mod).set(c.smoothed_shares[i])
                m.shapley_value.labels(modality=mod).set(c.smoothed_shapley[i])
        for mod in result.degradation.became_degraded:
            m.degradation_events.labels(modality=mod).inc()
        if result.rehab is not None:
            self._rehab(result.rehab)

    def _rehab(self, r) -> None:
        """Angles as they are (already smoothed), repetitions and their trust (docs/rehab.md)."""
        m = self.metrics
        if r.angles is not None:
            for (angle, side), value in zip(schema.ANGLE_CHANNELS, r.angles):
                m.joint_angle.labels(angle=angle, side=side).set(float(value))
        for key in r.implausible:
            angle, side = ANGLE_LABELS[key]
            m.implausible_angles.labels(angle=angle, side=side).inc()
        for rep in r.counted:
            angle, side = rehab_labels(r.principal, rep.side)
            m.repetitions.labels(angle=angle, side=side).inc()
            m.last_rom.labels(angle=angle, side=side).set(rep.rom_deg)
        for rep in r.completed:
            if rep.get("low_confidence"):
                angle, side = rehab_labels(rep["channel"], rep["side"])
                m.low_confidence_repetitions.labels(angle=angle, side=side).inc()
        shown = r.exercise if r.exercise in EXERCISE_LABELS else UNKNOWN_EXERCISE   # a closed label set
        if shown != self._exercise:
            for code in EXERCISE_LABELS:
                m.exercise.labels(exercise=code).set(1.0 if code == shown else 0.0)
            self._exercise = shown
        m.exercise_repetitions.set(r.count)
        m.exercise_untrained.set(1.0 if r.exercise_trained is False else 0.0)
        for check in r.pose_checks:
            m.implausible_pose_ticks.labels(check=check).inc()


ANGLE_LABELS: dict[str, tuple[str, str]] = dict(zip(ang.CHANNEL_KEYS, schema.ANGLE_CHANNELS))  # key -> labels


def rehab_labels(channel: str | None, side: str) -> tuple[str, str]:
    """(angle, side) metric labels of a repetition counted on ``channel`` (``knee_flexion_left``,
    ``knee_flexion`` for both sides, ``trunk_lean_frontal``) and ``side``."""
    angle = channel or ""
    for s in schema.ANGLE_SIDES:
        if angle.endswith("_" + s):
            angle = angle[: -len(s) - 1]
    return angle, side


class EventLog:
    """A log line when a modality becomes degraded (warning) or recovers (info)."""

    every_tick = True

    def __call__(self, result: TickResult) -> None:
        d = result.degradation
        for m in d.became_degraded:
            i = schema.MODALITY_INDEX[m]
            log.warning("modality %s degraded at tick %d (score %.2f, input %s)", m, result.tick, d.score[i],
                        result.health[i].worst())
        for m in d.recovered:
            log.info("modality %s recovered at tick %d", m, result.tick)


def pose_record(result: TickResult, station: str = "") -> PoseRecord:
    """What a tick gives the outside world (``sensors.core.pose_record``): the pose stream and the
    recorder write this one record."""
    c, d, r = result.contributions, result.degradation, result.rehab
    return PoseRecord(
        tick=result.tick, tick_ns=result.tick_ns, joints=result.pose, presence=result.presence,
        degradation=d.score, degraded=d.degraded, outcome=result.outcome, latency_ns=result.latency_ns,
        station=station, reasons=list(d.reasons), input_t_ns=result.input_t_ns, gt=result.gt,
        shapley=None if c is None else c.shapley, shares=None if c is None else c.shares,
        coalition_values=None if c is None else c.values, shapley_gt=None if c is None else c.shapley_gt,
        shares_gt=None if c is None else c.shares_gt,
        rehab=None if r is None else r.header(), exercise=None if r is None else r.exercise,
        session=None if r is None else r.session, reps=None if r is None else r.count,
        angles=None if r is None else r.angles, exercise_trained=None if r is None else r.exercise_trained,
        points=result.points,
        inputs=None if result.inputs is None else {k: v[0] for k, v in result.inputs.items()},
        coalition_poses=result.coalition_poses if result.inputs is not None else None)


class PublisherOutput:
    """Sends every tick with a pose as a wire ``pose`` message."""

    def __init__(self, publisher, station: str):
        self.publisher, self.station = publisher, station

    @property
    def endpoint(self) -> str:
        return self.publisher.endpoint

    def __call__(self, result: TickResult) -> None:
        self.publisher.publish(pose_record(result, self.station))

    def close(self) -> None:
        self.publisher.close()


class RecorderOutput:
    """Writes every tick with a pose to a JSONL/NPZ recorder (``exporters.recorder``), with the
    station's name (a recording played back later says whose it is)."""

    def __init__(self, recorder, station: str = ""):
        self.recorder, self.station = recorder, station

    def __call__(self, result: TickResult) -> None:
        self.recorder.write(pose_record(result, self.station))

    def close(self) -> None:
        self.recorder.close()
