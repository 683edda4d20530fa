"""The metrics/health endpoint: bounded worker pool under stalled clients, basic auth, TLS."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import bcrypt
import pytest

from exporters.http import HttpExporter, WebConfig
from exporters.metrics import RuntimeMetrics


def _get(url, headers=None, context=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_stalled_clients_cost_a_bounded_number_of_threads():
    metrics = RuntimeMetrics()
    http = HttpExporter(metrics.registry, lambda: (True, "ready"), "127.0.0.1", 0, workers=4, backlog=4,
                        timeout_s=0.5).start()
    before = threading.active_count()
    stalled = []
    try:
        for _ in range(400):   # connect and say nothing
            s = socket.create_connection(("127.0.0.1", http.port))
            stalled.append(s)
        time.sleep(0.3)
        assert threading.active_count() - before <= 4
        time.sleep(1.5)   # the stalled ones time out and free their workers, the rest are refused
        assert http.refused > 0
        assert _get(f"http://127.0.0.1:{http.port}/readyz")[0] == 200
        assert threading.active_count() - before <= 4
    finally:
        for s in stalled:
            s.close()
        http.stop()


def test_basic_auth_from_a_prometheus_web_config(tmp_path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0,
                        web=WebConfig.load(cfg)).start()
    base = f"http://127.0.0.1:{http.port}"
    good = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"prom:guess").decode()}
    try:
        assert _get(base + "/metrics")[0] == 401
        assert _get(base + "/metrics", bad)[0] == 401
        assert _get(base + "/readyz", {"Authorization": "Basic !!notbase64"})[0] == 401
        status, body = _get(base + "/metrics", good)
        assert status == 200 and "awc_ticks_total" in body
        assert _get(base + "/healthz")[0] == 200   # liveness stays open
    finally:
        http.stop()
    cfg.write_text("basic_auth_users:\n  prom: plain-password\n")
    with pytest.raises(ValueError, match="bcrypt"):
        WebConfig.load(cfg)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_from_a_prometheus_web_config(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    cfg = tmp_path / "web.yml"
    cfg.write_text("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n")   # relative to the file
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0,
                        web=WebConfig.load(cfg), timeout_s=1.0).start()
    try:
        assert http.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        assert _get(f"https://127.0.0.1:{http.port}/readyz", context=ctx)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(f"http://127.0.0.1:{http.port}/readyz", timeout=3)   # plaintext HTTP gets nothing
        assert _get(f"https://127.0.0.1:{http.port}/healthz", context=ctx)[0] == 200   # still serving
    finally:
        http.stop()
