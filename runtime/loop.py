"""The clock loop around the pure tick: messages in, ticks when due, results to the outputs.

``Loop.run(source, stop)`` reads decoded messages from ``source`` (``runtime.ingest.Ingest``:
``get(timeout_s)`` and ``drain()``), buffers them for sync, and runs a tick when one is due:

* clock ``wall`` (default): ticks on the wall-clock grid of ``sync.rate_hz`` (optionally locked to
  the capture phase of the first frame-based sensor); when a tick falls behind, only the latest
  due tick runs (latest wins) and the skipped ones are counted as ``awc_ticks_total{outcome="dropped"}``;
* clock ``data``: ticks follow the capture times of the messages (replay as fast as possible):
  after each message, the tick that the data clock makes due runs (``data_now_ns``: the
  second-newest capture time over the modalities, so one sensor whose clock runs ahead cannot
  drag the ticks); falling behind shows up as ingest drops (``queue_full``), still counted.

Input health is judged per source, a source being the key that sent a message and its ``src``
(``Message.source``): a modality's received and lost counts, how far its capture times run ahead
and its clock faults are those of the source whose sample the tick uses (of every source when the
modality is absent, so a sensor whose clock is wrong still shows ``clock``). Another key, or
another ``src``, cannot make a healthy sensor look degraded.

``Loop.tick(tick_ns)`` is one tick: sync -> ``Pipeline.step`` -> latency -> ``Outputs.emit``. A
tick that fails on its data, whatever arrived (``TICK_DATA_ERRORS``: the model refuses its inputs,
the preprocessing cannot read them, arithmetic overflows), is logged with its traceback and
counted in ``awc_tick_errors_total{stage}``; the loop goes on. Any other exception is a bug: it
ends the loop and the process exits non-zero, so systemd restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.config import RuntimeConfig
from runtime.inference import ModelError
from runtime.outputs import Outputs
from runtime.pipeline import Pipeline, StepInputs, TickResult
from runtime.sync import Due, Synchronizer, TickClock
from sensors.core import schema
from sensors.core.wire import Message

log = logging.getLogger(__name__)

MAX_EXERCISE_FIELDS = 4096   # exercise/session header fields kept between two ticks (the rest are ignored)
MAX_SOURCES = 64             # sources followed per modality (the least recently heard forgotten first)
PHASE_TOPICS = schema.FRAME_MODALITIES   # frame-based sensors whose capture phase the wall clock follows
# What data can make one tick fail (counted, the loop goes on); anything else ends the process.
TICK_DATA_ERRORS = (ModelError, ValueError, ArithmeticError, FloatingPointError)


@dataclass
class RunStats:
    ticks: int = 0
    dropped: int = 0
    errors: int = 0
    messages: int = 0


def tick_clock(cfg: RuntimeConfig) -> TickClock:
    """Wall clock: ``sync.delay_s`` after the tick; data clock: at least the tolerance after it,
    so the sample nearest the tick (possibly just after it) has been seen."""
    s = cfg.sync
    delay = s.delay_s if s.clock == "wall" else max(s.delay_s, s.tolerance_s)
    return TickClock(s.rate_hz, s.clock, delay_s=delay)


class Loop:
    """Buffers messages, decides which tick is due, runs it and hands the result to the outputs."""

    def __init__(self, config: RuntimeConfig, pipeline: Pipeline, outputs: Outputs | None = None,
                 stats: RunStats | None = None):
        self.config = config
        self.pipeline = pipeline
        self.outputs = outputs or Outputs()
        self.sync = Synchronizer(config.sync)
        self.stats = stats or RunStats()
        self.last_tick_wall: float | None = None   # monotonic time of the last tick
        self.last_pose_wall: float | None = None   # monotonic time of the last tick with a pose (readiness)
        self.running = False                       # inside run()
        self.on_iteration: Callable[[], object] | None = None   # after every loop iteration (systemd watchdog)
        # per modality: source (key, src) -> [received, lost since the last tick, capture time of its latest]
        self._sources: list[OrderedDict[tuple[str, str], list[int]]] = [OrderedDict() for _ in schema.MODALITIES]
        self._newest_ns: dict[str, int] = {}   # capture time of the latest message, per modality (data clock)
        self._exercise: list[tuple[int, str, str | None]] = []   # exercise/session header fields since the last tick
        self._trigger_sent_ns: int | None = None   # data clock: send time of the message that made the tick due
        self._phase_locked = False
        self._clock_faults = lambda: {}   # set by run(): the ingest's recent clock faults, per topic and source

    # ------------------------------------------------------------------ inputs
    def feed(self, msg: Message) -> None:
        """One decoded message (any topic): buffered for sync and counted for input health."""
        self.stats.messages += 1
        self.sync.add(msg, time.time_ns() if self.config.sync.clock == "wall" else self.data_now_ns())
        exercise, session = msg.extra.get("exercise"), msg.extra.get("session")
        if (isinstance(exercise, str) or isinstance(session, str)) and len(self._exercise) < MAX_EXERCISE_FIELDS:
            self._exercise.append((msg.t_ns, exercise if isinstance(exercise, str) else "",
                                   session if isinstance(session, str) else None))
        i = schema.MODALITY_INDEX.get(msg.topic)
        if i is None:
            return
        # Capture time of the latest arrival (not the maximum ever seen: a sensor whose clock jumped
        # ahead and came back is judged on what it sends now).
        state = self._sources[i].pop(msg.source, None) or [0, 0, 0]
        state[0] += 1
        state[1] += msg.lost
        state[2] = msg.t_ns
        self._sources[i][msg.source] = state   # most recently heard last
        if len(self._sources[i]) > MAX_SOURCES:
            self._sources[i].popitem(last=False)
        self._newest_ns[msg.topic] = msg.t_ns

    def data_now_ns(self) -> int | None:
        """The data clock's "now": the second-newest capture time over the modalities (the newest
        when only one streams), so one sensor with a clock running ahead cannot drag the ticks."""
        times = sorted(self._newest_ns.values())
        if not times:
            return None
        return times[-2] if len(times) >= 2 else times[-1]

    # ------------------------------------------------------------------ one tick
    def tick(self, tick_ns: int) -> TickResult:
        """Sync, step and emit the tick at ``tick_ns`` (ns since the epoch)."""
        t0 = time.perf_counter()
        synced = self.sync.tick(tick_ns)
        sync_s = time.perf_counter() - t0
        now = time.time_ns() if self.config.sync.clock == "wall" else self.data_now_ns()
        received, lost, lead = self._judge(synced, now)
        inputs = StepInputs(synced, received, lost, lead, self._exercise)
        self._exercise = []
        result = self.pipeline.step(inputs)
        result.durations = {"sync": sync_s, **result.durations}
        if result.pose is not None:
            result.latency_ns = self._latency_ns(result)
        self.outputs.emit(result)
        self.last_tick_wall = time.monotonic()
        if result.pose is not None:
            self.last_pose_wall = self.last_tick_wall
        self.stats.ticks += 1
        return result

    def _judge(self, synced, now: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per modality: messages received and lost since the last tick, and how far capture times
        run ahead of ``now`` (s), of the source whose sample the tick uses (of every source when
        the modality is absent); then the counts start again."""
        received, lost = np.zeros(schema.N_MODALITIES, np.int64), np.zeros(schema.N_MODALITIES, np.int64)
        lead = np.zeros(schema.N_MODALITIES)
        faults = self._clock_faults()
        for i, m in enumerate(schema.MODALITIES):
            sources, sample, fault = self._sources[i], synced.samples.get(m), faults.get(m, {})
            judged = [sample.source] if sample is not None else [*sources, *fault]
            for source in judged:
                state = sources.get(source)
                if state is not None:
                    received[i] += state[0]
                    lost[i] += state[1]
                    if now is not None:
                        lead[i] = max(lead[i], (state[2] - now) / 1e9)
                # Messages the ingest dropped for a clock fault (far ahead or behind) never reach
                # sync: their offset, either way, is what the input health's `clock` must see.
                if source in fault:
                    lead[i] = max(lead[i], abs(fault[source]))
            for state in sources.values():
                state[0] = state[1] = 0
        return received, lost, lead

    def _latency_ns(self, result: TickResult) -> int:
        if self.config.sync.clock == "data" and self._trigger_sent_ns is not None:
            # Capture times of a replay are not wall-clock times: count from the send time of the
            # message that made this tick due (transport + queueing + processing).
            return max(0, time.time_ns() - self._trigger_sent_ns)
        newest = int(result.input_t_ns.max())
        return max(0, time.time_ns() - newest) if newest else 0

    # ------------------------------------------------------------------ the loop
    def run(self, source, stop: threading.Event, duration_s: float | None = None) -> RunStats:
        """Tick until ``stop`` is set (or ``duration_s`` passed)."""
        clock = tick_clock(self.config)
        self._clock_faults = getattr(source, "recent_clock_faults", lambda: {})
        deadline = None if duration_s is None else time.monotonic() + duration_s
        run_once = self._wall_once if self.config.sync.clock == "wall" else self._data_once
        idle = [time.monotonic()]
        self.outputs.running(True)
        self.running = True
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                run_once(source, clock, idle)
                if self.on_iteration is not None:
                    self.on_iteration()
        finally:
            self.running = False
            self.outputs.running(False)
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
            if m.topic in schema.MODALITY_INDEX:
                self._trigger_sent_ns = m.sent_ns
                self._run_due(clock.due(self.data_now_ns()))

    def _run_due(self, due: Due | None) -> None:
        if due is None:
            return
        if due.skipped:
            self.outputs.dropped(due.skipped)
            self.stats.dropped += due.skipped
        try:
            self.tick(due.tick_ns)
        except TICK_DATA_ERRORS as err:
            self.stats.errors += 1
            self.outputs.failed("inference" if isinstance(err, ModelError) else "preprocess")
            log.error("tick at %d ns failed, skipped: %r", due.tick_ns, err, exc_info=not isinstance(err, ModelError))

    def close(self) -> None:
        """Flush and close the outputs."""
        self.outputs.close()
