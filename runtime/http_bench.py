"""Hostile HTTP clients and the figures of the station's HTTP side (docs/security.md, "Measured").

    python -m runtime.http_bench bench --model awc.onnx --seconds 20 [--json FILE]
    python -m runtime.http_bench attack --port 9108 --seconds 30 [--tls] [--guess-rate 10]

The clients the HTTP side must survive, run in their own process (``python -m runtime.http_bench
attack ...``) so they do not share the measured process' interpreter:

* ``trickling``: connections that send one byte every ``--period`` seconds (2 s) of a request whose
  headers never end, and reconnect when closed;
* ``idle``: connections that say nothing and reconnect as soon as they are closed;
* ``--guess-rate R``: R requests a second with a known user name and a new wrong password each.

``probe`` asks /readyz every ``period`` seconds and records how long each answer took.
``bench_http`` measures, for the metrics endpoint alone, plaintext and then TLS with basic auth:
/readyz probes under 20 trickling and 200 idle reconnecting clients; then, for the full runtime
at 10 Hz with TLS and basic auth (bcrypt cost 12), the pose latency without and with password
guessing, and the bcrypt checks the guessing cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import resource
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
import numpy as np

TRICKLE_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: station\r\n"   # then header lines, forever


# ---------------------------------------------------------------------------------------------
# The hostile clients
# ---------------------------------------------------------------------------------------------
async def _trickler(host: str, port: int, period_s: float, counts: dict) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        counts["connections"] += 1
        data, i = TRICKLE_REQUEST, 0
        try:
            while True:
                if i == len(data):
                    data, i = b"X-Slow: %d\r\n" % counts["connections"], 0
                writer.write(data[i:i + 1])
                i += 1
                try:
                    if not await asyncio.wait_for(reader.read(4096), period_s):
                        break   # closed by the server
                except TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            writer.close()


async def _idler(host: str, port: int, counts: dict) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        counts["connections"] += 1
        try:
            await reader.read(1)   # until the server closes it
        except OSError:
            pass
        finally:
            writer.close()


def guessing_now(start_at: float, period_s: float, now: float | None = None) -> bool:
    """With a schedule (``period_s`` > 0): quiet for ``period_s`` from ``start_at``, then guessing as
    long, and so on; without one, always."""
    if period_s <= 0:
        return True
    t = (time.time() if now is None else now) - start_at
    return t >= 0 and int(t // period_s) % 2 == 1


def _guesser(host: str, port: int, tls: bool, user: str, rate_hz: float, stop: threading.Event, counts: dict,
             start_at: float = 0.0, period_s: float = 0.0) -> None:
    ctx = None
    if tls:   # the attacker does not care who answers
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    while not stop.is_set():
        t0 = time.monotonic()
        if not guessing_now(start_at, period_s):
            stop.wait(0.01)
            continue
        token = base64.b64encode(f"{user}:{secrets.token_hex(8)}".encode()).decode()
        conn = (http.client.HTTPSConnection(host, port, timeout=10, context=ctx) if tls
                else http.client.HTTPConnection(host, port, timeout=10))
        try:
            conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
            status = conn.getresponse().status
            counts[status] = counts.get(status, 0) + 1
        except (OSError, http.client.HTTPException):
            counts["error"] = counts.get("error", 0) + 1
        finally:
            conn.close()
        stop.wait(max(0.0, 1.0 / rate_hz - (time.monotonic() - t0)))


def attack(host: str, port: int, seconds: float, trickling: int = 20, idle: int = 200, period_s: float = 2.0,
           guess_rate: float = 0.0, user: str = "prometheus", tls: bool = False, start_at: float = 0.0,
           guess_period_s: float = 0.0) -> dict:
    """Run the hostile clients for ``seconds``; returns what they did."""
    counts = {"trickling": {"connections": 0}, "idle": {"connections": 0}, "guesses": {}}
    stop = threading.Event()
    guesser = None
    if guess_rate > 0:
        guesser = threading.Thread(target=_guesser, args=(host, port, tls, user, guess_rate, stop, counts["guesses"],
                                                          start_at, guess_period_s), daemon=True)
        guesser.start()

    async def main():
        tasks = [asyncio.create_task(_trickler(host, port, period_s, counts["trickling"])) for _ in range(trickling)]
        tasks += [asyncio.create_task(_idler(host, port, counts["idle"])) for _ in range(idle)]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    stop.set()
    if guesser is not None:
        guesser.join(timeout=15)
    return counts


def start_attack(port: int, seconds: float, *, tls: bool = False, trickling: int = 20, idle: int = 200,
                 guess_rate: float = 0.0, user: str = "prometheus", start_at: float = 0.0,
                 guess_period_s: float = 0.0) -> subprocess.Popen:
    """``attack`` in its own process against 127.0.0.1:``port``."""
    cmd = [sys.executable, "-m", "runtime.http_bench", "attack", "--port", str(port), "--seconds", str(seconds),
           "--trickling", str(trickling), "--idle", str(idle), "--guess-rate", str(guess_rate), "--user", user,
           "--start-at", repr(start_at), "--guess-period", str(guess_period_s)]
    return subprocess.Popen([*cmd, *(["--tls"] if tls else [])], stdout=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------------------------
# Probes and figures
# ---------------------------------------------------------------------------------------------
def probe(port: int, seconds: float, period_s: float = 0.25, *, tls: ssl.SSLContext | None = None,
          authorization: str | None = None, path: str = "/readyz", timeout_s: float = 5.0) -> list[float | None]:
    """Seconds each probe of ``path`` took to answer 200 (None: failed or another status)."""
    out: list[float | None] = []
    end = time.monotonic() + seconds
    headers = {"Authorization": authorization} if authorization else {}
    while time.monotonic() < end:
        t0 = time.monotonic()
        conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout_s, context=tls) if tls
                else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s))
        try:
            conn.request("GET", path, headers=headers)
            ok = conn.getresponse().status == 200
            out.append(time.monotonic() - t0 if ok else None)
        except (OSError, http.client.HTTPException):
            out.append(None)
        finally:
            conn.close()
        time.sleep(max(0.0, period_s - (time.monotonic() - t0)))
    return out


def probe_summary(latencies: list[float | None]) -> dict:
    ok = [x for x in latencies if x is not None]
    ms = np.asarray(ok) * 1e3 if ok else np.zeros(1)
    return {"probes": len(latencies), "failed": len(latencies) - len(ok),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (needs the ``openssl`` command)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the TLS figures need the openssl command to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def web_config(folder: Path, user: str, password: str, cost: int = 12) -> Path:
    """A web config with TLS (self-signed) and one basic-auth user."""
    cert, key = self_signed(folder)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    path = folder / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                    f"basic_auth_users:\n  {user}: '{hashed}'\n")
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bench_slow_clients(seconds: float, folder: Path | None = None) -> dict:
    """/readyz under 20 trickling and 200 idle reconnecting clients: plaintext, then (with
    ``folder`` for the certificate) TLS with basic auth."""
    from exporters.http import HttpExporter, WebConfig
    from exporters.metrics import RuntimeMetrics

    out = {}
    for name in ("plaintext", "tls_basic_auth"):
        if name != "plaintext" and folder is None:
            break
        web, ctx, auth = None, None, None
        if name != "plaintext":
            web = WebConfig.load(web_config(folder, "prometheus", "right"))
            ctx = ssl.create_default_context(cafile=str(Path(web.cert_file)))
            auth = basic("prometheus", "right")
        http = HttpExporter(RuntimeMetrics().registry, lambda: (True, "ready"), "127.0.0.1", 0, web=web).start()
        try:
            probe(http.port, 0.1, tls=ctx, authorization=auth)   # Prometheus has scraped once (credentials cached)
            attacker = start_attack(http.port, seconds + 2, tls=ctx is not None)
            time.sleep(1.0)   # the clients connect
            latencies = probe(http.port, seconds, tls=ctx, authorization=auth)
            clients = attacker.communicate(timeout=60)[0].strip()
            out[name] = {**probe_summary(latencies), "closed_by_guard": http.closed, "clients": clients}
        finally:
            http.stop()
    return out


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_guessing(model, cfg, seconds: float, folder: Path, rate_hz: float = 10.0, cost: int = 12,
                   period_s: float = 2.0, progress: bool = True) -> dict:
    """One runtime at 10 Hz with TLS and basic auth (bcrypt ``cost``), sensor messages in over real
    sockets; password guessing at ``rate_hz`` from one address (a new wrong password each) in every
    other window of ``period_s``, so that load from other processes hits both alike. Per phase: pose
    latency (newest capture -> pose sent), process CPU; and the bcrypt checks the guessing cost."""
    from tqdm import tqdm

    from runtime.bench import PERIOD_NS, bench_config, running_station, send_frame
    from runtime.config import free_loopback_port

    port = free_loopback_port()
    c = bench_config([f"inference.intra_op_threads={cfg.inference.intra_op_threads}", f"metrics.port={port}",
                      f"metrics.web_config={web_config(folder, 'prometheus', 'right', cost)}"])
    rng = np.random.default_rng(3)
    phases = {False: {"latency": [], "cpu_s": 0.0, "s": 0.0}, True: {"latency": [], "cpu_s": 0.0, "s": 0.0}}
    with running_station(c, model) as (rt, sensor, poses):
        start_at = time.time() + 1.0
        attacker = start_attack(port, seconds + 2.0, tls=True, trickling=0, idle=0, guess_rate=rate_hz,
                                start_at=start_at, guess_period_s=period_s)
        time.sleep(max(0.0, start_at - time.time()))
        t_start, cpu, k = time.monotonic(), _cpu_s(), 0
        with tqdm(total=int(seconds), desc="guessing", unit="s", leave=False, disable=not progress) as bar:
            while time.monotonic() - t_start < seconds:
                phase = guessing_now(start_at, period_s)
                records = send_frame(sensor, poses, k, t_start + (k + 1) * PERIOD_NS / 1e9, rng)
                k += 1
                phases[phase]["latency"] += [r.latency_ns / 1e6 for r in records]
                now_cpu = _cpu_s()
                phases[phase]["cpu_s"] += now_cpu - cpu
                phases[phase]["s"] += PERIOD_NS / 1e9
                cpu = now_cpu
                if k % 10 == 0:
                    bar.update(1)
        checks = rt.http.auth.checks
    out = {"cost": cost, "rate_hz": rate_hz, "period_s": period_s, "bcrypt_checks": checks,
           "clients": attacker.communicate(timeout=60)[0].strip()}
    for phase, name in ((False, "no_guessing"), (True, "guessing")):
        lat = np.asarray(phases[phase]["latency"] or [np.nan])
        out[name] = {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                     "poses": len(phases[phase]["latency"]),
                     "cpu_s_per_s": round(phases[phase]["cpu_s"] / max(phases[phase]["s"], 1e-9), 3)}
    return out


def format_http(r: dict) -> str:
    lines = [""]
    if r.get("slow_clients"):
        lines.append("HTTP side: /readyz probed every 0.25 s under 20 trickling + 200 idle reconnecting clients:")
    for name, s in r.get("slow_clients", {}).items():
        lines.append(f"  {name:<15} {s['probes']} probes, {s['failed']} failed, p50 {s['p50_ms']} ms, "
                     f"p99 {s['p99_ms']} ms, max {s['max_ms']} ms; closed by the guard {s['closed_by_guard']}")
    g = r.get("guessing")
    if g:
        lines.append(f"Password guessing at {g['rate_hz']:g}/s from one address in every other {g['period_s']:g} s "
                     f"(TLS, basic auth, bcrypt cost {g['cost']}), runtime at 10 Hz:")
        for name in ("no_guessing", "guessing"):
            s = g[name]
            lines.append(f"  {name:<15} pose latency p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms "
                         f"({s['poses']} poses), process CPU {s['cpu_s_per_s']} s/s")
        lines.append(f"  {g['bcrypt_checks']} bcrypt checks in all {g['clients']}")
    return "\n".join(lines)


def bench_http(model, cfg, seconds: float, progress: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="awc-bench-http-") as tmp:
        folder = Path(tmp) if shutil.which("openssl") else None
        out = {"slow_clients": bench_slow_clients(seconds, folder)}
        if folder is not None:
            out["guessing"] = bench_guessing(model, cfg, 2 * seconds, folder, progress=progress)
    return out


def run_bench(model_path: str, seconds: float, threads: int, json_out: str | None, progress: bool) -> int:
    import json

    from runtime.bench import bench_config
    from runtime.inference import OnnxPoseModel

    if not Path(model_path).is_file():
        print(f"model {model_path} not found: pass --model awc.onnx (e.g. from `make demo`)", file=sys.stderr)
        return 2
    cfg = bench_config([f"inference.intra_op_threads={threads}"])
    model = OnnxPoseModel.load(model_path, provider=cfg.inference.provider, intra_op_threads=threads)
    report = bench_http(model, cfg, seconds, progress=progress)
    print(format_http(report).lstrip("\n"))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.http_bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="the HTTP figures: /readyz under slow clients (S s, plaintext then TLS with "
                                     "basic auth) and pose latency under password guessing (2 S s)")
    b.add_argument("--model", required=True, help="exported ONNX model (the runtime at 10 Hz for the guessing)")
    b.add_argument("--seconds", type=float, default=20.0, metavar="S")
    b.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    b.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    b.add_argument("--no-progress", action="store_true")
    a = sub.add_parser("attack", help="run the hostile clients against 127.0.0.1:PORT and print what they did")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--seconds", type=float, default=30.0)
    a.add_argument("--trickling", type=int, default=20)
    a.add_argument("--idle", type=int, default=200)
    a.add_argument("--period", type=float, default=2.0, help="seconds between two bytes of a trickling client")
    a.add_argument("--guess-rate", type=float, default=0.0, help="wrong-password requests a second")
    a.add_argument("--user", default="prometheus")
    a.add_argument("--tls", action="store_true")
    a.add_argument("--start-at", type=float, default=0.0, help="epoch seconds the guessing schedule starts at")
    a.add_argument("--guess-period", type=float, default=0.0,
                   help="alternate quiet and guessing windows of this many seconds (0: guess all along)")
    args = p.parse_args(argv)
    if args.cmd == "bench":
        return run_bench(args.model, args.seconds, args.threads, args.json, not args.no_progress)
    counts = attack("127.0.0.1", args.port, args.seconds, args.trickling, args.idle, args.period, args.guess_rate,
                    args.user, args.tls, args.start_at, args.guess_period)
    print(f"(clients: {counts['trickling']['connections']} trickling and {counts['idle']['connections']} idle "
          f"connections made; guesses answered {counts['guesses']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
