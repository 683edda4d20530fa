"""What every sensor adapter shares: the publishing loop onto wire v1 (docs/wire.md, docs/sensors.md).

* ``Outlet`` sends one modality through a ``SensorPublisher`` (an XPUB socket, CurveZMQ keys as
  ``sensors replay`` uses them): ``seq`` +1 per message; a message the adapter loses or refuses
  consumes its ``seq`` too (``lose``), so the runtime counts the gap as ``sequence_gap``; a
  message sent while no runtime is subscribed (it is away or restarting; ZeroMQ reconnects by
  itself) is counted ``no_runtime`` instead of vanishing.
* ``DeviceClock`` turns a live device's own timestamps into capture times on the station clock;
  ``Pacer`` replays a recording at its own timing (capture times from now on, ``--rate``).
* ``Stop``: SIGTERM and SIGINT end the loop cleanly (the socket flushes, the summary prints).
* ``run_adapter``: the CLI frame around an adapter's loop: one line per error, exit codes 0 (done
  or stopped), 1 (device, recording or runtime unusable), 2 (bad option), a JSON ``--report``.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from sensors.core import keys as keyfiles
from sensors.core import schema
from sensors.core.cli_util import add_client_key_arguments
from sensors.publisher import SensorPublisher

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

# Why an adapter did not deliver a message (the keys of OutletStats.drops).
DROP_REASONS: dict[str, str] = {
    "no_runtime": "no runtime subscribed when it was sent (runtime away or restarting)",
    "send_timeout": "the runtime did not take it within the send timeout (it fell behind)",
    "device_gap": "never reached the adapter: a gap in the device's own frame or packet counter",
    "torn": "a device frame cut short (bytes lost on the link); resynchronised on the next one",
    "corrupt": "bytes that do not parse as the device's format (skipped until the next valid start)",
    "unusable": "a valid record the model cannot use (e.g. CSI not 3 antennas x 114 subcarriers)",
    "read_error": "the device or file gave no frame (e.g. an undecodable video frame)",
}


def modality_carrying(kind: str, columns: tuple[str, ...] | None = None) -> str:
    """The one modality of the schema's table of this kind (and these point columns): an adapter
    names the stream it feeds by what it carries (``schema.MODALITY_SPECS``)."""
    names = [s.name for s in schema.MODALITY_SPECS.values()
             if s.kind == kind and (columns is None or tuple(s.columns) == tuple(columns))]
    if len(names) != 1:
        raise LookupError(f"expected one modality of kind {kind!r} with columns {columns}, the schema has {names}")
    return names[0]


class AdapterError(RuntimeError):
    """The device, the recording or the runtime cannot be used; the message says how to fix it."""


# ---------------------------------------------------------------------------------------------
# Stop on SIGTERM / SIGINT
# ---------------------------------------------------------------------------------------------
class Stop:
    """A stop flag that SIGTERM and SIGINT set (``install``); ``wait(s)`` sleeps unless stopped."""

    def __init__(self):
        self._event = threading.Event()
        self.signal: str | None = None
        self._previous: dict = {}

    def install(self) -> Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        self.signal = signal.Signals(signum).name
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stopped meanwhile."""
        return self._event.wait(max(0.0, seconds))


# ---------------------------------------------------------------------------------------------
# Clocks
# ---------------------------------------------------------------------------------------------
class DeviceClock:
    """A live device's timestamps (ns on its own clock) -> capture time, ns since the Unix epoch.

    ``epoch``: the device clock already is UTC (PTP- or NTP-disciplined); ``offset_s`` is added
    (e.g. -37 for a PTP grandmaster serving TAI). ``anchor``: the device counts from its own origin
    (boot, the WiFi card's TSF); the offset to the station clock is the smallest
    ``received - device`` over the last ``window`` samples (the least delayed sample is the best
    estimate of the offset). A jump of more than ``max_skew_s`` against the station clock (device
    reboot, counter wrap, a stepped clock) re-anchors and is counted in ``resets``."""

    def __init__(self, mode: str = "anchor", offset_s: float = 0.0, max_skew_s: float = 1.0, window: int = 200):
        if mode not in ("anchor", "epoch"):
            raise ValueError(f"clock mode must be 'anchor' or 'epoch', got {mode!r}")
        self.mode, self.offset_ns, self.max_skew_ns = mode, int(offset_s * 1e9), int(max_skew_s * 1e9)
        self._recent: collections.deque[int] = collections.deque(maxlen=window)
        self.resets = 0

    def capture_ns(self, device_ns: int, received_ns: int) -> int:
        if self.mode == "epoch":
            return int(device_ns) + self.offset_ns
        delta = int(received_ns) - int(device_ns)
        if self._recent and abs(delta - min(self._recent)) > self.max_skew_ns:
            self._recent.clear()
            self.resets += 1
            log.warning("device clock jumped by %.3f s against the station clock: re-anchored",
                        (delta - self._last) / 1e9)
        self._recent.append(delta)
        self._last = delta
        return int(device_ns) + min(self._recent) + self.offset_ns


class Pacer:
    """A recording played at its own timing: capture time = ``start_ns`` (default now) + the
    device time since the recording's first sample, sent when the wall clock reaches it (``rate``
    2 = twice as fast, 0 = as fast as possible). A device clock that goes back in the recording
    (the device restarted) continues ``gap_ns`` after the last sample (counted in ``resets``)."""

    def __init__(self, rate: float, stop: Stop, start_ns: int | None = None, gap_ns: int = schema.FRAME_PERIOD_NS):
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"--rate must be >= 0 (1 = real time, 0 = as fast as possible), got {rate}")
        self.rate, self.stop, self.gap_ns = rate, stop, gap_ns
        self.start_ns = start_ns
        self._base: int | None = None        # capture time = device time + _base
        self._last_device: int | None = None
        self._mono0: float | None = None
        self.resets = 0

    def capture_ns(self, device_ns: int) -> int:
        device_ns = int(device_ns)
        if self._base is None:
            start = time.time_ns() if self.start_ns is None else self.start_ns
            self._base = start - device_ns
            self.start_ns = start
        elif device_ns < self._last_device:
            self._base = self._last_device + self._base + self.gap_ns - device_ns
            self.resets += 1
        self._last_device = device_ns
        return device_ns + self._base

    def wait(self, capture_ns: int) -> bool:
        """Sleep until ``capture_ns`` is due; False if stopped meanwhile."""
        if self.rate <= 0:
            return not self.stop
        now = time.monotonic()
        if self._mono0 is None:
            self._mono0 = now + (self.start_ns - time.time_ns()) / 1e9
        due = self._mono0 + (capture_ns - self.start_ns) / 1e9 / self.rate
        return not self.stop.wait(due - now)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
@dataclass
class OutletStats:
    modality: str
    src: str
    sent: int = 0
    drops: dict[str, int] = field(default_factory=dict)    # reason (DROP_REASONS) -> messages
    events: dict[str, int] = field(default_factory=dict)   # informative counts (e.g. no_person)
    reconnects: int = 0
    clock_resets: int = 0
    latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))
    latency_count: int = 0
    wall_s: float = 0.0

    def drop(self, reason: str, n: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"drop reason must be one of {sorted(DROP_REASONS)}, got {reason!r}")
        if n > 0:
            self.drops[reason] = self.drops.get(reason, 0) + n

    def event(self, name: str, n: int = 1) -> None:
        self.events[name] = self.events.get(name, 0) + n

    def latency(self, seconds: float) -> None:
        self.latency_ms.append(seconds * 1e3)
        self.latency_count += 1

    def latency_summary(self) -> dict[str, float] | None:
        if not self.latency_ms:
            return None
        a = np.asarray(self.latency_ms)
        return {"frames": self.latency_count, "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
                "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max())}

    def line(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items())) or "none"
        text = f"{self.modality} src={self.src}: sent {self.sent}, dropped {sum(self.drops.values())} ({drops})"
        if self.events:
            text += ", " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items()))
        if self.reconnects or self.clock_resets:
            text += f", reconnects {self.reconnects}, clock resets {self.clock_resets}"
        lat = self.latency_summary()
        if lat:
            text += (f", detector latency mean {lat['mean_ms']:.1f} ms p50 {lat['p50_ms']:.1f} "
                     f"p95 {lat['p95_ms']:.1f} max {lat['max_ms']:.1f}")
        return text

    def to_dict(self) -> dict:
        return {"modality": self.modality, "src": self.src, "sent": self.sent, "drops": dict(self.drops),
                "dropped": sum(self.drops.values()), "events": dict(self.events), "reconnects": self.reconnects,
                "clock_resets": self.clock_resets, "detector_latency": self.latency_summary(),
                "wall_s": self.wall_s}


# ---------------------------------------------------------------------------------------------
# The outlet
# ---------------------------------------------------------------------------------------------
class _Publisher(SensorPublisher):
    def refresh(self) -> None:
        """Read the subscription events waiting (a runtime that left unsubscribes)."""
        self._read_subscriptions(0)


class Outlet:
    """One modality onto the wire. ``send`` publishes a sample, ``lose`` accounts messages that
    never left (their ``seq`` is consumed so the runtime counts the gap)."""

    def __init__(self, modality: str, pub: SensorPublisher, stats: OutletStats, *, extra: dict | None = None,
                 log_every_s: float = 10.0):
        if modality not in schema.MODALITIES:
            raise ValueError(f"modality must be one of {schema.MODALITIES}, got {modality!r}")
        self.modality, self.pub, self.stats = modality, pub, stats
        self.extra = dict(extra or {})
        self.log_every_s = log_every_s
        self._last_log = time.monotonic()
        self._runtime_seen = False

    def connected(self) -> bool:
        if isinstance(self.pub, _Publisher):
            self.pub.refresh()
        return self.pub.subscribed(self.modality)

    def wait_runtime(self, timeout_s: float) -> bool:
        return self.pub.wait_connected(timeout_s, topics=[self.modality])

    def send(self, t_ns: int, extra: dict | None = None, **arrays: np.ndarray) -> bool:
        """Publish one sample captured at ``t_ns``; False when it could not be delivered (counted)."""
        self._maybe_log()
        if not self.connected():
            if self._runtime_seen:
                log.warning("%s: the runtime went away; counting messages as no_runtime until it is back",
                            self.modality)
                self._runtime_seen = False
            self.lose(1, "no_runtime")
            return False
        if not self._runtime_seen:
            log.info("%s: runtime subscribed at %s", self.modality, self.pub.endpoint)
            self._runtime_seen = True
        before = self.pub.timeouts.get(self.modality, 0)
        self.pub.send(self.modality, t_ns, extra={**self.extra, **(extra or {})}, **arrays)
        if self.pub.timeouts.get(self.modality, 0) > before:
            self.stats.drop("send_timeout")
            return False
        self.stats.sent += 1
        return True

    def lose(self, n: int, reason: str) -> None:
        for _ in range(max(0, n)):
            self.pub.skip(self.modality)
        self.stats.drop(reason, n)

    def _maybe_log(self) -> None:
        if self.log_every_s > 0 and time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            log.info("%s", self.stats.line())


# ---------------------------------------------------------------------------------------------
# CLI frame
# ---------------------------------------------------------------------------------------------
def add_outlet_arguments(p, modality: str) -> None:
    """The options every adapter has: where to send, who it is, keys, timeouts, report."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--connect", default=None, metavar="ENDPOINT",
                       help=f"the runtime's sensor input to connect to (default {DEFAULT_ENDPOINT})")
    where.add_argument("--bind", default=None, metavar="ENDPOINT", help="bind instead (the runtime connects)")
    p.add_argument("--src", default=None, help=f"sensor id on the wire (default {modality}-HOSTNAME)")
    p.add_argument("--station", default=None, help="station (room) id in every header")
    p.add_argument("--exercise", default=None, help="exercise code for every message (e.g. A12; docs/rehab.md)")
    p.add_argument("--session", default=None, help="session id for every message (docs/rehab.md)")
    add_client_key_arguments(p, f"sensor-{modality}", "CurveZMQ: key directory (runtime keys init/add): "
                                                      "DIR/clients/NAME.key_secret and DIR/server.key")
    p.add_argument("--force-plaintext", action="store_true",
                   help="allow plaintext (no keys) to a non-loopback endpoint")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for the runtime's subscription before the first message "
                        "(a recording fails without one; a live device starts anyway, counting no_runtime)")
    p.add_argument("--send-timeout", type=float, default=1.0,
                   help="seconds a message may wait for a runtime that fell behind before it is counted lost")
    p.add_argument("--log-every", type=float, default=10.0, metavar="S", help="a statistics line every S seconds")
    p.add_argument("--report", default=None, metavar="FILE", help="write the final statistics as JSON to FILE")


def add_rate_argument(p) -> None:
    p.add_argument("--rate", type=float, default=1.0,
                   help="recordings: 1 = their own timing, 2 = twice as fast, 0 = as fast as possible")
    p.add_argument("--start-ns", type=int, default=None,
                   help="recordings: capture time of the first sample, ns since the Unix epoch (default: "
                        "now); give the same future time to several adapters to replay one session in step")


def client_keys(args) -> keyfiles.CurveClient | None:
    """``--keys DIR --key-name NAME`` or ``--client-key/--server-key`` (as ``sensors replay``)."""
    from sensors.replay import client_keys as replay_client_keys

    return replay_client_keys(args)


def run_adapter(args, modality: str, loop: Callable[[Outlet, Stop], None], *, recording: bool,
                probe: Callable[[], None] | None = None) -> int:
    """``probe()`` (a recording: is it readable, in the vendor's format?), then open the outlet, wait
    for the runtime, run ``loop(outlet, stop)`` until it returns (end of a recording) or
    SIGTERM/SIGINT; print the statistics. Returns the exit code."""
    stop = Stop().install()
    src = args.src or f"{modality}-{socket.gethostname()}"
    stats = OutletStats(modality, src)
    extra = {k: v for k, v in (("exercise", args.exercise), ("session", args.session)) if v}
    bind = args.bind is not None
    endpoint = args.bind if bind else (args.connect or DEFAULT_ENDPOINT)
    wall0 = time.monotonic()
    try:
        rate = getattr(args, "rate", 1.0)
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"--rate must be >= 0 (1 = real time, 0 = as fast as possible), got {rate}")
        if probe is not None:
            probe()
        curve = client_keys(args)
        with _Publisher(endpoint, bind=bind, src=src, station=args.station, sndhwm=1000, nodrop=True,
                        send_timeout_s=args.send_timeout, curve=curve, force_plaintext=args.force_plaintext) as pub:
            outlet = Outlet(modality, pub, stats, extra=extra, log_every_s=args.log_every)
            if not outlet.wait_runtime(args.connect_timeout):
                msg = (f"no runtime subscribed to {modality} at {pub.endpoint} after {args.connect_timeout:g} s: "
                       f"start `runtime serve` first (it binds {DEFAULT_ENDPOINT}), check --connect/--bind, and "
                       f"with CurveZMQ give allow-listed keys (--keys DIR --key-name NAME)")
                if recording:
                    raise AdapterError(msg)
                log.warning("%s; starting anyway (counting no_runtime until it is there)", msg)
            loop(outlet, stop)
    except AdapterError as err:
        log.error("%s", err)
        return 1
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    except zmq.ZMQError as err:
        log.error("ZeroMQ: %s", err)
        return 1
    finally:
        stop.uninstall()
        stats.wall_s = time.monotonic() - wall0
        if stop.signal:
            log.info("%s: stopped by %s", modality, stop.signal)
        if stats.sent or stats.drops:
            print(stats.line(), flush=True)
        if args.report:
            path = Path(args.report)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stats.to_dict(), indent=2, sort_keys=True) + "\n")
    return 0
