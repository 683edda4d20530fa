"""Tick synchronisation of the sensor streams (docs/wire.md, "Timing and synchronisation"). Pure:
no sockets, no clocks read.

Every time is passed in, in ns since the Unix epoch. At each tick, per modality:

1. the sample whose capture time is nearest the tick, within ``tolerance_s`` (either side);
2. else the newest sample captured at or before the tick and no older than ``max_age_s``;
3. else absent (the pipeline zero-fills it and sets presence 0).

WiFi is a stream of CSI packets: the tick takes every packet captured in
(tick − ``wifi_window_s``, tick], oldest first, concatenated to [P, 3, 114] (runtime.features resamples
them to the model's 10 with ``sensors.core.preprocess.resample_packets``); when that window is empty
(a burst of packets straddling the tick has not arrived yet), the window ending at the newest
packet no older than the maximum age is used instead, as for the other modalities. Ground truth
(``gt``) is the nearest sample within the tolerance. Buffers are bounded ring buffers sorted by
capture time, so out-of-order and late messages are placed where they belong and memory never grows.

Clock sanity: ``add`` takes the runtime's "now" (wall clock, or the data clock of a replay). When a
ring is full, the end farther from now is evicted: normally the oldest sample, but a flood of
samples stamped far in the future (or far in the past) evicts itself, never the good samples
around now.

``TickClock`` decides which tick is due, from the wall clock or from the data clock (replay as fast
as possible; ``runtime.loop`` drives it); when the caller falls behind only the latest due tick
runs and the skipped ones are returned so they can be counted.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from sensors.core import schema
from sensors.core.wire import Message

SYNC_TOPICS: tuple[str, ...] = (*schema.MODALITIES, schema.GT_TOPIC)


CLOCK_MODES = ("wall", "data")


@dataclass(frozen=True)
class SyncConfig:
    """The ``sync`` section of the runtime config: how samples are matched to ticks (rate,
    tolerance, maximum age, WiFi window, buffer) and the clock that drives the ticks
    (docs/runtime.md)."""

    rate_hz: float = 10.0
    tolerance_s: float = 0.05          # nearest sample to the tick within this (either side)
    max_age_s: dict | float = 0.3      # else the newest within this age; a dict gives it per modality
    wifi_window_s: float = 0.1         # WiFi: the packets of the last 100 ms
    buffer_len: int = 64               # per-modality ring buffer, in messages
    clock: str = "wall"        # wall: real time; data: ticks follow capture times (fast replay)
    delay_s: float = 0.01      # a tick runs this long after its time (late messages); data clock: >= tolerance
    phase_lock: bool = True    # wall clock: tick grid on the capture phase of the first camera/LiDAR/radar message
    data_flush_s: float = 0.5  # data clock: with no message for this long, run the last due tick

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not (math.isfinite(self.rate_hz) and 0 < self.rate_hz <= 1000):
            raise ValueError(f"sync.rate_hz must be in (0, 1000], got {self.rate_hz}")
        if not self.tolerance_s >= 0:
            raise ValueError(f"sync.tolerance_s must be >= 0 s, got {self.tolerance_s}")
        if isinstance(self.max_age_s, dict):
            unknown = set(self.max_age_s) - set(schema.MODALITIES)
            if unknown:
                raise ValueError(f"sync.max_age_s keys must be modalities {schema.MODALITIES}, got {sorted(unknown)}")
            ages = list(self.max_age_s.values())
        else:
            ages = [self.max_age_s]
        if not all(isinstance(a, int | float) and a >= 0 for a in ages):
            raise ValueError(f"sync.max_age_s must be >= 0 s (a number or a dict per modality), got {self.max_age_s}")
        if not self.tolerance_s < self.largest_max_age_s:
            raise ValueError(f"sync needs tolerance_s < max_age_s, got {self.tolerance_s}, {self.max_age_s}")
        if not self.wifi_window_s > 0:
            raise ValueError(f"sync.wifi_window_s must be > 0 s, got {self.wifi_window_s}")
        if not (isinstance(self.buffer_len, int) and self.buffer_len >= 2):
            raise ValueError(f"sync.buffer_len must be an integer >= 2, got {self.buffer_len}")
        if not 0 <= self.delay_s < 1 / self.rate_hz or self.data_flush_s <= 0:
            raise ValueError(f"sync.delay_s must be in [0, 1/rate_hz) and data_flush_s > 0, got {self.delay_s}, "
                             f"{self.data_flush_s}")
        if self.clock not in CLOCK_MODES:
            raise ValueError(f"sync.clock must be one of {CLOCK_MODES}, got {self.clock!r}")

    @property
    def largest_max_age_s(self) -> float:
        """The maximum age (s); of a per-modality dict, the largest (0.3 s for an empty dict)."""
        return max(self.max_age_s.values(), default=0.3) if isinstance(self.max_age_s, dict) else self.max_age_s

    @property
    def period_ns(self) -> int:
        return int(round(1e9 / self.rate_hz))

    def max_age_ns(self, modality: str) -> int:
        """Maximum age for ``modality`` (modalities missing from a dict use the 0.3 s default)."""
        age = self.max_age_s.get(modality, 0.3) if isinstance(self.max_age_s, dict) else self.max_age_s
        return int(round(age * 1e9))


@dataclass
class SyncedSample:
    arrays: dict[str, np.ndarray]
    t_ns: int           # capture time (WiFi: of the newest packet used)
    skew_s: float       # t_ns - tick_ns, seconds (negative = older than the tick)
    src: str
    seq: int
    key: str = ""       # the allow-listed key that sent it (runtime.ingest; "" on a plaintext socket)

    @property
    def source(self) -> tuple[str, str]:
        return self.key, self.src


@dataclass
class TickInputs:
    tick_ns: int
    index: int                                     # 0, 1, 2, ... per Synchronizer
    samples: dict[str, SyncedSample | None]        # every modality of schema.MODALITIES
    wifi_packets: int                              # CSI packets in the window (0 = absent)
    gt: np.ndarray | None = None                   # float32 [17, 3] metres, or None
    newest_ns: dict[str, int | None] = field(default_factory=dict)  # newest capture per modality (staleness)

    def presence(self) -> np.ndarray:
        """float32 [4] in schema.MODALITIES order: 1 = a sample was found for this tick."""
        return np.array([self.samples.get(m) is not None for m in schema.MODALITIES], dtype=np.float32)


class _Ring:
    """Messages of one topic sorted by capture time, at most ``maxlen`` (the oldest go first)."""

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self.times: list[int] = []
        self.msgs: list[Message] = []

    def add(self, msg: Message, now_ns: int | None = None) -> None:
        i = bisect.bisect_right(self.times, msg.t_ns)
        self.times.insert(i, msg.t_ns)
        self.msgs.insert(i, msg)
        if len(self.times) > self.maxlen:
            # Evict the end farther from now: the oldest, unless the newest lies further ahead.
            newest_first = now_ns is not None and self.times[-1] - now_ns > now_ns - self.times[0]
            j = -1 if newest_first else 0
            del self.times[j], self.msgs[j]

    def __len__(self) -> int:
        return len(self.times)

    def newest(self) -> int | None:
        return self.times[-1] if self.times else None


class Synchronizer:
    """Buffers decoded messages and assembles the inputs of each tick."""

    def __init__(self, cfg: SyncConfig | None = None):
        self.cfg = cfg or SyncConfig()
        self._rings = {t: _Ring(self.cfg.buffer_len) for t in SYNC_TOPICS}
        self._ticks = 0

    def add(self, msg: Message, now_ns: int | None = None) -> None:
        """Buffer one message (any arrival order). Topics other than the inputs and gt are ignored.
        ``now_ns``: the runtime's clock, so that a full buffer evicts samples far from it first."""
        ring = self._rings.get(msg.topic)
        if ring is not None:
            ring.add(msg, now_ns)

    def buffered(self, topic: str) -> int:
        return len(self._rings[topic])

    def newest_t_ns(self) -> int | None:
        """Newest capture time over the input modalities, or None."""
        times = [self._rings[m].newest() for m in schema.MODALITIES]
        times = [t for t in times if t is not None]
        return max(times) if times else None

    def tick(self, tick_ns: int) -> TickInputs:
        tick_ns = int(tick_ns)
        samples: dict[str, SyncedSample | None] = {}
        packets = 0
        for m, spec in schema.MODALITY_SPECS.items():
            if spec.kind == schema.CSI:
                samples[m], packets = self._packets(spec, tick_ns)
            else:
                samples[m] = self._pick(m, tick_ns, self.cfg.max_age_ns(m))
        gt = self._pick(schema.GT_TOPIC, tick_ns, max_age_ns=None)
        out = TickInputs(tick_ns=tick_ns, index=self._ticks, samples=samples, wifi_packets=packets,
                         gt=None if gt is None else np.asarray(gt.arrays["joints"], dtype=np.float32),
                         newest_ns={m: self._newest_at(m, tick_ns) for m in schema.MODALITIES})
        self._ticks += 1
        return out

    def _newest_at(self, topic: str, tick_ns: int) -> int | None:
        times = self._rings[topic].times
        i = bisect.bisect_right(times, tick_ns)
        return times[i - 1] if i else None

    def _pick(self, topic: str, tick_ns: int, max_age_ns: int | None) -> SyncedSample | None:
        ring = self._rings[topic]
        if not ring.times:
            return None
        tol = int(round(self.cfg.tolerance_s * 1e9))
        i = bisect.bisect_left(ring.times, tick_ns)
        near = [j for j in (i - 1, i) if 0 <= j < len(ring.times)]
        best = min(near, key=lambda j: (abs(ring.times[j] - tick_ns), ring.times[j] > tick_ns))
        if abs(ring.times[best] - tick_ns) <= tol:
            return self._sample(ring.msgs[best], tick_ns)
        if max_age_ns is None:
            return None
        k = bisect.bisect_right(ring.times, tick_ns) - 1
        if k >= 0 and tick_ns - ring.times[k] <= max_age_ns:
            return self._sample(ring.msgs[k], tick_ns)
        return None

    @staticmethod
    def _sample(msg: Message, tick_ns: int) -> SyncedSample:
        return SyncedSample(arrays=msg.arrays, t_ns=msg.t_ns, skew_s=(msg.t_ns - tick_ns) / 1e9,
                            src=msg.src, seq=msg.seq, key=msg.key)

    def _packets(self, spec: schema.ModalitySpec, tick_ns: int) -> tuple[SyncedSample | None, int]:
        """CSI: packets with capture time in (tick - window, tick], oldest first -> each array of the
        modality (amp, phase) [P, 3, 114]."""
        ring = self._rings[spec.name]
        window = int(round(self.cfg.wifi_window_s * 1e9))
        packet_times = [msg.packet_times_ns() for msg in ring.msgs]
        hi = tick_ns
        if not any(((t > tick_ns - window) & (t <= tick_ns)).any() for t in packet_times):
            # Nothing in the window: the newest packets no older than the maximum age, if any.
            older = [int(t[t <= tick_ns].max()) for t in packet_times if (t <= tick_ns).any()]
            if not older or tick_ns - max(older) > self.cfg.max_age_ns(spec.name):
                return None, 0
            hi = max(older)
        lo = hi - window
        names = [a.name for a in spec.wire]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        times, newest = [], None
        for msg, t in zip(ring.msgs, packet_times):
            keep = (t > lo) & (t <= hi)
            if keep.any():
                for n in names:
                    parts[n].append(msg.arrays[n][keep])
                times.append(t[keep])
                newest = msg if newest is None or msg.t_ns >= newest.t_ns else newest
        if not times:
            return None, 0
        order = np.argsort(np.concatenate(times), kind="stable")
        arrays = {n: np.concatenate(parts[n])[order] for n in names}
        t_last = int(np.concatenate(times).max())
        sample = SyncedSample(arrays=arrays, t_ns=t_last, skew_s=(t_last - tick_ns) / 1e9, src=newest.src,
                              seq=newest.seq, key=newest.key)
        return sample, int(len(order))


@dataclass(frozen=True)
class Due:
    tick_ns: int   # the tick to run now (the latest due one)
    skipped: int   # due ticks before it that will never run (latest wins)


class TickClock:
    """Which tick is due. Ticks lie on the grid ``origin_ns + k * period`` (default: multiples of
    the period since the Unix epoch, so 10 Hz ticks land on whole 100 ms).

    mode "wall": ``now_ns`` is the wall clock; mode "data": it is the data clock of a replay as fast
    as possible, ``runtime.loop.Loop.data_now_ns`` (the second-newest latest capture time over the
    modalities, so one sensor whose clock runs ahead cannot drag the ticks). A tick T is due once
    ``now_ns - delay_s >= T``; ``delay_s`` gives late messages time to arrive (data mode: make it at
    least the sync tolerance so the samples after T that are nearest T have been seen).
    """

    def __init__(self, rate_hz: float = 10.0, mode: str = "wall", *, delay_s: float = 0.0, origin_ns: int = 0):
        if mode not in ("wall", "data"):
            raise ValueError(f"tick clock mode must be 'wall' or 'data', got {mode!r}")
        if not (math.isfinite(rate_hz) and rate_hz > 0) or not delay_s >= 0:
            raise ValueError(f"tick clock needs rate_hz > 0 and delay_s >= 0, got {rate_hz}, {delay_s}")
        self.mode = mode
        self.period_ns = int(round(1e9 / rate_hz))
        self.delay_ns = int(round(delay_s * 1e9))
        self.origin_ns = int(origin_ns)
        self.last_k: int | None = None
        self.skipped_total = 0

    def due(self, now_ns: int | None) -> Due | None:
        """The latest tick due at ``now_ns`` that has not run yet, or None (nothing new is due).

        The first call starts the clock at the latest due tick (nothing counts as skipped before).
        """
        if now_ns is None:
            return None
        k = (int(now_ns) - self.delay_ns - self.origin_ns) // self.period_ns
        if self.last_k is not None and k <= self.last_k:
            return None
        skipped = 0 if self.last_k is None else k - self.last_k - 1
        self.last_k = k
        self.skipped_total += skipped
        return Due(tick_ns=self.origin_ns + k * self.period_ns, skipped=skipped)

    def next_due_ns(self, now_ns: int) -> int:
        """The ``now_ns`` value at which the next tick becomes due (for sleeping in wall mode)."""
        k = (int(now_ns) - self.delay_ns - self.origin_ns) // self.period_ns
        if self.last_k is not None:
            k = max(k, self.last_k)
        return self.origin_ns + (k + 1) * self.period_ns + self.delay_ns
