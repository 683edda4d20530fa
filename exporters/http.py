"""HTTP endpoints of the runtime: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/metrics``: the runtime's registry in the Prometheus text format (prometheus_client's own
  app, rendered on a worker thread: at most ``workers`` renderings at once, a scrape beyond that
  is answered 503 at once, as node_exporter's ``--web.max-requests`` does);
* ``/healthz``: 200 while the process serves HTTP at all (liveness), never behind auth;
* ``/readyz``: 200 only when the readiness callable says so (model loaded, ingest running, a tick
  ran recently), else 503 with the reason in the body. Answered on the event loop: it does not
  wait for /metrics, bcrypt or any slow client.

Served by ``exporters.http_server.HttpServer`` (uvicorn with a total header deadline and a
connection cap: slow or idle clients cannot take the endpoint, docs/security.md); binds to loopback
unless told otherwise (sensor data is health data). Optional TLS and basic auth from a web config
file in the format of Prometheus' own exporters (``exporters.web_config``); with basic auth every
path but ``/healthz`` needs the credentials.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporters.http_server import HttpServer, ServerLimits
from exporters.web_config import REALM, BasicAuth, Verdict, WebConfig

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]
OnRefused = Callable[[str], None]
__all__ = ["HttpExporter", "WebConfig", "make_app", "ServerLimits"]


async def send_text(send, status: int, body: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = body.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def refuse(send, verdict: Verdict) -> None:
    """401 with the challenge, or 429 with Retry-After (docs/security.md)."""
    if verdict.status == 429:
        await send_text(send, 429, "too many failed logins from here: try again later\n",
                        [(b"retry-after", str(max(1, round(verdict.retry_after_s))).encode())])
    else:
        await send_text(send, 401, "unauthorized\n", [(b"www-authenticate", REALM.encode())])


async def authorize(auth: BasicAuth | None, scope, send, on_refused: OnRefused | None = None) -> bool:
    """True when the request may go on; else the refusal has been sent (and counted)."""
    if auth is None:
        return True
    client = scope.get("client") or ("?", 0)
    verdict = await auth.verify_async(header(scope, b"authorization"), client[0])
    if verdict.ok:
        return True
    if on_refused is not None:
        on_refused("rate_limited" if verdict.status == 429 else "unauthorized")
    await refuse(send, verdict)
    return False


def _environ(scope) -> dict:
    """The WSGI environ prometheus_client's app reads (method, query, Accept headers)."""
    env = {"REQUEST_METHOD": scope["method"], "PATH_INFO": scope["path"],
           "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"), "wsgi.input": io.BytesIO()}
    for name, key in ((b"accept", "HTTP_ACCEPT"), (b"accept-encoding", "HTTP_ACCEPT_ENCODING")):
        value = header(scope, name)
        if value is not None:
            env[key] = value
    return env


def make_app(registry: CollectorRegistry, readiness: Readiness, auth: BasicAuth | None = None, workers: int = 4,
             on_refused: OnRefused | None = None):
    """ASGI app routing /metrics, /healthz and /readyz (basic auth on all but /healthz with ``auth``)."""
    metrics_app = make_wsgi_app(registry)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="awc-http-metrics")
    rendering = [0]

    def render(environ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        out: dict = {}

        def start_response(status, headers, exc_info=None):
            out["status"], out["headers"] = int(status.split()[0]), headers

        body = b"".join(metrics_app(environ, start_response))
        return out["status"], [(k.lower().encode(), v.encode()) for k, v in out["headers"]], body

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            return await send_text(send, 200, "ok\n")
        if not await authorize(auth, scope, send, on_refused):
            return
        if path == "/readyz":
            ok, reason = readiness()
            return await send_text(send, 200 if ok else 503, f"{reason}\n")
        if path != "/metrics":
            return await send_text(send, 404, "not found: try /metrics, /healthz or /readyz\n")
        if rendering[0] >= workers:
            return await send_text(send, 503, f"{workers} scrapes are being answered: try again\n")
        rendering[0] += 1
        try:
            status, headers, body = await asyncio.get_running_loop().run_in_executor(pool, render, _environ(scope))
        finally:
            rendering[0] -= 1
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    app.pool = pool
    return app


class HttpExporter:
    """Serve the app on ``host:port`` (port 0 = any free port) in a daemon thread.

    ``workers``: /metrics renderings at once; ``limits``: connection cap and header deadline;
    ``on_closed(reason)`` / ``on_refused(reason)``: counters of connections the guard closed and
    of requests refused by basic auth (``awc_http_connections_closed_total``,
    ``awc_http_auth_refused_total``)."""

    def __init__(self, registry: CollectorRegistry, readiness: Readiness, host: str = "127.0.0.1",
                 port: int = 9108, *, workers: int = 4, limits: ServerLimits | None = None,
                 web: WebConfig | None = None, on_closed: Callable[[str], None] | None = None,
                 on_refused: OnRefused | None = None):
        if workers < 1:
            raise ValueError(f"metrics workers must be >= 1, got {workers}")
        web = web or WebConfig()
        self.auth = web.basic_auth()
        self.tls = web.ssl_context()
        self.app = make_app(registry, readiness, self.auth, workers, on_refused)
        self.server = HttpServer(self.app, host, port, limits=limits, tls=self.tls, on_close=on_closed,
                                 name="http")

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        host = self.server.host
        host = f"[{host}]" if ":" in host else host
        return f"{self.server.scheme}://{host}:{self.port}/metrics"

    @property
    def closed(self) -> dict[str, int]:
        """Connections the guard closed, by reason (shed, refused, header_timeout)."""
        return dict(self.server.guard.closed)

    def start(self) -> HttpExporter:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.app.pool.shutdown(wait=False, cancel_futures=True)
        if self.auth is not None:
            self.auth.close()
