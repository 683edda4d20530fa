"""HTTP endpoints of the runtime: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/metrics``: the runtime's registry in the Prometheus text format (prometheus_client's WSGI app).
* ``/healthz``: 200 while the process serves HTTP at all (liveness).
* ``/readyz``: 200 only when the readiness callable says so (model loaded, ingest running, a tick
  ran recently), else 503 with the reason in the body.

A wsgiref server with a bounded worker pool and per-connection timeouts; binds to loopback unless
told otherwise (sensor data is health data). Optional TLS and basic auth, configured with a web
config file in the format of Prometheus' own exporters (exporter-toolkit), e.g.::

    tls_server_config:
      cert_file: /etc/awc/metrics.crt
      key_file: /etc/awc/metrics.key
    basic_auth_users:
      prometheus: $2b$12$...        # bcrypt hash: htpasswd -nBC 12 "" | tr -d ':\n'

With basic auth every path but ``/healthz`` needs the credentials (a liveness probe stays simple).
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bcrypt
import yaml
from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]


class _PooledWSGIServer(WSGIServer):
    """WSGI server with a bounded worker pool: ``workers`` threads serve connections, at most
    ``backlog`` more wait; beyond that a new connection is closed at once (counted in ``refused``).
    Every connection gets ``timeout_s`` per socket operation (TLS handshake included), so stalled
    clients free their worker instead of holding it (400 stalled clients cost 4 threads, not 400)."""

    allow_reuse_address = True
    request_queue_size = 128   # listen backlog: a burst of connections is accepted (and refused) quickly

    def __init__(self, *args, workers: int = 4, backlog: int = 16, timeout_s: float = 5.0,
                 tls: ssl.SSLContext | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="awc-http")
        self._slots = threading.BoundedSemaphore(workers + backlog)
        self.timeout_s, self.tls = timeout_s, tls
        self.refused = 0

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:   # the pool is shut down: the server is stopping
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request, client_address):
        try:
            request.settimeout(self.timeout_s)
            if self.tls is not None:
                request = self.tls.wrap_socket(request, server_side=True)   # handshake under the timeout
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError) as err:   # a client that stalls, resets or speaks no TLS
            log.debug("http connection from %s dropped: %s", client_address[0], err)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self):
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        log.debug("http %s", format % args)


def _text(start_response, status: str, body: str):
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


@dataclass(frozen=True)
class WebConfig:
    """TLS and basic auth of the HTTP endpoint (Prometheus web config file format)."""

    cert_file: str = ""
    key_file: str = ""
    users: dict[str, str] = field(default_factory=dict)   # name -> bcrypt hash

    @classmethod
    def load(cls, path: str | Path) -> WebConfig:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"web config {p}: cannot read it: {err}") from err
        unknown = set(data) - {"tls_server_config", "basic_auth_users"}
        if unknown:
            raise ValueError(f"web config {p}: unknown keys {sorted(unknown)}; expected tls_server_config, "
                             f"basic_auth_users")
        tls = data.get("tls_server_config") or {}
        users = data.get("basic_auth_users") or {}
        if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
            raise ValueError(f"web config {p}: tls_server_config needs both cert_file and key_file")
        for name, h in users.items():
            if not (isinstance(h, str) and h.startswith(("$2a$", "$2b$", "$2y$"))):
                raise ValueError(f"web config {p}: user {name!r} needs a bcrypt hash ($2b$...), not a password")
        base = p.parent
        resolve = (lambda f: str(base / f)) if tls else str
        return cls(resolve(tls["cert_file"]) if tls else "", resolve(tls["key_file"]) if tls else "",
                   {str(k): str(v) for k, v in users.items()})

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.cert_file:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _authorized(environ, users: dict[str, str]) -> bool:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Basic "):
        return False
    try:
        name, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    hashed = users.get(name)
    return hashed is not None and bcrypt.checkpw(password.encode(), hashed.encode())


def make_app(registry: CollectorRegistry, readiness: Readiness, users: dict[str, str] | None = None):
    """WSGI app routing /metrics, /healthz and /readyz (basic auth on all but /healthz when ``users``)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if users and path != "/healthz" and not _authorized(environ, users):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="awc-runtime"'),
                                                ("Content-Type", "text/plain; charset=utf-8")])
            return [b"unauthorized\n"]
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
                 port: int = 9108, *, workers: int = 4, backlog: int = 16, timeout_s: float = 5.0,
                 web: WebConfig | None = None):
        web = web or WebConfig()
        self.tls = web.ssl_context()

        def server_class(*args, **kwargs):
            return _PooledWSGIServer(*args, workers=workers, backlog=backlog, timeout_s=timeout_s, tls=self.tls,
                                     **kwargs)

        self._server = make_server(host, port, make_app(registry, readiness, web.users),
                                   server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="awc-http-accept", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    @property
    def refused(self) -> int:
        """Connections closed at once because every worker and backlog slot was taken."""
        return self._server.refused

    def start(self) -> HttpExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
