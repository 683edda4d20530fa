"""Refused CurveZMQ handshakes, counted by reason from a ZeroMQ socket monitor (docs/security.md,
"Refused handshakes"). Shared by the sensor ingest and the pose publisher; ``sensors.core.keys``
re-exports these names."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq
import zmq.utils.monitor

log = logging.getLogger(__name__)


# Why a peer's handshake on a CurveZMQ server socket failed, as seen by the socket monitor (closed
# set: the ``reason`` label of ``awc_ingest_handshake_failures_total``, docs/security.md).
HANDSHAKE_FAILURE_REASONS: tuple[str, ...] = (
    "unknown_key",          # the ZAP authenticator refused the client's public key (not allow-listed)
    "wrong_server_key",     # the client's HELLO does not open with this server's key (another runtime's server.key)
    "mechanism_mismatch",   # the peer speaks another security mechanism (a plaintext client)
    "aborted",              # the peer hung up mid-handshake (a plaintext client that saw the greeting, a port probe)
    "other",                # any other handshake error (malformed handshake command, ZAP handler error)
)
HANDSHAKE_FAILED_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_ZAP_DENIED = 400   # ZAP status code of a refused key (300 = try later, 500 = handler error)


def handshake_failure_reason(event: int, value: int) -> str:
    """The ``HANDSHAKE_FAILURE_REASONS`` entry of one socket-monitor event (``event``, ``value``):
    the value is the ZAP status code for an AUTH failure, the ZMTP protocol error code for a
    PROTOCOL failure, an errno for NO_DETAIL."""
    if event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "unknown_key" if value == _ZAP_DENIED else "other"
    if event & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return {zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "wrong_server_key",
                zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "mechanism_mismatch"}.get(value, "other")
    if event & zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "aborted"
    raise ValueError(f"socket-monitor event {event:#x} is not a failed handshake "
                     f"(expected one of the HANDSHAKE_FAILED events {HANDSHAKE_FAILED_EVENTS:#x})")


class HandshakeFailures:
    """Refused handshakes of one server socket, counted by reason (``HANDSHAKE_FAILURE_REASONS``)
    from its ZeroMQ socket monitor. Shared by the sensor ingest and the pose publisher.

    ``watch(sock)`` opens the monitor (before the socket binds); the thread that owns the socket
    calls ``read()`` (non-blocking: it drains the events waiting) and ``unwatch(sock)`` at the end.
    Each failure calls ``on_failure(reason)`` (the Prometheus counter) and is logged as
    ``"<what>: handshake refused ..."``, at most one line a second per reason (a client with a wrong
    server key retries ten times a second). ``counts()`` may be read from any thread."""

    def __init__(self, what: str, on_failure: Callable[[str], None] | None = None,
                 logger: logging.Logger | None = None):
        self.what, self.on_failure, self.log = what, on_failure, logger or log
        self.monitor: zmq.Socket | None = None
        self._counts: dict[str, int] = dict.fromkeys(HANDSHAKE_FAILURE_REASONS, 0)
        self._last_log: dict[str, float] = {}   # reason -> monotonic time of its last log line
        self._lock = threading.Lock()

    def watch(self, sock: zmq.Socket) -> zmq.Socket:
        self.monitor = sock.get_monitor_socket(HANDSHAKE_FAILED_EVENTS)
        return self.monitor

    def unwatch(self, sock: zmq.Socket) -> None:
        if self.monitor is not None and not self.monitor.closed:
            if not sock.closed:
                sock.disable_monitor()
            self.monitor.close(linger=0)

    def read(self) -> int:
        """Count the failed handshakes the monitor reported since the last call; returns how many."""
        n = 0
        while self.monitor is not None and not self.monitor.closed:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] & HANDSHAKE_FAILED_EVENTS:
                self.count(handshake_failure_reason(event["event"], event["value"]), event.get("endpoint", b"?"))
                n += 1
        return n

    def count(self, reason: str, endpoint: bytes | str = b"?") -> None:
        """Account one refused handshake."""
        if reason not in self._counts:
            raise ValueError(f"handshake failure reason must be one of {HANDSHAKE_FAILURE_REASONS}, got {reason!r}")
        with self._lock:
            self._counts[reason] += 1
            n = self._counts[reason]
        if self.on_failure is not None:
            self.on_failure(reason)
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= 1.0:
            self._last_log[reason] = now
            self.log.warning("%s: handshake refused on %s (%s; %d so far): see docs/security.md", self.what,
                             endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else endpoint, reason, n)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
