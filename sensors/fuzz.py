"""``sensors fuzz``: hostile traffic against a live runtime, with the accounting checked.

    sensors fuzz --serve-model awc.onnx --messages 100000 [--secure] [--seed 0]
    sensors fuzz --connect tcp://HOST:5555 --metrics http://HOST:9108 --pose tcp://HOST:5556 ...

Sends ``--messages`` fuzz messages, a third each of

* **random**: 1-6 frames of random bytes (and random topics);
* **mutated**: a valid message of a random topic with one thing changed: any header value replaced by
  a hostile value (wrong types, 2**64-1, NaN, nested maps, ...), an array entry's name/dtype/shape
  replaced, buffer bytes flipped, truncated or extended, frames dropped or duplicated, the topic
  swapped;
* **boundary**: the attacks a careful client could mount with well-formed-looking messages
  (``period_ns`` 2**63, a list as array name, points at 3e38, ``seq`` 2**64-1, capture times far
  in the future, ``v: 1.0``, 65,537 points, 1,000 CSI packets with a huge period, ...),

beside a valid stream of all four modalities in real time (10 Hz frames, 100 Hz CSI) sent by its own
thread on its own socket, so the runtime keeps ticking. The fuzzing thread runs at a lower priority
(``--nice``, default 10): on a network the attacker has its own CPU, here it shares the runtime's. The runtime is either spawned here (``--serve-model``, plaintext on
loopback or CurveZMQ with a fresh key directory with ``--secure``) or reached at the given
endpoints. At the end it prints: crashes (the spawned runtime exited), readiness failures,
messages sent vs received + counted drops (from /metrics, per reason), the sequence-gap losses the
spoofed ``seq`` values claimed (bounded), the runtime's RSS (start, max, end) and the pose rate
during the fuzz (poses per second on the pose stream, min and mean). Exit code 0 only when there
were no crashes and no readiness failures, the accounting balances and the pose rate held.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from sensors.core import keys, schema
from sensors.core.cli_util import add_report_arguments, emit_report
from sensors.fuzz_messages import boundary_message, mutated_message, random_message, valid_frame


@dataclass
class FuzzStats:
    sent: dict[str, int] = field(default_factory=dict)        # kind -> messages sent
    timeouts: int = 0                                          # not taken by the runtime (not sent)

    def add(self, kind: str) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.sent.values())


# ---------------------------------------------------------------------------------- the live runtime
def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(name, sorted label items): value}."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not m or line.startswith("#"):
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(3) or "")))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def _sum(metrics: dict, name: str, **match) -> float:
    return sum(v for (n, labels), v in metrics.items()
               if n == name and all((k, val) in labels for k, val in match.items()))


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_runtime(model: str, secure: bool, workdir: Path, log_file) -> tuple[subprocess.Popen, dict]:
    """``runtime serve`` on free loopback ports (a fresh key directory with ``secure``)."""
    ports = {k: _free_port() for k in ("input", "output", "metrics")}
    ep = {"input": f"tcp://127.0.0.1:{ports['input']}", "pose": f"tcp://127.0.0.1:{ports['output']}",
          "metrics": f"http://127.0.0.1:{ports['metrics']}"}
    cmd = [sys.executable, "-m", "runtime", "serve", "--model", model, "--input", ep["input"],
           "--output", ep["pose"], "--metrics-port", str(ports["metrics"]), "--threads", "1"]
    if secure:
        kd = workdir / "keys"
        keys.init(kd)
        keys.add(kd, "fuzz", "sensor", keys.make_scope("fuzz", ["all"], ground_truth=True))
        keys.add(kd, "viewer", "viewer")
        cmd += ["--keys", str(kd)]
        ep["keys"] = str(kd)
    else:
        cmd += ["--plaintext"]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    return proc, ep


class _Background(threading.Thread):
    """The valid stream of one station in real time, on its own socket: rgb, lidar, mmwave every
    100 ms and CSI packets at 100 Hz (sent 10 at a time)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: keys.CurveClient | None, seed: int):
        super().__init__(name="fuzz-background", daemon=True)
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)
        if curve is not None:
            curve.apply(self.sock)
        self.sock.connect(endpoint)
        self.rng = np.random.default_rng(seed + 1)
        self.stats = FuzzStats()
        self.halt = threading.Event()
        self.go = threading.Event()   # cleared: paused (while the counters are read)
        self.go.set()

    def pause(self, settle_s: float) -> None:
        """Stop sending and give the runtime ``settle_s`` to take what was sent."""
        self.go.clear()
        time.sleep(settle_s)

    def connected(self, timeout_s: float) -> bool:
        return bool(self.sock.poll(int(timeout_s * 1000)))

    def run(self) -> None:
        k, t0 = 0, time.monotonic()
        while not self.halt.is_set():
            if not self.go.is_set():
                self.go.wait(0.1)
                k, t0 = 0, time.monotonic()
                continue
            for frames in valid_frame(self.rng, time.time_ns(), k):
                _send(self.sock, frames, "valid", self.stats)
            k += 1
            self.halt.wait(max(0.0, t0 + k * 0.1 - time.monotonic()))
        self.sock.close(linger=1000)


class _PoseCounter(threading.Thread):
    """Poses received on the pose stream, per wall-clock second."""

    def __init__(self, ctx: zmq.Context, endpoint: str, viewer: keys.CurveClient | None):
        super().__init__(name="fuzz-poses", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        if viewer is not None:
            viewer.apply(self.sock)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.per_second: dict[int, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.is_set():
            if self.sock.poll(50):
                self.sock.recv_multipart()
                s = int(time.monotonic() - t0)
                self.per_second[s] = self.per_second.get(s, 0) + 1
        self.sock.close(linger=0)

    def counts(self) -> list[int]:
        if not self.per_second:
            return []
        return [self.per_second.get(s, 0) for s in range(max(self.per_second) + 1)]


def run_fuzz(ep: dict, n_messages: int, seed: int, rate: float, proc: subprocess.Popen | None = None,
             curve: keys.CurveClient | None = None, viewer: keys.CurveClient | None = None,
             progress: bool = True, nice: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.setsockopt(zmq.SNDTIMEO, 10_000)
    if curve is not None:
        curve.apply(pub)
    pub.connect(ep["input"])
    background = _Background(ctx, ep["input"], curve, seed)
    poses = _PoseCounter(ctx, ep["pose"], viewer)
    if not (pub.poll(30_000) and background.connected(30)):
        raise SystemExit(f"no runtime subscribed at {ep['input']} within 30 s (wrong keys?)")
    poses.start()
    background.start()   # ready = poses flowing: the valid stream first
    deadline = time.monotonic() + 60
    while not _ready(ep["metrics"]):
        time.sleep(0.1)
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise SystemExit("the runtime did not become ready (no pose within 60 s)")
    # Counters read with the valid stream paused, so that sent and received cover the same messages.
    background.pause(1.0)
    before = scrape(ep["metrics"] + "/metrics")
    sent_before = background.stats.total
    background.go.set()
    poses_before = len(poses.counts())
    stats = FuzzStats()
    rss, not_ready = [before.get(("process_resident_memory_bytes", ()), math.nan)], 0
    if nice > 0:
        os.nice(nice)   # this thread only (Linux): the valid sensors and the runtime keep their priority
    time.sleep(1.0)    # the valid stream alone for a second
    t0 = last_second = time.monotonic()
    makers = (lambda: random_message(rng), lambda: mutated_message(rng, time.time_ns()),
              lambda: boundary_message(rng, time.time_ns()))
    kinds = ("random", "mutated", "boundary")
    for i in range(n_messages):
        j = i % 3
        _send(pub, makers[j](), kinds[j], stats)
        if rate > 0 and i % 100 == 0:   # pace the fuzz at `rate` messages/s
            ahead = t0 + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        now = time.monotonic()
        if now - last_second >= 1.0:
            last_second = now
            m = scrape(ep["metrics"] + "/metrics")
            rss.append(m.get(("process_resident_memory_bytes", ()), math.nan))
            not_ready += 0 if _ready(ep["metrics"]) else 1
            if progress:
                print(f"\r{i + 1}/{n_messages} fuzz messages, RSS {rss[-1] / 1e6:.0f} MB", end="", file=sys.stderr,
                      flush=True)
    fuzz_s = time.monotonic() - t0
    time.sleep(1.0)
    background.halt.set()
    background.join(15)
    time.sleep(1.5)   # let the runtime drain its queues
    poses.halt.set()
    poses.join(5)
    after = scrape(ep["metrics"] + "/metrics")
    rss.append(after.get(("process_resident_memory_bytes", ()), math.nan))
    pub.close(linger=0)
    ctx.term()
    if progress:
        print(file=sys.stderr)

    def delta(name, **match):
        return _sum(after, name, **match) - _sum(before, name, **match)

    reasons = {r: int(delta("awc_messages_dropped_total", reason=r)) for r in schema.DROP_REASONS}
    gaps = reasons.pop("sequence_gap")
    received = int(delta("awc_messages_received_total"))
    dropped = sum(reasons.values())
    sent = stats.total + background.stats.total - sent_before
    # whole seconds while the fuzz ran (the valid stream alone runs 1 s before and after it)
    counts = poses.counts()[poses_before + 2:poses_before + 2 + int(fuzz_s)]
    crashed = proc is not None and proc.poll() is not None
    return {
        "sent": sent, "sent_by_kind": {**stats.sent, "valid": background.stats.total - sent_before},
        "not_taken_by_runtime": stats.timeouts + background.stats.timeouts,
        "received": received, "dropped": dropped, "dropped_by_reason": {k: v for k, v in reasons.items() if v},
        "balanced": sent == received + dropped,
        "sequence_gap_claimed": gaps,
        "crashes": int(crashed), "exit_code": None if proc is None else proc.poll(), "not_ready_seconds": not_ready,
        "tick_errors": int(delta("awc_tick_errors_total")),
        "ticks": {o: int(delta("awc_ticks_total", outcome=o)) for o in ("fused", "partial", "empty", "invalid",
                                                                       "dropped")},
        "rss_mb": {"start": rss[0] / 1e6, "max": np.nanmax(rss) / 1e6, "end": rss[-1] / 1e6,
                   "every_10s": [round(r / 1e6, 1) for r in rss[::10]]},
        "pose_rate_hz": {"min": min(counts) if counts else 0, "mean": float(np.mean(counts)) if counts else 0.0},
        "pose_counts_per_s": counts,
        "fuzz_s": fuzz_s, "fuzz_rate": stats.total / fuzz_s if fuzz_s else 0.0,
    }


def _send(pub, frames, kind: str, stats: FuzzStats) -> None:
    try:
        pub.send_multipart(frames)
    except zmq.Again:
        stats.timeouts += 1
        return
    stats.add(kind)


def add_arguments(p) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serve-model", default=None, metavar="ONNX", help="spawn `runtime serve` with this model")
    where.add_argument("--connect", default=None, metavar="ENDPOINT", help="sensor endpoint of a running runtime")
    p.add_argument("--metrics", default="http://127.0.0.1:9108", help="with --connect: the runtime's HTTP base URL")
    p.add_argument("--pose", default="tcp://127.0.0.1:5556", help="with --connect: the pose stream endpoint")
    p.add_argument("--secure", action="store_true", help="with --serve-model: CurveZMQ with a fresh key directory")
    p.add_argument("--keys", default=None, metavar="DIR", help="with --connect: key directory (clients fuzz, viewer)")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=2000.0, help="fuzz messages per second (0 = as fast as possible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nice", type=int, default=10,
                   help="lower the fuzzing thread's priority by N (not the valid sensor stream's, not the runtime's), "
                        "so the attacker does not take their CPU on a shared machine (default 10; 0 = off)")
    add_report_arguments(p)
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    if args.messages < 1:
        raise SystemExit("--messages must be >= 1")
    with tempfile.TemporaryDirectory(prefix="awc-fuzz-") as tmp:
        proc = None
        log_path = Path(tmp) / "runtime.log"
        with open(log_path, "w") as log_file:
            if args.serve_model:
                proc, ep = start_runtime(args.serve_model, args.secure, Path(tmp), log_file)
                key_dir = ep.get("keys")
            else:
                ep = {"input": args.connect, "pose": args.pose, "metrics": args.metrics.rstrip("/")}
                key_dir = args.keys
            curve = viewer = None
            if key_dir:
                root = Path(key_dir)
                curve = keys.CurveClient.load(root / "clients" / "fuzz.key_secret", root / "server.key")
                viewer = keys.CurveClient.load(root / "clients" / "viewer.key_secret", root / "server.key")
            try:
                report = run_fuzz(ep, args.messages, args.seed, args.rate, proc, curve, viewer,
                                  progress=not args.no_progress, nice=args.nice)
            except SystemExit:
                if proc is not None:   # say why: the spawned runtime's last log lines
                    log_file.flush()
                    print("\n".join(log_path.read_text().splitlines()[-15:]), file=sys.stderr)
                raise
            finally:
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
        if proc is not None:
            report["exit_code_after_sigterm"] = proc.returncode
            tail = log_path.read_text().splitlines()
            report["runtime_log_errors"] = sum(("ERROR" in line or "CRITICAL" in line) for line in tail)
    emit_report(args, report, json.dumps(report, indent=2, default=float))
    ok = (report["crashes"] == 0 and report["not_ready_seconds"] == 0 and report["balanced"]
          and report["pose_rate_hz"]["min"] >= 9)
    print("fuzz: " + ("OK" if ok else "FAILED") + f" ({report['sent']} sent = {report['received']} received + "
          f"{report['dropped']} counted drops: {'yes' if report['balanced'] else 'NO'}; pose rate min "
          f"{report['pose_rate_hz']['min']} Hz; RSS max {report['rss_mb']['max']:.0f} MB)")
    return 0 if ok else 1
