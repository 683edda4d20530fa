"""ZeroMQ PUB of the pose stream: one wire-protocol ``pose`` message per tick, made from the
tick's ``sensors.core.pose_record.PoseRecord`` (``to_message``; readers use ``from_message``).

Arrays (wire protocol v1): ``joints`` <f4 [17,3] (metres, camera frame), ``presence`` <u1 [4],
``shapley`` <f4 [4] (exact label-free Shapley values of the sliding window ending at this tick),
``degradation`` <f4 [4] (degradation score in [0, 1]); optionally ``lidar_points`` <f4 [N,3] and
``mmwave_points`` <f4 [N,5], the sensor points the tick used (``output.forward_points``, for viewers).
Header: ``tick`` (tick index), ``latency_ns`` (newest used capture time to publish), ``src`` = the
station name, ``seq`` = +1 per pose message this publisher sends (ticks without a pose send none,
so a reader counts lost messages from ``seq`` gaps, not idle time), ``t_ns`` = tick time, plus these
extras (msgpack values):

=================  ==================================================================================
``station``        station name
``shares``         [4] label-free contribution shares of the window (sum 1)
``degraded``       [4] 0/1 degraded flags (with hysteresis)
``reasons``        [4] what drives each degradation score: an input-health component (``missing``,
                   ``stale``, ``loss``, ``non_finite``, ``points``, ``frozen``, ``range``, ``noise``,
                   ``clock``), ``disagreement`` or ``drift``; "" when the score is near 0
``coalition_values``  [16] label-free coalition profits of the window (bitmask order)
``shapley_gt``     [4] Shapley values with ground-truth profit, or nil without ground truth
``shares_gt``      [4] the matching shares, or nil
``input_t_ns``     [4] capture time of the sample used per modality (0 = absent)
``outcome``        ``fused`` (all four present) or ``partial``
``gt``             [17][3] ground-truth joints the tick used (replay with ``gt`` only), else nil
``rehab``          map: joint angles, exercise, repetition count, last range of motion, the last
                   completed repetition with its trust (``runtime.rehab.monitor.RehabTick.header``; docs/wire.md)
=================  ==================================================================================
All arrays are in ``sensors.core.schema.MODALITIES`` order (rgb, lidar, mmwave, wifi).

Security (docs/security.md): with ``curve`` (``sensors.core.keys.CurveServer`` of the ``viewer`` role)
the socket is a CurveZMQ server and only allow-listed viewer keys can subscribe; the stream is
encrypted. Readers use ``sensors.core.keys.CurveClient`` on their SUB socket. Without keys the socket is
plaintext, refused on a non-loopback endpoint unless ``force_plaintext``. Refused handshakes (a
viewer key not allow-listed, another runtime's server key, a plaintext reader) are seen by a socket
monitor (``sensors.core.keys.HandshakeFailures``, the sensor ingest's code), read on every ``publish`` by
the tick thread, counted by reason in ``handshake_failures()`` and, with ``metrics``, in
``awc_pose_handshake_failures_total{reason}``, and logged at most once a second per reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import zmq

from sensors.core import keys, wire
from sensors.core.pose_record import PoseRecord

if TYPE_CHECKING:
    from exporters.metrics import RuntimeMetrics

log = logging.getLogger(__name__)


class PosePublisher:
    """PUB socket (bind or connect) sending ``pose`` messages; never blocks the tick loop."""

    def __init__(self, endpoint: str, bind: bool = True, send_hwm: int = 1000, context: zmq.Context | None = None,
                 curve: keys.CurveServer | None = None, force_plaintext: bool = False,
                 metrics: RuntimeMetrics | None = None):
        if curve is None:
            keys.check_plaintext([endpoint], force_plaintext, "pose stream")
        # A ZAP authenticator is one per context: a secured publisher gets a context of its own.
        self._own_context = context is None and curve is not None
        self._ctx = context or (zmq.Context() if curve is not None else zmq.Context.instance())
        self._auth = curve.start_authenticator(self._ctx) if curve is not None else None
        self.socket = self._ctx.socket(zmq.PUB)
        if curve is not None:
            curve.apply(self.socket)
        on_failure = None if metrics is None else lambda r: metrics.pose_handshake_failures.labels(reason=r).inc()
        self.handshakes = keys.HandshakeFailures("pose stream", on_failure, log)
        self.handshakes.watch(self.socket)
        self.socket.setsockopt(zmq.SNDHWM, send_hwm)
        self.socket.setsockopt(zmq.LINGER, 1000)
        try:
            if bind:
                self.socket.bind(endpoint)
            else:
                self.socket.connect(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint
        self.sent = 0
        self.dropped = 0
        self.seq = 0                  # wire seq of the next pose message

    def publish(self, record: PoseRecord) -> bool:
        """Send one tick's pose message (``PoseRecord.to_message``) without blocking; a full queue
        drops the message (counted) instead of stalling. Counts the handshakes refused since the
        last call first."""
        self.handshakes.read()
        msg = record.to_message()
        msg.seq, self.seq = self.seq, self.seq + 1      # consumed when dropped too: the reader sees the gap
        try:
            self.socket.send_multipart(wire.encode(msg), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def handshake_failures(self) -> dict[str, int]:
        """Refused handshakes by reason (``sensors.core.keys.HANDSHAKE_FAILURE_REASONS``) so far."""
        return self.handshakes.counts()

    def close(self) -> None:
        if not self.socket.closed:
            self.handshakes.read()
            self.handshakes.unwatch(self.socket)
        self.socket.close(linger=1000)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context and not self._ctx.closed:
            self._ctx.term()
