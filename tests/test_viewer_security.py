"""The viewer off loopback: TLS and basic auth or nothing (unless forced), the Host allow-list."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("sse_starlette")

from exporters.recorder import open_recorder  # noqa: E402
from exporters.web_config import WebConfig  # noqa: E402
from runtime.config import free_loopback_port  # noqa: E402
from runtime.http_bench import basic, web_config  # noqa: E402
from runtime.view.server import ViewConfig, host_allowed, is_loopback_host  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _recording(tmp_path: Path) -> Path:
    path = tmp_path / "poses.jsonl"
    rec = open_recorder(path)
    for t in range(3):
        rec.write({"tick": t, "tick_ns": 1_000 + t, "outcome": "fused", "latency_ns": 5, "joints": np.zeros((17, 3)),
                   "presence": np.ones(4, np.uint8), "degradation": np.zeros(4), "degraded": np.zeros(4, np.uint8)})
    rec.close()
    return path


def _get(port: int, path: str, *, host: str | None = None, auth: str | None = None,
         ctx: ssl.SSLContext | None = None) -> int:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx) if ctx
            else http.client.HTTPConnection("127.0.0.1", port, timeout=5))
    headers = {"Authorization": auth} if auth else {}
    if host is not None:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
    else:
        conn.request("GET", path, headers=headers)
    try:
        return conn.getresponse().status
    finally:
        conn.close()


def _start_view(args: list[str], port: int, ctx=None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "view", "--port", str(port), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(port, "/healthz", ctx=ctx)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"runtime view did not come up: {proc.communicate()[1]}") from None
            time.sleep(0.1)


def test_the_viewer_refuses_a_non_loopback_address_without_tls_and_authentication(tmp_path):
    from runtime.cli import main

    rec = _recording(tmp_path)
    with pytest.raises(ValueError, match="--web-config"):
        ViewConfig(recording=str(rec), host="0.0.0.0")
    with pytest.raises(ValueError, match="force-plaintext"):
        ViewConfig(recording=str(rec), host="10.1.2.3", web=WebConfig(users={"a": "$2b$04$x"}))   # auth, no TLS
    assert main(["view", "--recording", str(rec), "--host", "0.0.0.0", "--port", "0"]) == 2
    ViewConfig(recording=str(rec), host="0.0.0.0", force_plaintext=True)   # forced: allowed (and logged)
    ViewConfig(recording=str(rec), host="127.0.0.2")                       # loopback needs nothing
    assert is_loopback_host("::1") and is_loopback_host("localhost") and not is_loopback_host("0.0.0.0")


@needs_openssl
def test_the_viewer_off_loopback_with_tls_answers_401_to_a_wrong_password(tmp_path):
    rec = _recording(tmp_path)
    cfg = web_config(tmp_path, "nurse", "right", cost=4)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    port = free_loopback_port()
    proc = _start_view(["--recording", str(rec), "--host", "0.0.0.0", "--web-config", str(cfg)], port, ctx)
    try:
        assert _get(port, "/api/config", ctx=ctx) == 401
        assert _get(port, "/api/config", ctx=ctx, auth=basic("nurse", "wrong")) == 401
        assert _get(port, "/api/config", ctx=ctx, auth=basic("intruder", "right")) == 401
        assert _get(port, "/api/recording", ctx=ctx, auth=basic("nurse", "right")) == 200
        assert _get(port, "/", ctx=ctx, auth=basic("nurse", "right")) == 200
        with pytest.raises((OSError, http.client.HTTPException)):
            _get(port, "/api/config")   # plaintext HTTP gets nothing
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_viewer_answers_only_the_hosts_it_is_known_by(tmp_path):
    rec = _recording(tmp_path)
    port = free_loopback_port()
    proc = _start_view(["--recording", str(rec), "--allow-host", "station-3.ward"], port)
    try:
        assert _get(port, "/api/config") == 200                                  # Host: 127.0.0.1:PORT
        assert _get(port, "/api/config", host=f"localhost:{port}") == 200
        assert _get(port, "/api/config", host="station-3.ward") == 200
        assert _get(port, "/api/config", host=f"[::1]:{port}") == 200
        assert _get(port, "/api/config", host=f"attacker.example:{port}") == 400   # DNS rebinding
        assert _get(port, "/", host="") == 400
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    names = frozenset({"localhost"})
    assert host_allowed("10.0.0.5:8080", names) and host_allowed("[fe80::1]:80", names)
    assert not host_allowed("localhost.attacker.example", names) and not host_allowed(None, names)
