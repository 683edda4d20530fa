"""Start ``runtime view`` in its own process beside a runtime (``runtime serve --view``). Kept free
of the web stack's imports so the runtime loads nothing of it."""

from __future__ import annotations

import logging
import subprocess
import sys

log = logging.getLogger(__name__)


def connect_endpoint(bound: str) -> str:
    """The endpoint a local viewer connects to for a socket bound at ``bound`` (wildcards -> loopback)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if bound.startswith(wildcard):
            return "tcp://127.0.0.1:" + bound[len(wildcard):]
    return bound.replace("tcp://[::]:", "tcp://[::1]:")


def start_viewer_process(pose_endpoint: str, port: int, host: str = "127.0.0.1",
                         extra_args: list[str] | None = None, web_config: str = "") -> subprocess.Popen:
    """``runtime view`` in its own process (what ``runtime serve --view`` starts), so the viewer can
    never slow the tick loop. ``extra_args``: e.g. the CurveZMQ ``--client-key``/``--server-key``;
    ``web_config``: TLS and basic auth of the page (the runtime's ``metrics.web_config``)."""
    cmd = [sys.executable, "-m", "runtime", "view", "--connect", connect_endpoint(pose_endpoint),
           "--port", str(port), "--host", host, *(["--web-config", web_config] if web_config else []),
           *(extra_args or [])]
    proc = subprocess.Popen(cmd)
    log.info("viewer on %s:%d (process %d%s)", host, port, proc.pid, ", web config " + web_config if web_config else "")
    return proc
