"""The viewer's web server: Starlette routes, Server-Sent Events, served by uvicorn on loopback.

Routes: ``/`` the page; ``/static/...`` its script, style and the vendored three.js;
``/api/config`` mode and skeleton; ``/api/events`` live frames (SSE, event ``frame``; event
``stats`` once a second); ``/api/recording`` every frame of a recording (recording mode);
``/api/stats`` the stream counters; ``/healthz``.

Served by the station's guarded HTTP server (``exporters.http_server``: header deadline,
connection cap). Off loopback only with TLS and basic auth from a web config file (the format of
``metrics.web_config``, docs/security.md) unless ``force_plaintext``; every route but ``/healthz``
then needs the credentials. A request whose ``Host`` is not an IP address, ``localhost``, this
machine's name or one of ``allowed_hosts`` is refused (400): a page on another site cannot read
the viewer through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from exporters.http import authorize, header, send_text
from exporters.http_server import HttpServer
from exporters.web_config import WebConfig
from runtime.view.frames import STALE_AFTER_S, load_recording, page_config
from runtime.view.hub import Hub, SubscriberConfig, subscribe

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
STATS_PERIOD_S = 1.0


@dataclass(frozen=True)
class ViewConfig:
    """One of ``subscriber`` (live) or ``recording`` (playback); where the page is served."""

    subscriber: SubscriberConfig | None = None
    recording: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_frames: int = 36_000
    web: WebConfig | None = None          # TLS and basic auth (--web-config)
    allowed_hosts: tuple[str, ...] = ()   # Host names the page may be reached by, besides the defaults
    force_plaintext: bool = False         # off loopback without TLS and auth (an isolated network only)
    stale_after_s: float = STALE_AFTER_S     # live: a station silent this long is shown stale

    def __post_init__(self):
        if (self.subscriber is None) == (self.recording is None):
            raise ValueError("the viewer needs exactly one source: a pose stream (--connect ENDPOINT) or a "
                             "recording (--recording FILE)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port: expected 0..65535, got {self.port}")
        if not self.stale_after_s > 0:
            raise ValueError(f"--stale-after: expected seconds > 0, got {self.stale_after_s}")
        secured = self.web is not None and self.web.secured
        if not is_loopback_host(self.host) and not secured and not self.force_plaintext:
            raise ValueError(f"the viewer on {self.host} would show patients' poses to anyone who reaches it: give "
                             "it TLS and basic auth with --web-config FILE (the format of metrics.web_config, "
                             "docs/security.md), or, on an isolated network only, force it with --force-plaintext")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (``0.0.0.0`` is every address, not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(value: str | None, names: frozenset[str]) -> bool:
    """A ``Host`` header naming an IP address or one of ``names`` (a DNS-rebinding page names its own)."""
    if not value:
        return False
    host = value.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.rstrip(".") in names


def allowed_host_names(extra: tuple[str, ...] = ()) -> frozenset[str]:
    """localhost, this machine's name and ``extra`` (``--allow-host``), lower case."""
    return frozenset(n.lower().rstrip(".") for n in ("localhost", socket.gethostname(), *extra) if n)


def guard(app, cfg: ViewConfig):
    """The Host check and basic auth (all but /healthz) in front of the viewer's routes."""
    names = allowed_host_names(cfg.allowed_hosts)
    auth = cfg.web.basic_auth() if cfg.web is not None else None

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            if not host_allowed(header(scope, b"host"), names):
                return await send_text(send, 400, "this Host is not allowed: reach the viewer by its address or a "
                                                  "name given with --allow-host\n")
            if scope["path"] != "/healthz" and not await authorize(auth, scope, send):
                return
        await app(scope, receive, send)

    return guarded


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def build_app(cfg: ViewConfig) -> Starlette:
    hub = Hub()
    frames = load_recording(cfg.recording, cfg.max_frames) if cfg.recording else None
    source = cfg.recording if frames is not None else cfg.subscriber.endpoint
    config = page_config("recording" if frames is not None else "live", str(source), cfg.stale_after_s)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        stop = asyncio.Event()
        task = asyncio.create_task(subscribe(cfg.subscriber, hub, stop)) if cfg.subscriber else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task

    async def index(_request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_config(_request: Request):
        return JSONResponse(config)

    async def api_recording(_request: Request):
        if frames is None:
            return JSONResponse({"error": "live mode: no recording (start with --recording FILE)"}, 404)
        return JSONResponse({"frames": frames})

    async def api_stats(_request: Request):
        return JSONResponse({**hub.stats.to_dict(), "stations": sorted(hub.latest), "clients": len(hub.clients),
                             "tick_span": hub.tick_span})

    async def healthz(_request: Request):
        return PlainTextResponse("ok\n")

    async def events(request: Request):
        client = hub.add_client()

        async def stream():
            loop = asyncio.get_running_loop()
            next_stats = loop.time()
            try:
                while True:
                    if loop.time() >= next_stats:
                        next_stats = loop.time() + STATS_PERIOD_S
                        yield {"event": "stats", "data": _dumps({**hub.stats.to_dict(),
                                                                 "coalesced_here": client.coalesced})}
                    try:
                        await asyncio.wait_for(client.event.wait(), max(0.0, next_stats - loop.time()))
                    except TimeoutError:
                        continue
                    client.event.clear()
                    pending, client.pending = client.pending, {}
                    for frame in pending.values():
                        yield {"event": "frame", "data": _dumps(frame)}
            finally:
                hub.remove_client(client)

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", index), Route("/api/config", api_config), Route("/api/recording", api_recording),
        Route("/api/stats", api_stats), Route("/api/events", events), Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return app


def serve_view(cfg: ViewConfig) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both)."""
    tls = cfg.web.ssl_context() if cfg.web is not None else None
    server = HttpServer(guard(build_app(cfg), cfg), cfg.host, cfg.port, tls=tls, lifespan="on", name="viewer")
    if not is_loopback_host(cfg.host) and not (cfg.web is not None and cfg.web.secured):
        log.warning("the viewer is served on %s WITHOUT TLS and authentication (forced): anyone who reaches this "
                    "address sees the station", cfg.host)
    log.info("viewer at %s://%s:%d/ (%s)", server.scheme, cfg.host, server.port,
             f"recording {cfg.recording}" if cfg.recording else f"live from {cfg.subscriber.endpoint}")
    server.run()
