"""The metrics/health endpoint under hostile clients: slow and idle connections, password
guessing; the connection cap, the header deadline, basic auth and TLS (docs/security.md)."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import statistics
import threading
import time
import urllib.error
import urllib.request

import bcrypt
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from exporters.http import HttpExporter, ServerLimits, WebConfig
from exporters.metrics import RuntimeMetrics
from exporters.web_config import ADDRESS_BURST, SERVER_BURST, BasicAuth
from runtime.http_bench import basic, probe, probe_summary, start_attack, web_config

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _get(url, headers=None, context=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


@pytest.mark.parametrize("secured", [False, pytest.param(True, marks=needs_openssl)], ids=["plaintext", "tls+auth"])
def test_readyz_answers_within_1s_under_trickling_and_idle_reconnecting_clients(secured, tmp_path):
    web = ctx = auth = None
    if secured:
        web = WebConfig.load(web_config(tmp_path, "prometheus", "right", cost=10))
        ctx, auth = ssl.create_default_context(cafile=web.cert_file), basic("prometheus", "right")
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0, web=web,
                        limits=ServerLimits(header_timeout_s=3.0)).start()
    try:
        assert probe(http.port, 0.1, tls=ctx, authorization=auth)[0] is not None   # Prometheus has scraped once
        attacker = start_attack(http.port, 10.0, tls=secured, trickling=20, idle=200)
        time.sleep(1.5)   # every client has connected
        latencies = probe(http.port, 7.0, period_s=0.25, tls=ctx, authorization=auth)
        clients = attacker.communicate(timeout=60)[0]
        summary = probe_summary(latencies)
        print(f"\n/readyz under 20 trickling + 200 idle reconnecting clients ({'TLS, basic auth' if secured else 'plaintext'}): "
              f"{summary}; closed by the guard {http.closed}; {clients.strip()}")
        assert len(latencies) >= 20 and all(x is not None and x < 1.0 for x in latencies), latencies
        assert http.closed["header_timeout"] >= 200   # the deadline closed them however they trickled
        assert attacker.returncode == 0
    finally:
        http.stop()


def test_the_header_deadline_is_total_whatever_trickles_in():
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0,
                        limits=ServerLimits(header_timeout_s=1.0)).start()
    try:
        s = socket.create_connection(("127.0.0.1", http.port))
        s.settimeout(0.2)
        t0, closed_after = time.monotonic(), None
        for byte in b"GET /readyz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
                if s.recv(100) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
        s.close()
        assert closed_after is not None and 0.8 < closed_after < 3.0, closed_after
        assert http.closed["header_timeout"] == 1
        assert _get(f"http://127.0.0.1:{http.port}/readyz")[0] == 200
    finally:
        http.stop()


def test_the_connection_cap_sheds_the_oldest_idle_connection():
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0,
                        limits=ServerLimits(max_connections=8, header_timeout_s=30.0)).start()
    idle = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection(("127.0.0.1", http.port)))
            time.sleep(0.02)   # accepted in this order
        assert _get(f"http://127.0.0.1:{http.port}/readyz")[0] == 200   # room made for it
        assert http.closed["shed"] >= 1
        idle[0].settimeout(2.0)
        try:
            assert idle[0].recv(10) == b""   # the oldest was closed
        except ConnectionResetError:
            pass
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[-1].recv(10)   # the newest is still open
    finally:
        for s in idle:
            s.close()
        http.stop()


class _SlowCollector:
    def collect(self):
        time.sleep(2.0)
        yield GaugeMetricFamily("awc_slow", "slow to collect", value=1.0)


def test_health_answers_while_metrics_is_being_rendered():
    registry = CollectorRegistry()
    registry.register(_SlowCollector())
    http = HttpExporter(registry, lambda: (True, "ready"), "127.0.0.1", 0, workers=1).start()
    base = f"http://127.0.0.1:{http.port}"
    results = {}
    try:
        scrape = threading.Thread(target=lambda: results.update(scrape=_get(base + "/metrics")))
        scrape.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert _get(base + "/readyz")[0] == 200 and _get(base + "/healthz")[0] == 200
        assert time.monotonic() - t0 < 0.5
        assert _get(base + "/metrics")[0] == 503   # workers=1: a second scrape at once is turned away
        scrape.join(10)
        assert results["scrape"][0] == 200 and "awc_slow 1.0" in results["scrape"][1]
    finally:
        http.stop()


def test_basic_auth_from_a_prometheus_web_config(tmp_path):
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  prom: '{_hash('s3cret')}'\n")
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0,
                        web=WebConfig.load(cfg)).start()
    base = f"http://127.0.0.1:{http.port}"
    good = {"Authorization": basic("prom", "s3cret")}
    try:
        assert _get(base + "/metrics")[0] == 401
        assert _get(base + "/metrics", {"Authorization": basic("prom", "guess")})[0] == 401
        assert _get(base + "/readyz", {"Authorization": "Basic !!notbase64"})[0] == 401
        status, body = _get(base + "/metrics", good)
        assert status == 200 and "awc_ticks_total" in body
        assert _get(base + "/healthz")[0] == 200   # liveness stays open
    finally:
        http.stop()
    cfg.write_text("basic_auth_users:\n  prom: plain-password\n")
    with pytest.raises(ValueError, match="bcrypt"):
        WebConfig.load(cfg)


def test_password_guessing_is_rate_limited_per_address_and_right_passwords_are_cached():
    auth = BasicAuth({"prom": _hash("right")})
    try:
        guesses = [auth.verify(basic("prom", f"guess{i}"), "10.0.0.9") for i in range(20)]
        assert [v.status for v in guesses[:ADDRESS_BURST]] == [401] * ADDRESS_BURST
        assert {v.status for v in guesses[ADDRESS_BURST:]} == {429}
        assert all(v.retry_after_s > 0 for v in guesses[ADDRESS_BURST:])
        assert auth.checks == ADDRESS_BURST   # the other 15 cost no bcrypt
        assert auth.verify(basic("prom", "right"), "10.0.0.1").ok   # another address is not locked out
        assert auth.verify(basic("prom", "right"), "10.0.0.9").ok   # cached: even from the guessing address
        assert auth.verify(basic("prom", "guess0"), "10.0.0.2").status == 401   # a known wrong one: cached too
        assert auth.checks == ADDRESS_BURST + 1
        spread = [auth.verify(basic("prom", f"x{i}"), f"10.1.0.{i}").status for i in range(SERVER_BURST + 5)]
        assert spread.count(429) >= 4   # many addresses: the server's own budget holds
    finally:
        auth.close()


def test_unknown_and_known_users_are_refused_in_the_same_time():
    auth = BasicAuth({"prom": _hash("right", cost=10)})
    times = {"unknown": [], "known": []}
    try:
        for i in range(SERVER_BURST // 2):   # within the server's budget of uncached checks
            for kind, name in (("unknown", f"nobody{i}"), ("known", "prom")):
                t0 = time.perf_counter()
                verdict = auth.verify(basic(name, f"wrong{i}"), f"10.2.{i}.{len(kind)}")
                times[kind].append(time.perf_counter() - t0)
                assert verdict.status == 401
    finally:
        auth.close()
    unknown, known = statistics.median(times["unknown"]), statistics.median(times["known"])
    print(f"\nrefusal time (bcrypt cost 10): unknown user {unknown * 1e3:.1f} ms, known user {known * 1e3:.1f} ms")
    assert 0.5 < unknown / known < 2.0   # before: 4-10 ms against 405-455 ms


@needs_openssl
def test_tls_from_a_prometheus_web_config(tmp_path):
    web_config(tmp_path, "unused", "unused", cost=4)
    cfg = tmp_path / "tls.yml"
    cfg.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")   # relative to the file
    http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0,
                        web=WebConfig.load(cfg), limits=ServerLimits(header_timeout_s=1.0)).start()
    try:
        assert http.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        assert _get(f"https://127.0.0.1:{http.port}/readyz", context=ctx)[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(f"http://127.0.0.1:{http.port}/readyz", timeout=3)   # plaintext HTTP gets nothing
        assert _get(f"https://127.0.0.1:{http.port}/healthz", context=ctx)[0] == 200   # still serving
    finally:
        http.stop()


def test_a_port_in_use_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", taken.getsockname()[1])


def test_basic_header_parsing_refuses_garbage_without_bcrypt():
    auth = BasicAuth({"prom": _hash("right")})
    try:
        for header in (None, "", "Bearer x", "Basic !!", "Basic " + base64.b64encode(b"no-colon").decode(),
                       "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
            assert auth.verify(header, "10.3.0.1").status == 401
        assert auth.checks == 0
    finally:
        auth.close()


@needs_openssl
def test_password_guessing_leaves_the_pose_latency_unchanged(tiny_model, tmp_path):
    """The runtime at 10 Hz with TLS and basic auth; 10 wrong passwords a second (a new one each) in
    every other 2 s window: the guessing costs a handful of bcrypt checks and no pose latency."""
    from runtime.bench import bench_config
    from runtime.http_bench import bench_guessing, format_http

    r = bench_guessing(tiny_model, bench_config(["inference.intra_op_threads=1"]), 12.0, tmp_path, rate_hz=10.0,
                       cost=10, progress=False)
    print(format_http({"guessing": r}))
    quiet, hit = r["no_guessing"], r["guessing"]
    assert r["bcrypt_checks"] <= ADDRESS_BURST + 2    # ~60 guesses: the rest refused by the budget (429)
    assert "429" in r["clients"]
    assert hit["cpu_s_per_s"] - quiet["cpu_s_per_s"] < 0.25   # unthrottled: ~60 checks x 80 ms in 6 s
    assert hit["poses"] >= 0.8 * quiet["poses"]
    assert hit["p50_ms"] <= 1.5 * quiet["p50_ms"] + 5.0      # p99 printed: too few ticks to hold it to a bound
