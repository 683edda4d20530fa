"""The tick loop: ingest -> sync -> features -> ONE inference (pose + 16 coalitions) ->
contributions -> degradation -> outputs (metrics, pose PUB, recorder, console).

``Pipeline.step(tick_ns)`` is one tick and does no I/O besides calling the outputs;
``Pipeline.run(source, stop)`` is the loop around it:

* clock ``wall`` (default): ticks on the wall-clock grid of ``sync.rate_hz``; when inference falls
  behind, only the latest due tick runs (latest wins) and the skipped ones are counted as
  ``awc_ticks_total{outcome="dropped"}``;
* clock ``data``: ticks follow the capture times of the messages (replay as fast as possible): after
  each message, the tick that the data clock makes due runs (``data_now_ns``: the second-newest
  capture time over the modalities, so one sensor whose clock runs ahead cannot drag the ticks);
  falling behind shows up as ingest drops (``queue_full``), still counted.

Whatever modalities are present are served (absent ones zero-filled, presence 0); a tick with no
modality at all is counted ``empty`` and publishes nothing. A tick whose inputs the model refuses
(``ModelError``) or the preprocessing cannot read (``ValueError``) is logged and counted in
``awc_tick_errors_total{stage}``; the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from exporters.metrics import RuntimeMetrics
from exporters.pose_publisher import pose_message
from runtime.config import RuntimeConfig
from runtime.contributions import Contributions, ContributionTracker
from runtime.degradation import DegradationMonitor, DegradationResult, leave_one_out_disagreement
from runtime.features import FeatureBuilder
from runtime.health import InputHealth, InputHealthChecker
from runtime.model import ModelError
from runtime.sync import SyncConfig, Synchronizer, TickClock, TickInputs
from sensors import schema

log = logging.getLogger(__name__)

Output = Callable[["TickResult"], None]
MAX_SOURCES = 1024   # (topic, src) pairs tracked for sequence gaps
PHASE_TOPICS = ("rgb", "lidar", "mmwave")   # frame-based sensors whose capture phase the wall clock follows


@dataclass
class TickResult:
    """Everything one tick produced. Arrays in MODALITIES order; poses in metres."""

    tick: int
    tick_ns: int
    outcome: str                          # fused | partial | empty
    presence: np.ndarray                  # float32 [4]
    health: list[InputHealth]             # per modality
    degradation: DegradationResult
    pose: np.ndarray | None = None        # float32 [17, 3]
    coalition_poses: np.ndarray | None = None   # float32 [16, 17, 3]
    contributions: Contributions | None = None
    gt: np.ndarray | None = None          # float32 [17, 3] when the replay sent ground truth
    input_t_ns: np.ndarray = field(default_factory=lambda: np.zeros(schema.N_MODALITIES, np.int64))
    latency_ns: int = 0                   # newest used capture time -> outputs called
    durations: dict[str, float] = field(default_factory=dict)   # stage -> seconds
    inputs: dict[str, np.ndarray] | None = None                 # model inputs (batch 1)


@dataclass
class RunStats:
    ticks: int = 0
    dropped: int = 0
    errors: int = 0
    messages: int = 0


def sync_config(cfg: RuntimeConfig) -> SyncConfig:
    s = cfg.sync
    return SyncConfig(rate_hz=s.rate_hz, tolerance_s=s.tolerance_s, max_age_s=s.max_age_s,
                      wifi_window_s=s.wifi_window_s, buffer_len=s.buffer_len)


def tick_clock(cfg: RuntimeConfig) -> TickClock:
    """Wall clock: ``sync.delay_s`` after the tick; data clock: at least the tolerance after it,
    so the sample nearest the tick (possibly just after it) has been seen."""
    s = cfg.sync
    delay = s.delay_s if s.clock == "wall" else max(s.delay_s, s.tolerance_s)
    return TickClock(s.rate_hz, s.clock, delay_s=delay)


class Pipeline:
    """One station's pipeline around a loaded ``PoseModel``."""

    def __init__(self, config: RuntimeConfig, model, metrics: RuntimeMetrics | None = None,
                 outputs: list[Output] | None = None):
        self.config = config
        self.model = model
        self.metrics = metrics or RuntimeMetrics()
        self.outputs: list[Output] = list(outputs or [])
        self.sync = Synchronizer(sync_config(config))
        self.features = FeatureBuilder.from_metadata(model.metadata)
        self.health = InputHealthChecker(config.health)
        self.contributions = ContributionTracker(config.contributions)
        self.degradation = DegradationMonitor(config.degradation)
        baseline = model.metadata.baseline
        self.baseline_shares = None if baseline is None else baseline.shares
        self.record_inputs = config.recorder.record_inputs
        self._last_seq: OrderedDict[tuple[str, str], int] = OrderedDict()   # bounded, like the ingest's
        self._received = dict.fromkeys(schema.MODALITIES, 0)
        self._lost = dict.fromkeys(schema.MODALITIES, 0)
        self._newest_ns: dict[str, int] = {}   # capture time of the latest message, per modality
        self._ewma: dict[str, np.ndarray] = {}
        self.last_tick_wall: float | None = None
        self._trigger_sent_ns: int | None = None   # data clock: send time of the message that made the tick due
        self._phase_locked = False
        self.source_running: Callable[[], bool] = lambda: False
        self.stats = RunStats()
        self._init_metrics()

    # ------------------------------------------------------------------ inputs
    def feed(self, msg) -> None:
        """One decoded wire message (any topic): buffered for sync; sequence gaps per source are
        counted for the input health of its modality."""
        self.stats.messages += 1
        self.sync.add(msg)
        if msg.topic not in self._received:
            return
        key = (msg.topic, msg.src)
        last = self._last_seq.get(key)
        if last is not None and msg.seq > last + 1:
            self._lost[msg.topic] += msg.seq - last - 1
        self._last_seq.pop(key, None)
        self._last_seq[key] = msg.seq   # a jump back is a sensor restart: follow it, count nothing
        if len(self._last_seq) > MAX_SOURCES:
            self._last_seq.popitem(last=False)
        self._received[msg.topic] += 1
        # Capture time of the latest arrival (not the maximum ever seen: a sensor whose clock jumped
        # ahead and came back is judged on what it sends now).
        self._newest_ns[msg.topic] = msg.t_ns

    def data_now_ns(self) -> int | None:
        """The data clock's "now": the second-newest capture time over the modalities (the newest
        when only one streams), so one sensor with a clock running ahead cannot drag the ticks."""
        times = sorted(self._newest_ns.values())
        if not times:
            return None
        return times[-2] if len(times) >= 2 else times[-1]

    # ------------------------------------------------------------------ one tick
    def step(self, tick_ns: int) -> TickResult:
        """Run the tick at ``tick_ns`` (ns since the epoch) and call the outputs."""
        durations: dict[str, float] = {}
        t0 = time.perf_counter()
        tick = self.sync.tick(tick_ns)
        t1 = time.perf_counter()
        durations["sync"] = t1 - t0
        feats = self.features.build(tick)
        health = self._observe_health(tick)
        t2 = time.perf_counter()
        durations["preprocess"] = t2 - t1
        presence = feats.presence
        n_present = int(presence.sum())
        outcome = "empty" if n_present == 0 else ("fused" if n_present == schema.N_MODALITIES else "partial")
        result = TickResult(tick=tick.index, tick_ns=int(tick_ns), outcome=outcome, presence=presence,
                            health=health, degradation=None, gt=tick.gt, input_t_ns=_input_times(tick),
                            inputs=feats.inputs if self.record_inputs else None, durations=durations)
        loo = np.zeros(schema.N_MODALITIES)
        shares = None
        if n_present:
            pose, coalitions = self.model.run(feats.inputs)
            t3 = time.perf_counter()
            durations["inference"] = t3 - t2
            result.pose, result.coalition_poses = pose[0], coalitions[0]
            result.contributions = self.contributions.update(coalitions[0], presence, tick.gt)
            t4 = time.perf_counter()
            durations["contributions"] = t4 - t3
            loo = leave_one_out_disagreement(coalitions[0], presence)
            if result.contributions.ticks >= self.config.contributions.window_ticks:
                shares = result.contributions.smoothed_shares
            t2 = t4
        result.degradation = self.degradation.update([h.score for h in health], loo, shares,
                                                     self.baseline_shares, presence, [h.worst() for h in health])
        for m in result.degradation.became_degraded:
            i = schema.MODALITY_INDEX[m]
            log.warning("modality %s degraded at tick %d (score %.2f, input %s)", m, tick.index,
                        result.degradation.score[i], health[i].worst())
        for m in result.degradation.recovered:
            log.info("modality %s recovered at tick %d", m, tick.index)
        t5 = time.perf_counter()
        durations["degradation"] = t5 - t2
        self._emit(result)
        t6 = time.perf_counter()
        durations["publish"] = t6 - t5
        self._update_metrics(result, tick)
        durations["metrics"] = time.perf_counter() - t6   # not a histogram stage: measured for the bench
        self.last_tick_wall = time.monotonic()
        self.stats.ticks += 1
        return result

    def _observe_health(self, tick: TickInputs) -> list[InputHealth]:
        out = []
        now = time.time_ns() if self.config.sync.clock == "wall" else self.data_now_ns()
        for m in schema.MODALITIES:
            s = tick.samples.get(m)
            newest = self._newest_ns.get(m)
            lead_s = 0.0 if newest is None or now is None else (newest - now) / 1e9
            out.append(self.health.observe(
                m, None if s is None else s.arrays, age_s=0.0 if s is None else -s.skew_s, lead_s=lead_s,
                message_id=None if s is None else (s.src, s.seq),
                received=self._received[m], lost=self._lost[m]))
            self._received[m] = self._lost[m] = 0
        return out

    def _emit(self, result: TickResult) -> None:
        if result.pose is None:
            return
        if self.config.sync.clock == "data" and self._trigger_sent_ns is not None:
            # Capture times of a replay are not wall-clock times: count from the send time of the
            # message that made this tick due (transport + queueing + processing).
            result.latency_ns = max(0, time.time_ns() - self._trigger_sent_ns)
        else:
            newest = int(result.input_t_ns.max())
            result.latency_ns = max(0, time.time_ns() - newest) if newest else 0
        for output in self.outputs:
            output(result)

    # ------------------------------------------------------------------ metrics
    def _init_metrics(self) -> None:
        m = self.metrics
        m.tick_rate.set(self.config.sync.rate_hz)
        meta = self.model.metadata
        m.model_info.info({"schema_version": str(meta.schema_version), "fusion": meta.fusion,
                           "config_hash": meta.config_hash, "rgb_window": str(meta.rgb_window),
                           "lidar_cap": str(meta.lidar_cap), "mmwave_cap": str(meta.mmwave_cap)})
        m.provider_info.info({"requested": str(getattr(self.model, "requested_provider", "")),
                              "used": str(getattr(self.model, "provider", ""))})
        m.gpu_fallback.set(1.0 if getattr(self.model, "gpu_fallback", False) else 0.0)
        if self.baseline_shares is not None:
            for i, mod in enumerate(schema.MODALITIES):
                m.baseline_share.labels(modality=mod).set(float(self.baseline_shares[i]))

    def _smooth(self, key: str, value: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        a = self.config.contributions.ewma_alpha
        value = np.asarray(value, np.float64)
        prev = self._ewma.get(key)
        new = value if prev is None else (1 - a) * prev + a * value
        if mask is not None and prev is not None:
            new = np.where(mask, new, prev)
        self._ewma[key] = new
        return new

    def _update_metrics(self, result: TickResult, tick: TickInputs) -> None:
        m = self.metrics
        m.ticks.labels(outcome=result.outcome).inc()
        for stage, seconds in result.durations.items():
            m.stage_duration.labels(stage=stage).observe(seconds)
        if result.pose is not None:
            m.end_to_end_latency.observe(result.latency_ns / 1e9)
        presence = self._smooth("presence", result.presence)
        skews = np.array([0.0 if s is None else s.skew_s for s in (tick.samples[x] for x in schema.MODALITIES)])
        skew = self._smooth("skew", skews, mask=result.presence > 0)
        score = self._smooth("score", result.degradation.score)
        c = result.contributions
        for i, mod in enumerate(schema.MODALITIES):
            m.presence.labels(modality=mod).set(presence[i])
            m.sync_skew.labels(modality=mod).set(skew[i])
            newest = tick.newest_ns.get(mod)
            m.staleness.labels(modality=mod).set(float("nan") if newest is None else (tick.tick_ns - newest) / 1e9)
            m.degradation_score.labels(modality=mod).set(score[i])
            m.degraded.labels(modality=mod).set(1.0 if result.degradation.degraded[i] else 0.0)
            if c is not None:
                m.contribution_share.labels(modality=mod).set(c.smoothed_shares[i])
                m.shapley_value.labels(modality=mod).set(c.smoothed_shapley[i])
        for mod in result.degradation.became_degraded:
            m.degradation_events.labels(modality=mod).inc()

    # ------------------------------------------------------------------ readiness
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz: model loaded (we exist), ingest running, a recent tick."""
        if not self.source_running():
            return False, "ingest not running"
        if self.last_tick_wall is None:
            return False, "no tick has run yet"
        age = time.monotonic() - self.last_tick_wall
        if age > self.config.metrics.ready_max_tick_age_s:
            return False, f"last tick {age:.1f} s ago (> {self.config.metrics.ready_max_tick_age_s} s)"
        return True, "ready"

    # ------------------------------------------------------------------ the loop
    def run(self, source, stop: threading.Event, duration_s: float | None = None) -> RunStats:
        """Tick until ``stop`` is set (or ``duration_s`` passed). ``source``: an object with
        ``get(timeout_s) -> Message | None`` and ``drain() -> list[Message]`` (``runtime.ingest.Ingest``)."""
        clock = tick_clock(self.config)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        run_once = self._wall_once if self.config.sync.clock == "wall" else self._data_once
        idle = [time.monotonic()]
        self.metrics.ready.set(1.0)
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                run_once(source, clock, idle)
        finally:
            self.metrics.ready.set(0.0)
        return self.stats

    def _wall_once(self, source, clock: TickClock, idle: list[float]) -> None:
        now = time.time_ns()
        wait_s = max(0.0, (clock.next_due_ns(now) - now) / 1e9)
        msg = source.get(min(wait_s, 0.1))
        if msg is not None:
            for m in [msg, *source.drain()]:
                self.feed(m)
                # WiFi messages are CSI packets at any phase: lock to a frame-based sensor.
                if not self._phase_locked and m.topic in PHASE_TOPICS and self.config.sync.phase_lock:
                    # Ticks on the sensors' capture phase: a tick runs delay_s after its samples.
                    clock.origin_ns = m.t_ns % clock.period_ns
                    self._phase_locked = True
                    log.info("tick grid locked to the capture phase of %s (%.1f ms)", m.topic,
                             clock.origin_ns / 1e6)
        self._run_due(clock.due(time.time_ns()))

    def _data_once(self, source, clock: TickClock, idle: list[float]) -> None:
        msg = source.get(0.05)
        if msg is None:
            # Nothing new: after a pause, run the tick the newest data would make due next, so the
            # end of a replay is not left waiting for data that never comes.
            now = self.data_now_ns()
            if now is not None and time.monotonic() - idle[0] > self.config.sync.data_flush_s:
                self._run_due(clock.due(now + clock.delay_ns))
                idle[0] = time.monotonic()
            return
        idle[0] = time.monotonic()
        for m in [msg, *source.drain()]:
            self.feed(m)
            if m.topic in self._received:
                self._trigger_sent_ns = m.sent_ns
                self._run_due(clock.due(self.data_now_ns()))

    def _run_due(self, due) -> None:
        if due is None:
            return
        if due.skipped:
            self.metrics.ticks.labels(outcome="dropped").inc(due.skipped)
            self.stats.dropped += due.skipped
        try:
            self.step(due.tick_ns)
        except (ModelError, ValueError) as err:
            self.stats.errors += 1
            stage = "inference" if isinstance(err, ModelError) else "preprocess"
            self.metrics.tick_errors.labels(stage=stage).inc()
            log.error("tick at %d ns failed, skipped: %s", due.tick_ns, err)

    def close(self) -> None:
        """Flush and close every output that can be closed (recorder, publisher)."""
        self.metrics.ready.set(0.0)
        for output in self.outputs:
            close = getattr(output, "close", None)
            if close is not None:
                close()


def _input_times(tick: TickInputs) -> np.ndarray:
    return np.array([0 if tick.samples.get(m) is None else tick.samples[m].t_ns for m in schema.MODALITIES],
                    dtype=np.int64)


# ---------------------------------------------------------------------- outputs
def pose_extra(result: TickResult) -> dict:
    """Header extras of the pose message (see exporters.pose_publisher)."""
    c = result.contributions
    return {
        "shares": None if c is None else c.shares,
        "degraded": [int(x) for x in result.degradation.degraded],
        "reasons": list(result.degradation.reasons),
        "coalition_values": None if c is None else c.values,
        "shapley_gt": None if c is None or c.shapley_gt is None else c.shapley_gt,
        "shares_gt": None if c is None or c.shares_gt is None else c.shares_gt,
        "input_t_ns": [int(t) for t in result.input_t_ns],
        "outcome": result.outcome,
        "gt": None if result.gt is None else np.asarray(result.gt, np.float32).tolist(),
    }


def record_of(result: TickResult) -> dict:
    """Flat per-tick record for the recorders (arrays in MODALITIES order)."""
    c, d = result.contributions, result.degradation
    rec = {"tick": result.tick, "tick_ns": result.tick_ns, "outcome": result.outcome,
           "latency_ns": result.latency_ns, "presence": result.presence.astype(np.uint8),
           "joints": result.pose, "degradation": d.score.astype(np.float32),
           "degraded": d.degraded.astype(np.uint8), "reasons": list(d.reasons), "input_t_ns": result.input_t_ns}
    if c is not None:
        rec.update(shapley=c.shapley, shares=c.shares, coalition_values=c.values)
        if c.shapley_gt is not None:
            rec.update(shapley_gt=c.shapley_gt, shares_gt=c.shares_gt)
    if result.gt is not None:
        rec["gt"] = result.gt
    if result.inputs is not None:
        rec.update({f"input_{k}": v[0] for k, v in result.inputs.items()})
        rec["coalition_poses"] = result.coalition_poses
    return rec


class PublisherOutput:
    """Sends every tick as a wire ``pose`` message."""

    def __init__(self, publisher, station: str):
        self.publisher, self.station = publisher, station

    def __call__(self, result: TickResult) -> None:
        shapley = result.contributions.shapley if result.contributions is not None else np.zeros(4)
        msg = pose_message(self.station, result.tick, result.tick_ns, result.pose, result.presence, shapley,
                           result.degradation.score, result.latency_ns, pose_extra(result))
        self.publisher.publish(msg)

    def close(self) -> None:
        self.publisher.close()


class RecorderOutput:
    """Writes every tick to a JSONL/NPZ recorder (``exporters.recorder``)."""

    def __init__(self, recorder):
        self.recorder = recorder

    def __call__(self, result: TickResult) -> None:
        self.recorder.write(record_of(result))

    def close(self) -> None:
        self.recorder.close()
