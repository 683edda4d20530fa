"""A small publisher for sensor drivers: wire protocol v1 over a ZeroMQ XPUB socket.

    with SensorPublisher("tcp://127.0.0.1:5555", src="cam-front", station="room-1") as pub:
        if not pub.wait_connected(5.0):
            raise SystemExit("no runtime subscribed at tcp://127.0.0.1:5555")
        pub.send("rgb", time.time_ns(), kpts=keypoints_17x2_pixels)

The socket is an XPUB (a PUB that also reports subscriptions), so ``wait_connected`` can tell
when a subscriber's subscription has really arrived: messages sent before that are silently
dropped by ZeroMQ (the "slow joiner"). ``seq`` counts per topic for this publisher's ``src``, so
the receiver can count lost messages from the gaps. Never CONFLATE (it breaks multipart).

A runtime with CurveZMQ (docs/security.md) only takes messages from allow-listed keys: pass
``curve=keys.CurveClient.load(".../clients/NAME.key_secret", ".../server.key")``. Without it the
socket is plaintext, refused on a non-loopback endpoint unless ``force_plaintext``.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import zmq

from sensors.core import keys, wire


def default_src() -> str:
    """Sensor id when none is given: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class SensorPublisher:
    """Publishes sensor samples; one per driver process is enough for several modalities."""

    def __init__(self, endpoint: str, *, bind: bool = False, src: str | None = None,
                 station: str | None = None, context: zmq.Context | None = None, sndhwm: int = 1000,
                 nodrop: bool = False, send_timeout_s: float = 5.0, curve: keys.CurveClient | None = None,
                 force_plaintext: bool = False):
        self.endpoint = endpoint
        self.src = src or default_src()
        self.station = station
        if curve is None:
            keys.check_plaintext([endpoint], force_plaintext, "sensor publisher")
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, int(sndhwm))
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, also repeated ones
        if curve is not None:
            curve.apply(self._sock)
        if nodrop:  # block (up to send_timeout_s) at the high-water mark instead of dropping silently
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
            self._sock.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        try:
            if bind:
                self._sock.bind(endpoint)
                self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                self._sock.connect(endpoint)
        except zmq.ZMQError as err:
            self.close()
            raise ValueError(f"cannot {'bind' if bind else 'connect'} the sensor publisher to {endpoint!r}: "
                             f"{err}. Use tcp://HOST:PORT, ipc://PATH or inproc://NAME") from err
        self._seq: dict[str, int] = {}
        self.subscriptions: set[bytes] = set()
        self.sent: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}  # nodrop: messages given up after send_timeout_s

    # -- connection -----------------------------------------------------------------------------
    def _read_subscriptions(self, timeout_ms: int) -> None:
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                event = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self.subscriptions.add(event[1:])
            elif event[:1] == b"\x00":
                self.subscriptions.discard(event[1:])

    def subscribed(self, topic: str) -> bool:
        """Whether some subscriber's subscription matches ``topic`` (prefix match, as ZeroMQ does)."""
        t = topic.encode("ascii")
        return any(t.startswith(prefix) for prefix in self.subscriptions)

    def wait_connected(self, timeout_s: float, topics: tuple[str, ...] | list[str] | None = None) -> bool:
        """Wait until a subscriber's subscription has arrived (covering every topic of ``topics``
        when given, else any). Returns False after ``timeout_s`` seconds without one."""
        deadline = time.monotonic() + timeout_s
        while True:
            if topics is None and self.subscriptions:
                return True
            if topics is not None and all(self.subscribed(t) for t in topics):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._read_subscriptions(int(min(left, 0.1) * 1000) + 1)

    # -- sending --------------------------------------------------------------------------------
    def next_seq(self, topic: str) -> int:
        """The sequence number the next message of ``topic`` will carry."""
        return self._seq.get(topic, 0)

    def skip(self, topic: str) -> int:
        """Consume a sequence number without sending (a simulated loss the receiver counts)."""
        seq = self.next_seq(topic)
        self._seq[topic] = seq + 1
        return seq

    def send(self, modality: str, t_ns: int, *, extra: dict | None = None, **arrays: np.ndarray) -> int:
        """Send one sample captured at ``t_ns`` (ns since the Unix epoch); returns its seq (also when
        a ``nodrop`` send timed out: see ``timeouts``).

        modality: a topic of the wire protocol; arrays as in docs/wire.md (converted to float32),
        e.g. ``send("lidar", t, points=pts)`` or ``send("wifi", t, amp=a, phase=p)`` with a/p
        [P, 3, 114] (t = capture time of the last packet).
        """
        if modality not in wire.ARRAY_SPECS:
            raise ValueError(f"unknown modality {modality!r}: expected one of {wire.TOPICS}")
        extra = dict(extra or {})
        if self.station is not None:
            extra.setdefault("station", self.station)
        if wire.is_csi(modality):
            extra.setdefault("period_ns", wire.WIFI_PERIOD_NS)
        seq = self.next_seq(modality)
        self.send_message(wire.Message(topic=modality, src=self.src, seq=seq, t_ns=int(t_ns),
                                       sent_ns=time.time_ns(), arrays=arrays, extra=extra))
        return seq

    def send_message(self, msg: wire.Message) -> bool:
        """Send a prepared message as is (its seq becomes this publisher's last seq of the topic).

        Returns False when, with ``nodrop``, the subscribers did not take it within the send
        timeout: the message is lost and its seq consumed (the receiver counts the gap)."""
        frames = wire.encode(msg)
        self._seq[msg.topic] = msg.seq + 1
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.Again:
            self.timeouts[msg.topic] = self.timeouts.get(msg.topic, 0) + 1
            return False
        self.sent[msg.topic] = self.sent.get(msg.topic, 0) + 1
        if self._sock.poll(0, zmq.POLLIN):  # keep the subscription events from piling up
            self._read_subscriptions(0)
        return True

    # -- lifetime -------------------------------------------------------------------------------
    def close(self, linger_s: float = 1.0) -> None:
        """Close the socket, giving queued messages up to ``linger_s`` to leave."""
        if not self._sock.closed:
            self._sock.close(linger=int(linger_s * 1000))
        if self._own_context and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> SensorPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

