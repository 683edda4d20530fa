"""The station's HTTP server: uvicorn (asyncio, h11) with limits that do not depend on the
clients' good will. Serves the metrics endpoint (``exporters.http``) and the viewer
(``runtime.view.server``); the reference for the behaviour is Go's net/http as Prometheus'
exporters run it (``ReadHeaderTimeout``, ``IdleTimeout``), plus a connection cap.

* **Event-driven**: one asyncio loop holds every connection; a connection that says nothing costs
  a file descriptor and a few kB, no thread. Work that takes CPU (rendering /metrics, bcrypt)
  runs on worker threads, so /healthz and /readyz answer while it runs.
* **A total header deadline** (``header_timeout_s``): from the accept (the TLS handshake
  included) to the end of the request headers, and from the end of one response to the end of
  the next request's headers on a kept-alive connection. Bytes trickling in do not extend it:
  the connection is closed when it passes.
* **A connection cap** (``max_connections``): a new connection beyond it closes the oldest
  *idle* one (no request being answered: still handshaking, sending headers, or kept alive);
  when every connection is busy answering, the new one is closed instead.
* **TLS** is started by the server's own protocol (``loop.start_tls``) once a connection is
  admitted, so connections still in their handshake count against the cap and the deadline.
* Request headers are bounded (``max_header_bytes``, h11's limit): larger ones get a 400.

``GuardStats`` counts what the guard closed (``shed``, ``refused``, ``header_timeout``) and
calls ``on_close(reason)`` for each (the ``awc_http_connections_closed_total`` counter).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

CLOSE_REASONS = ("shed", "refused", "header_timeout")   # why the guard closed a connection (metric label)


@dataclass(frozen=True)
class ServerLimits:
    """How much of the server one client can take (docs/security.md, "The HTTP endpoint")."""

    max_connections: int = 256       # open connections, TLS handshakes included
    header_timeout_s: float = 5.0    # accept -> end of request headers, whatever trickles in
    max_header_bytes: int = 16_384   # request line and headers

    def __post_init__(self):
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if not self.header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be > 0 s, got {self.header_timeout_s}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes}")


class GuardStats:
    """The open connections of one server (in accept order) and what the guard closed."""

    def __init__(self, limits: ServerLimits, tls: ssl.SSLContext | None,
                 on_close: Callable[[str], None] | None = None):
        self.limits, self.tls, self.on_close = limits, tls, on_close
        self.open: dict[GuardedProtocol, None] = {}
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)

    def count(self, reason: str) -> None:
        self.closed[reason] += 1
        if self.on_close is not None:
            self.on_close(reason)

    def admit(self, conn: GuardedProtocol) -> bool:
        """Room for ``conn``: made by closing the oldest idle connection when at the cap."""
        if len(self.open) >= self.limits.max_connections:
            victim = next((c for c in self.open if c.idle), None)
            if victim is None:
                self.count("refused")
                return False
            victim.close("shed")
        self.open[conn] = None
        return True

    def release(self, conn: GuardedProtocol) -> None:
        self.open.pop(conn, None)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the header deadline, the connection cap and TLS started here."""

    def __init__(self, *args, guard: GuardStats, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard
        self._raw: asyncio.Transport | None = None
        self._made = False            # uvicorn's connection_made ran (TLS done)
        self._deadline: asyncio.TimerHandle | None = None
        self._seen_cycle = None       # the request whose headers arrived last
        self._handshake: asyncio.Task | None = None
        self._early: list[bytes] = []  # decrypted before start_tls returned (the request, usually)

    @property
    def idle(self) -> bool:
        """No request being answered (handshaking, reading headers or kept alive)."""
        return self.cycle is None or self.cycle.response_complete

    # -- deadline ---------------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.guard.limits.header_timeout_s, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.idle:
            self.close("header_timeout")

    def close(self, reason: str) -> None:
        """Close at once (no lingering): a shed, refused or timed-out connection."""
        self._disarm()
        self.guard.release(self)
        self.guard.count(reason)
        if self._raw is not None and not self._raw.is_closing():
            self._raw.abort()

    # -- asyncio protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        if not self.guard.admit(self):
            transport.abort()
            return
        self._arm()
        if self.guard.tls is None:
            self._made = True
            super().connection_made(transport)
            return
        transport.pause_reading()
        self._handshake = self.loop.create_task(self._start_tls(transport))

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        try:
            tls = await self.loop.start_tls(raw, self, self.guard.tls, server_side=True,
                                            ssl_handshake_timeout=self.guard.limits.header_timeout_s)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError) as err:
            log.debug("http: TLS handshake with %s failed: %r", raw.get_extra_info("peername"), err)
            self._disarm()
            self.guard.release(self)
            raw.abort()
            return
        if tls is None or self not in self.guard.open:   # closed while handshaking
            self._disarm()
            self.guard.release(self)
            raw.abort()
            return
        self._made = True
        super().connection_made(tls)
        early, self._early = b"".join(self._early), []
        if early:
            super().data_received(early)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.release(self)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._made:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._made:
            super().data_received(data)
        else:   # one read between the end of the handshake and start_tls returning
            self._early.append(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._seen_cycle:   # a new request's headers are complete
            self._seen_cycle = self.cycle
            self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()   # the next request's headers (or the close) must come in time
        super().on_response_complete()

    def shutdown(self) -> None:
        if self._made:
            super().shutdown()
        elif self._raw is not None:
            self._raw.abort()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 = any free port); bind errors surface here, in the caller."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)
    except OSError as err:
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {err.strerror}. Is the port in use? "
                                 "Choose another one") from err


class HttpServer:
    """An ASGI ``app`` served with the guard on ``host:port``: ``start()`` in a daemon thread
    (the metrics endpoint) or ``run()`` in this thread until SIGINT/SIGTERM (the viewer)."""

    def __init__(self, app, host: str, port: int, *, limits: ServerLimits | None = None,
                 tls: ssl.SSLContext | None = None, lifespan: str = "off",
                 on_close: Callable[[str], None] | None = None, name: str = "http"):
        self.limits = limits or ServerLimits()
        self.tls, self.name = tls, name
        self.guard = GuardStats(self.limits, tls, on_close)
        self.sock = bind(host, port)
        config = uvicorn.Config(app, http=functools.partial(GuardedProtocol, guard=self.guard), lifespan=lifespan,
                                # the process' own logging; no line per malformed request (a hostile
                                # client could flood the log), errors of the app still logged
                                log_config=None, log_level="error", access_log=False, server_header=False,
                                timeout_keep_alive=self.limits.header_timeout_s,
                                h11_max_incomplete_event_size=self.limits.max_header_bytes)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.sock.getsockname()[0]

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def run(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (uvicorn handles both in the main thread)."""
        self.server.run(sockets=[self.sock])

    def start(self, timeout_s: float = 10.0) -> HttpServer:
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name=f"awc-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.sock.close()
