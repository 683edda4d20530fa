"""ZeroMQ SUB ingest: a thread that receives, validates and queues sensor messages.

One SUB socket binds (the default: sensors connect) or connects to one or more endpoints and
subscribes to everything, so that a message of any other topic is counted as ``unknown_topic``
instead of vanishing inside ZeroMQ's prefix filter; the input topics and ``gt`` are accepted.
Every message is decoded with ``sensors.core.wire.decode``;
valid ones go, in arrival order, into a bounded queue the pipeline reads with ``get``/``drain``.

Accounting (docs/wire.md, "What the receiver drops, and why"): sent = received + dropped over all reasons, where

* received = valid messages accepted into the queue;
* dropped = decode failures (reason from ``WireError``), ``scope`` (valid, but the sending key may
  not send this topic or src), ``queue_full`` (valid, but the queue was full), and
  ``sequence_gap``: per source (key, topic, src), a jump from seq a to b > a+1 counts b−a−1 lost
  messages; a jump back (b ≤ a) is a sensor restart, which resets the tracking without counting.
  A jump forward that the time since that source's previous message cannot explain (more than
  ``MAX_SEQ_GAP``, or more than ``10 + MAX_SOURCE_RATE_HZ x elapsed seconds``) is not believed: one
  spoofed seq of 2**64-1 would count 1.8e19 losses; it is taken as a restart too.
* ``clock`` (with ``max_clock_offset_s``, wall clock only): a capture time further than that from
  the station clock, ahead or behind, is a sensor clock fault; such messages are dropped, so they
  can never evict good samples from the sync buffers.

This is the one place sequence gaps are counted. Each queued message carries in ``Message.lost``
how many messages of its source did not reach the queue since the previous queued one (gaps
upstream plus the ones dropped here), and in ``Message.key`` the allow-list entry of the key that
sent it; the tick loop judges each modality's health on the source whose sample it uses, so one
key cannot invent losses or clock faults for another key's stream.

Counts are kept in ``counts`` and mirrored to the ``awc_messages_received_total`` /
``awc_messages_dropped_total`` counters; the ``modality`` label is the input modality, or
``unknown`` for anything else (``gt``, ``pose``, garbage: the metric label set is closed).
Memory is bounded whatever arrives: at most ``rcvhwm`` messages wait in ZeroMQ (each frame <=
``MAX_FRAME_BYTES``), ``queue_size`` decoded ones in the queue, and ``MAX_SOURCES`` (topic, src)
pairs in the sequence table.

Security (docs/security.md): with ``curve`` (``sensors.core.keys.CurveServer``) the socket is a CurveZMQ
server whose ZAP authenticator admits only the allow-listed sensor keys, and every message is
checked against the scope of the key that sent it (ZeroMQ's ``User-Id`` metadata, set by the
authenticator; ``sensors.core.key_scope``): a topic or ``src`` outside it is dropped as ``scope``
and logged at most once a second. Failed handshakes, seen
by a socket monitor, are counted by reason (``sensors.core.keys.HANDSHAKE_FAILURE_REASONS``: unknown_key,
wrong_server_key, mechanism_mismatch, aborted, other) in ``counts["handshake_failures"]`` (their sum
in ``counts["handshake_failed"]``) and in ``awc_ingest_handshake_failures_total{reason}``, and
logged (at most one line a second per reason: a client with a wrong server key retries ten times a
second). Without it the socket is plaintext, refused on a non-loopback endpoint unless
``force_plaintext``; a CurveZMQ client against it still shows up, as ``mechanism_mismatch``.

The receive thread never dies silently: if it ends without ``stop()``, ``failure`` says why and
``on_exit`` (set by the runtime) is called, so the process stops and exits non-zero.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import zmq

from exporters.metrics import RuntimeMetrics
from sensors.core import keys, schema, wire

log = logging.getLogger(__name__)

INGEST_TOPICS: tuple[str, ...] = (*schema.MODALITIES, schema.GT_TOPIC)
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
# Larger frames make ZeroMQ disconnect the peer. The largest valid frame is a WiFi burst of
# MAX_WIFI_PACKETS packets (1000 x 3 x 114 x 4 B = 1.4 MB); LiDAR at its cap is 0.8 MB.
MAX_FRAME_BYTES = 2 * 1024 * 1024
MAX_SOURCES = 1024                  # (topic, src) pairs tracked for sequence gaps
MAX_SEQ_GAP = 100_000               # a larger forward jump is a restart, not 1e19 lost messages
MAX_SOURCE_RATE_HZ = 2_000          # no sensor sends faster: bounds the gap the elapsed time can explain


def seq_gap(last: int | None, seq: int, elapsed_s: float | None = None) -> int | None:
    """Messages lost between ``last`` and ``seq`` of one source: b-a-1 for a jump forward of at most
    ``MAX_SEQ_GAP`` (and, given the seconds since the previous message, at most
    ``10 + MAX_SOURCE_RATE_HZ * elapsed_s``); None for a restart (a jump back, or an implausible
    jump forward)."""
    if last is None:
        return 0
    gap = seq - last - 1
    limit = MAX_SEQ_GAP if elapsed_s is None else min(MAX_SEQ_GAP, 10 + int(MAX_SOURCE_RATE_HZ * max(0.0, elapsed_s)))
    return gap if 0 <= gap <= limit else None


def metric_modality(topic: str) -> str:
    """The ``modality`` label of a topic: the input modality, else ``unknown`` (closed label set)."""
    return topic if topic in schema.MODALITIES else schema.UNKNOWN_MODALITY


class Ingest:
    """Receives sensor messages on a background thread.

    endpoints: ZeroMQ endpoints to bind (``bind=True``) or connect; with bind, port 0 picks a free
    port and ``self.endpoints`` holds the real one after ``start()``.
    """

    def __init__(self, endpoints: list[str] | str, *, bind: bool, metrics: RuntimeMetrics | None = None,
                 queue_size: int = 4096, context: zmq.Context | None = None,
                 limits: wire.WireLimits = wire.DEFAULT_LIMITS, topics: tuple[str, ...] = INGEST_TOPICS,
                 rcvhwm: int = 1000, poll_ms: int = 50, curve: keys.CurveServer | None = None,
                 force_plaintext: bool = False, max_clock_offset_s: float | None = None):
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError(f"ingest needs at least one endpoint, e.g. {DEFAULT_ENDPOINT}")
        unknown = set(topics) - set(INGEST_TOPICS)
        if unknown:
            raise ValueError(f"ingest topics must be among {INGEST_TOPICS}, got {sorted(unknown)}")
        if queue_size < 1 or rcvhwm < 1:
            raise ValueError(f"queue_size and rcvhwm must be >= 1, got {queue_size}, {rcvhwm}")
        self.bind, self.metrics, self.limits, self.topics = bind, metrics, limits, tuple(topics)
        self.rcvhwm, self.poll_ms = int(rcvhwm), int(poll_ms)
        if max_clock_offset_s is not None and not max_clock_offset_s > 0:
            raise ValueError(f"max_clock_offset_s must be > 0 s (or None), got {max_clock_offset_s}")
        self.max_clock_offset_ns = None if max_clock_offset_s is None else int(max_clock_offset_s * 1e9)
        self.curve, self.force_plaintext = curve, force_plaintext
        if curve is None:
            keys.check_plaintext(self.endpoints, force_plaintext, "sensor ingest")
        self._auth = None
        self.handshakes = keys.HandshakeFailures(
            "ingest", None if metrics is None else lambda r: metrics.handshake_failures.labels(reason=r).inc(), log)
        self.failure: BaseException | None = None
        self._scopes = None if curve is None else curve.scopes    # Z85 public key -> KeyScope
        self._last_scope_log = 0.0
        # (topic, (key, src)) -> (offset s, monotonic time) of its latest clock fault
        self._clock_faults: OrderedDict[tuple[str, tuple[str, str]], tuple[float, float]] = OrderedDict()
        self.on_exit: Callable[[Ingest], None] | None = None
        self.queue: queue.Queue[wire.Message] = queue.Queue(maxsize=queue_size)
        self._own_context = context is None
        self._ctx = context
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._received: dict[str, int] = {}
        self._dropped: dict[str, dict[str, int]] = {}
        # (topic, key, src) -> (seq, monotonic time) of its latest message
        self._last_seq: OrderedDict[tuple[str, str, str], tuple[int, float]] = OrderedDict()
        self._last_restart_log = 0.0
        self._pending_lost: OrderedDict[tuple[str, str, str], int] = OrderedDict()   # dropped here since the last queued
        self.restarts = 0

    # -- lifetime -------------------------------------------------------------------------------
    def start(self) -> Ingest:
        """Open the socket (bind/connect errors surface here) and start the receive thread."""
        if self._thread is not None:
            raise RuntimeError("ingest already started")
        self._ctx = self._ctx or zmq.Context()
        sock = self._ctx.socket(zmq.SUB)
        if self.curve is not None:
            self._auth = self.curve.start_authenticator(self._ctx)   # ZAP handler before any peer arrives
            self.curve.apply(sock)
        self.handshakes.watch(sock)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.setsockopt(zmq.LINGER, 0)
        # Subscribe to everything: a prefix filter would discard messages with other topics
        # silently inside ZeroMQ; here they are decoded, counted (unknown_topic) and dropped.
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        resolved = []
        for ep in self.endpoints:
            try:
                if self.bind:
                    sock.bind(ep)
                    resolved.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
                else:
                    sock.connect(ep)
                    resolved.append(ep)
            except zmq.ZMQError as err:
                self._close_sockets(sock)
                raise ValueError(f"ingest cannot {'bind' if self.bind else 'connect'} {ep!r}: {err}. "
                                 "Is another runtime using it? Choose another endpoint or port") from err
        self.endpoints = resolved
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="awc-ingest", daemon=True)
        self._thread.start()
        log.info("ingest %s %s (%s), topics %s", "bound to" if self.bind else "connected to",
                 ", ".join(resolved), "CurveZMQ, allow-list " + str(self.curve.allowed_dir) if self.curve
                 else "PLAINTEXT", ", ".join(self.topics))
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, close the socket (linger 0) and, if owned, the context."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("ingest thread did not stop within %.1f s; socket left open", timeout_s)
                return
        if self._sock is not None:
            self._close_sockets(self._sock)
        if self._own_context and self._ctx is not None and not self._ctx.closed:
            self._ctx.term()

    def _close_sockets(self, sock: zmq.Socket) -> None:
        self.handshakes.unwatch(sock)
        if not sock.closed:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Ingest:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- consumer side --------------------------------------------------------------------------
    def get(self, timeout_s: float | None = None) -> wire.Message | None:
        """The next valid message in arrival order, or None after ``timeout_s`` seconds."""
        try:
            return self.queue.get(timeout=timeout_s) if timeout_s else self.queue.get_nowait()
        except queue.Empty:
            return None

    def drain(self, max_items: int | None = None) -> list[wire.Message]:
        """Every message queued now (up to ``max_items``), oldest first, without waiting."""
        out: list[wire.Message] = []
        while max_items is None or len(out) < max_items:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return out

    @property
    def counts(self) -> dict:
        """Snapshot: {"received": {topic: n}, "dropped": {topic: {reason: n}}, "restarts": n,
        "handshake_failed": n, "handshake_failures": {reason: n}}."""
        handshakes = self.handshakes.counts()
        with self._lock:
            return {"received": dict(self._received),
                    "dropped": {t: dict(r) for t, r in self._dropped.items()},
                    "restarts": self.restarts, "handshake_failed": sum(handshakes.values()),
                    "handshake_failures": handshakes}

    def recent_clock_faults(self, within_s: float = 1.0) -> dict[str, dict[tuple[str, str], float]]:
        """topic -> {source (key, src): capture time minus station clock (s)} of the latest message of
        each source dropped as ``clock`` in the last ``within_s`` seconds: the input health reports
        these as clock faults of the source that made them."""
        now = time.monotonic()
        out: dict[str, dict[tuple[str, str], float]] = {}
        with self._lock:
            for (topic, source), (off, at) in self._clock_faults.items():
                if now - at <= within_s:
                    out.setdefault(topic, {})[source] = off
        return out

    def received_total(self, topic: str | None = None) -> int:
        with self._lock:
            return sum(n for t, n in self._received.items() if topic in (None, t))

    def dropped_total(self, topic: str | None = None, reason: str | None = None) -> int:
        with self._lock:
            return sum(n for t, reasons in self._dropped.items() if topic in (None, t)
                       for r, n in reasons.items() if reason in (None, r))

    # -- receive thread -------------------------------------------------------------------------
    def _run(self) -> None:
        sock = self._sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self.handshakes.monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(self.poll_ms))
                if self.handshakes.monitor in ready:
                    self.handshakes.read()
                if sock not in ready:
                    continue
                for _ in range(1000):  # a batch, then look at the stop flag again
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    # The key the ZAP authenticator admitted (its Z85 public key), per connection.
                    key = frames[0].get("User-Id") if self.curve is not None else None
                    self.handle([f.bytes for f in frames], key)
        except zmq.ContextTerminated:
            log.info("ingest context terminated")
        except BaseException as exc:   # not swallowed: recorded, logged, re-raised, the runtime exits
            self.failure = exc
            log.critical("ingest thread died: %r; the runtime stops (exit non-zero)", exc, exc_info=True)
            raise
        finally:
            self._close_sockets(sock)
            if not self._stop.is_set() and self.on_exit is not None:
                self.on_exit(self)

    def handle(self, frames: list, key: str | None = None) -> wire.Message | None:
        """Decode, account and queue one multipart message (called by the receive thread);
        ``key``: the Z85 public key that sent it (CurveZMQ)."""
        start = time.perf_counter()
        try:
            msg = wire.decode(frames, self.limits)
        except wire.WireError as err:
            self._count_drop(err.modality, err.reason)
            if err.src is not None and err.seq is not None and err.modality in INGEST_TOPICS:
                track = (err.modality, self._key_name(key), err.src)
                self._lose(track, self._track(track, err.seq) + 1)
            log.debug("dropped %s message: %s", err.modality, err)
            return None
        if self.metrics is not None:
            self.metrics.stage_duration.labels(stage="decode").observe(time.perf_counter() - start)
        return self.accept(msg, key)

    def _key_name(self, key: str | None) -> str:
        scope = None if self._scopes is None else self._scopes.get(key or "")
        return "" if scope is None else scope.name

    def _in_scope(self, msg: wire.Message, key: str | None) -> bool:
        """Whether the key that sent ``msg`` may send its topic and src (always, on a plaintext socket);
        sets ``msg.key`` to the key's allow-list name."""
        if self._scopes is None:
            return True
        scope = self._scopes.get(key or "")
        if scope is not None and scope.allows(msg.topic, msg.src):
            msg.key = scope.name
            return True
        self._count_drop(msg.topic, "scope")
        now = time.monotonic()
        if now - self._last_scope_log >= 1.0:   # at most one line a second, whatever arrives
            self._last_scope_log = now
            log.warning("ingest: key %s may not send %s from src %r (%s): dropped (scope, %d so far; "
                        "docs/security.md)", "?" if scope is None else repr(scope.name), msg.topic, msg.src,
                        "not in the allow-list" if scope is None else "its scope: " + scope.describe(),
                        self.dropped_total(reason="scope"))
        return False

    def accept(self, msg: wire.Message, key: str | None = None) -> wire.Message | None:
        """Account and queue one decoded message (``handle`` after decoding; tests feed it directly);
        ``key``: the Z85 public key that sent it (CurveZMQ)."""
        if msg.topic not in self.topics:
            self._count_drop(msg.topic, "unknown_topic")
            return None
        if not self._in_scope(msg, key):
            return None
        track = (msg.topic, msg.key, msg.src)
        gap = self._track(track, msg.seq)
        msg.lost = gap + self._pending_lost.pop(track, 0)
        offset_ns = msg.t_ns - time.time_ns()
        if self.max_clock_offset_ns is not None and abs(offset_ns) > self.max_clock_offset_ns:
            self._count_drop(msg.topic, "clock")
            with self._lock:
                self._clock_faults.pop((msg.topic, msg.source), None)
                self._clock_faults[(msg.topic, msg.source)] = (offset_ns / 1e9, time.monotonic())
                if len(self._clock_faults) > MAX_SOURCES:
                    self._clock_faults.popitem(last=False)
            self._lose(track, msg.lost + 1)
            log.debug("dropped %s message from %r: capture time %+.1f s from the station clock", msg.topic,
                      msg.src, (msg.t_ns - time.time_ns()) / 1e9)
            return None
        try:
            self.queue.put_nowait(msg)
        except queue.Full:
            self._count_drop(msg.topic, "queue_full")
            self._lose(track, msg.lost + 1)
            return None
        with self._lock:
            self._received[msg.topic] = self._received.get(msg.topic, 0) + 1
        if self.metrics is not None and msg.topic in schema.MODALITIES:
            self.metrics.messages_received.labels(modality=msg.topic).inc()
        return msg

    def _track(self, key: tuple[str, str, str], seq: int) -> int:
        """Follow the sequence of one source (topic, key, src); returns the messages lost upstream
        just before ``seq``."""
        topic, src = key[0], key[2]
        previous = self._last_seq.pop(key, None)
        now = time.monotonic()
        self._last_seq[key] = (seq, now)  # most recently seen last
        if len(self._last_seq) > MAX_SOURCES:
            self._last_seq.popitem(last=False)
        last = None if previous is None else previous[0]
        gap = seq_gap(last, seq, None if previous is None else now - previous[1])
        if gap:
            self._count_drop(topic, "sequence_gap", gap)
        elif gap is None:
            with self._lock:
                self.restarts += 1
            self._pending_lost.pop(key, None)
            if now - self._last_restart_log >= 1.0:   # at most one line a second, whatever arrives
                self._last_restart_log = now
                log.info("%s source %r restarted its sequence (%d after %d): tracking reset (%d restarts so far)",
                         topic, src, seq, last, self.restarts)
        return gap or 0

    def _lose(self, key: tuple[str, str, str], n: int = 1) -> None:
        """Messages of ``key`` dropped here: carried by its next queued message (``Message.lost``)."""
        self._pending_lost[key] = self._pending_lost.pop(key, 0) + n
        if len(self._pending_lost) > MAX_SOURCES:
            self._pending_lost.popitem(last=False)

    def _count_drop(self, topic: str, reason: str, n: int = 1) -> None:
        with self._lock:
            reasons = self._dropped.setdefault(topic, {})
            reasons[reason] = reasons.get(reason, 0) + n
        if self.metrics is not None:
            self.metrics.messages_dropped.labels(modality=metric_modality(topic), reason=reason).inc(n)
