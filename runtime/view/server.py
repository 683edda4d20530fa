"""The viewer's web server: Starlette routes, Server-Sent Events, served by uvicorn on loopback.

Routes: ``/`` the page; ``/static/...`` its script, style and the vendored three.js;
``/api/config`` mode and skeleton; ``/api/events`` live frames (SSE, event ``frame``; event
``stats`` once a second); ``/api/recording`` every frame of a recording (recording mode);
``/api/stats`` the stream counters; ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from runtime.view.frames import load_recording, page_config
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

    def __post_init__(self):
        if (self.subscriber is None) == (self.recording is None):
            raise ValueError("the viewer needs exactly one source: a pose stream (--connect ENDPOINT) or a "
                             "recording (--recording FILE)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port: expected 0..65535, got {self.port}")


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def build_app(cfg: ViewConfig) -> Starlette:
    hub = Hub()
    frames = load_recording(cfg.recording, cfg.max_frames) if cfg.recording else None
    source = cfg.recording if frames is not None else cfg.subscriber.endpoint
    config = page_config("recording" if frames is not None else "live", str(source))

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
    app = build_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           access_log=False, lifespan="on"))
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the viewer is served on %s: anyone who reaches this address sees the station", cfg.host)
    log.info("viewer at http://%s:%d/ (%s)", cfg.host, cfg.port,
             f"recording {cfg.recording}" if cfg.recording else f"live from {cfg.subscriber.endpoint}")
    server.run()
