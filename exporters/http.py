"""HTTP endpoints of the runtime: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/metrics``: the runtime's registry in the Prometheus text format (prometheus_client's WSGI app).
* ``/healthz``: 200 while the process serves HTTP at all (liveness).
* ``/readyz``: 200 only when the readiness callable says so (model loaded, ingest running, a tick
  ran recently), else 503 with the reason in the body.

A small threaded wsgiref server; binds to loopback unless told otherwise (sensor data is health data).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        log.debug("http %s", format % args)


def _text(start_response, status: str, body: str):
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def make_app(registry: CollectorRegistry, readiness: Readiness):
    """WSGI app routing /metrics, /healthz and /readyz."""
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            ok, reason = readiness()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable", f"{reason}\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics, /healthz or /readyz\n")

    return app


class HttpExporter:
    """Serve the app on ``host:port`` (port 0 = any free port) in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, readiness: Readiness, host: str = "127.0.0.1",
                 port: int = 9108):
        self._server = make_server(host, port, make_app(registry, readiness),
                                   server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="awc-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> HttpExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
