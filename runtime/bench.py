"""``runtime bench``: latency, throughput and memory figures of the real pipeline (not a test).

    runtime bench [--model awc.onnx] [--duration 20] [--stage-ticks 500] [--throughput-s 5] [--json F]

Three measurements on synthetic sensor data of realistic size (LiDAR 1,200 points, mmWave 20,
10 CSI packets per 100 ms):

1. per-tick stage latency (p50/p99): decode (wire), sync, preprocess (features + input health),
   inference (pose + 16 coalitions, one call), contributions, degradation, metrics, publish;
2. maximum sustained fused ticks per second: decode + feed + tick back to back, one thread;
3. end to end at 10 Hz over real ZeroMQ sockets: four sensor streams from a publisher into the
   full runtime (``runtime.serve.Runtime``, wall clock), latency = capture time of the newest used
   sample to the pose message leaving (``latency_ns`` of the pose stream), and resident memory
   (RSS) sampled every second over ``--duration`` (use ``--duration 600`` for the 10-minute soak).

Targets (small preset, 2-core CPU, live Shapley): p99 end to end <= 30 ms at 10 Hz; >= 100 fused
ticks/s; RSS <= 500 MB and flat.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zmq
from tqdm import tqdm

from exporters.metrics import RuntimeMetrics
from runtime.config import RuntimeConfig, free_loopback_port
from runtime.inference import OnnxPoseModel
from runtime.loop import Loop
from runtime.outputs import MetricsOutput, Outputs
from runtime.pipeline import Pipeline
from sensors.core import keys as keyfiles
from sensors.core import schema, wire
from sensors.core.cli_util import add_report_arguments, add_set_argument, emit_report
from sensors.core.pose_record import PoseRecord

log = logging.getLogger(__name__)

PERIOD_NS = schema.FRAME_PERIOD_NS
DEFAULT_MODEL = "runs/demo/awc.onnx"
TARGETS = {"p99_end_to_end_ms": 30.0, "ticks_per_s": 100.0, "rss_mb": 500.0}


def synthetic_messages(k: int, t_ns: int, rng: np.random.Generator, lidar_points: int = 1200,
                       mmwave_points: int = 20) -> list[wire.Message]:
    """The four sensor messages of frame k at capture time t_ns (realistic sizes, random values)."""
    a = {
        "rgb": {"kpts": rng.uniform([200, 100], [440, 400], size=(schema.N_KEYPOINTS, 2)).astype(np.float32)},
        "lidar": {"points": rng.normal([3.0, 0, 0], 0.4, size=(lidar_points, 3)).astype(np.float32)},
        "mmwave": {"points": rng.normal([3.0, 0, 0, 20, 0], 0.3, size=(mmwave_points, 5)).astype(np.float32)},
        "wifi": {"amp": rng.normal(40, 3, size=(10, 3, 114)).astype(np.float32),
                 "phase": rng.uniform(-np.pi, np.pi, size=(10, 3, 114)).astype(np.float32)},
    }
    extra = {"wifi": {"period_ns": PERIOD_NS // 10}}
    return [wire.Message(m, f"bench-{m}", k, t_ns, t_ns, a[m], extra.get(m, {})) for m in schema.MODALITIES if m in a]


@contextmanager
def running_station(cfg: RuntimeConfig, model: OnnxPoseModel, keys_dir: str | None = None):
    """The full runtime, as `runtime serve` builds it, looping on a thread, with a sensor PUB and a
    pose SUB connected to it (CurveZMQ with ``keys_dir``: clients ``bench`` and ``viewer``);
    yields (runtime, sensor, poses) and stops and closes them all on the way out."""
    from runtime.serve import Runtime

    ctx = zmq.Context()
    rt = Runtime(cfg, model).start()
    loop = threading.Thread(target=rt.run, name="awc-loop", daemon=True)
    loop.start()
    sensor, poses = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        if keys_dir:
            server = Path(keys_dir) / "server.key"
            keyfiles.CurveClient.load(Path(keys_dir) / "clients" / "bench.key_secret", server).apply(sensor)
            keyfiles.CurveClient.load(Path(keys_dir) / "clients" / "viewer.key_secret", server).apply(poses)
        sensor.connect(cfg.inputs.endpoints[0])
        poses.setsockopt(zmq.SUBSCRIBE, schema.POSE_TOPIC.encode())
        poses.connect(cfg.output.endpoint)
        time.sleep(0.5)   # subscriptions settle (ZeroMQ slow joiner)
        yield rt, sensor, poses
    finally:
        rt.stop_event.set()
        loop.join(timeout=5)
        rt.close()
        sensor.close(0)
        poses.close(0)
        ctx.term()


def send_frame(sensor, poses, k: int, deadline: float, rng: np.random.Generator) -> list[PoseRecord]:
    """Send frame k's four synthetic messages (each stamped as it leaves), then collect the pose
    messages that arrive until ``deadline`` (monotonic seconds): one period of a paced bench."""
    for m in synthetic_messages(k, time.time_ns(), rng):
        m.sent_ns = time.time_ns()
        sensor.send_multipart(wire.encode(m))
    records = []
    while (wait := deadline - time.monotonic()) > 0:
        if poses.poll(max(1, int(wait * 1000))):
            records.append(PoseRecord.from_message(wire.decode(poses.recv_multipart())))
    return records


def rss_mb() -> float:
    """Current resident set size (MB) from /proc, else the peak from getrusage."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else float("nan")


def _summary_ms(seconds) -> dict[str, float]:
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"p50_ms": round(_pct(ms, 50), 3), "p99_ms": round(_pct(ms, 99), 3), "mean_ms": round(float(ms.mean()), 3)}


def bench_loop(model: OnnxPoseModel, cfg: RuntimeConfig) -> Loop:
    """The loop as ``runtime serve`` builds it, with the metrics as its only output (no sockets)."""
    return Loop(cfg, Pipeline(cfg, model), Outputs([], MetricsOutput(RuntimeMetrics(), cfg, model)))


def bench_stages(model: OnnxPoseModel, cfg: RuntimeConfig, n_ticks: int = 500, seed: int = 0,
                 progress: bool = True) -> dict:
    """Per-stage latency over ``n_ticks`` ticks driven directly (no sockets, no waiting)."""
    rng = np.random.default_rng(seed)
    pipe = bench_loop(model, cfg)
    frames = [[wire.encode(m) for m in synthetic_messages(k, (k + 1) * PERIOD_NS, rng)] for k in range(50)]
    stages: dict[str, list[float]] = {"decode": []}
    t0 = 1_700_000_000 * 10**9
    for k in tqdm(range(n_ticks), desc="stages", unit="tick", leave=False, disable=not progress):
        t_ns = t0 + k * PERIOD_NS
        start = time.perf_counter()
        msgs = [wire.decode(f) for f in frames[k % len(frames)]]
        stages["decode"].append(time.perf_counter() - start)
        for m in msgs:
            m.seq, m.t_ns = k, t_ns
            pipe.feed(m)
        result = pipe.tick(t_ns)
        for name, seconds in result.durations.items():
            stages.setdefault(name, []).append(seconds)
    total = [sum(v[i] for v in stages.values()) for i in range(n_ticks)]
    out = {name: _summary_ms(v) for name, v in stages.items()}
    out["total"] = _summary_ms(total)
    return out


def bench_throughput(model: OnnxPoseModel, cfg: RuntimeConfig, seconds: float = 5.0, seed: int = 1) -> dict:
    """Fused ticks per second, decode + feed + tick back to back on one thread."""
    rng = np.random.default_rng(seed)
    pipe = bench_loop(model, cfg)
    t0 = 1_700_000_000 * 10**9
    frames = [[wire.encode(m) for m in synthetic_messages(k, t0, rng)] for k in range(50)]
    k, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t_ns = t0 + k * PERIOD_NS
        for f in frames[k % len(frames)]:
            m = wire.decode(f)
            m.seq, m.t_ns = k, t_ns
            pipe.feed(m)
        pipe.tick(t_ns)
        k += 1
    elapsed = time.perf_counter() - start
    fused = pipe.outputs.metrics.registry.get_sample_value("awc_ticks_total", {"outcome": "fused"})
    return {"ticks": k, "fused": int(fused), "seconds": round(elapsed, 2), "ticks_per_s": round(k / elapsed, 1)}


def bench_end_to_end(model: OnnxPoseModel, cfg: RuntimeConfig, duration_s: float = 20.0, seed: int = 2,
                     keys_dir: str | None = None, progress: bool = True) -> dict:
    """Real sockets at 10 Hz: sensor PUB -> runtime -> pose SUB; latency and RSS over the run.
    With ``keys_dir`` (clients ``bench`` and ``viewer``) both sockets run CurveZMQ."""
    rng = np.random.default_rng(seed)
    latencies, rss, received = [], [], 0
    k = 0
    with running_station(cfg, model, keys_dir) as (_, sensor, poses), \
            tqdm(total=int(duration_s), desc="end to end", unit="s", leave=False, disable=not progress) as bar:
        start = time.monotonic()
        next_rss = start
        while time.monotonic() - start < duration_s:
            records = send_frame(sensor, poses, k, start + (k + 1) * PERIOD_NS / 1e9, rng)
            k += 1
            latencies += [r.latency_ns / 1e9 for r in records]
            received += len(records)
            if time.monotonic() >= next_rss:
                rss.append(round(rss_mb(), 1))
                next_rss += 1.0
                bar.update(1)
    warm = rss[min(len(rss) - 1, 5):] if rss else []
    return {"duration_s": duration_s, "frames_sent": k, "poses_received": received, **_summary_ms(latencies),
            "rss_mb": {"start": rss[0] if rss else None, "after_warmup": warm[0] if warm else None,
                       "end": rss[-1] if rss else None, "max": max(rss) if rss else None,
                       "growth_after_warmup_mb": round(warm[-1] - warm[0], 1) if warm else None,
                       "samples": rss}}


def bench_config(overrides: list[str] | None = None) -> RuntimeConfig:
    """Default config on free loopback ports, metrics port chosen by the OS."""
    base = [f"inputs.endpoints=[tcp://127.0.0.1:{free_loopback_port()}]", f"output.endpoint=tcp://127.0.0.1:{free_loopback_port()}",
            "metrics.port=0"]
    if not any(o.startswith("security.") for o in overrides or []):
        base.append("security.plaintext=true")   # loopback only; bench_curve_cost measures CurveZMQ
    return RuntimeConfig.load(None, base + list(overrides or []))


def _transport_latencies(kd: Path | None, frames: list[list[bytes]], n: int, gap_s: float) -> list[float]:
    """One-way latency (s) of ``n`` multipart messages PUB -> SUB over loopback TCP, as the runtime's
    ingest receives them (SUB = CurveZMQ server with the ZAP allow-list when ``kd`` is given)."""
    ctx = zmq.Context()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.XPUB)   # XPUB: sees the subscription arrive
    auth = None
    if kd is not None:
        server = keyfiles.CurveServer.from_dir(kd, "sensor")
        auth = server.start_authenticator(ctx)
        server.apply(sub)
        keyfiles.CurveClient.load(kd / "clients" / "bench.key_secret", kd / "server.key").apply(pub)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    pub.connect(f"tcp://127.0.0.1:{port}")
    out = []
    deadline = time.monotonic() + 5.0
    while not pub.poll(10):   # handshake done and subscription arrived (the SUB attaches when polled)
        sub.poll(10)
        if time.monotonic() > deadline:
            raise RuntimeError("transport bench: no subscription within 5 s")
    pub.recv()
    for i in range(n):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        pub.send_multipart(f, copy=False)
        if not sub.poll(2000):
            break
        sub.recv_multipart()
        out.append(time.perf_counter() - t0)
        time.sleep(gap_s)
    pub.close(0)
    sub.close(0)
    if auth is not None:
        auth.stop()
    ctx.term()
    return out


def bench_curve_cost(model: OnnxPoseModel, cfg: RuntimeConfig, duration_s: float, progress: bool = True) -> dict:
    """The latency cost of CurveZMQ: (1) transport alone, one sensor message at a time over loopback
    TCP, plaintext and CurveZMQ alternated in rounds so that load from other processes hits both
    alike; (2) end to end at 10 Hz, plaintext then CurveZMQ on both sockets (noisier)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="awc-bench-keys-") as tmp:
        kd = Path(tmp) / "keys"
        keyfiles.init(kd)
        keyfiles.add(kd, "bench", "sensor", keyfiles.make_scope("bench", ["all"]))
        keyfiles.add(kd, "viewer", "viewer")
        rng = np.random.default_rng(5)
        transport = {}
        for m in synthetic_messages(0, 1_700_000_000 * 10**9, rng):
            frames = [wire.encode(m)]
            lat: dict[str, list[float]] = {"plaintext": [], "curve": []}
            for _ in range(3):
                lat["plaintext"] += _transport_latencies(None, frames, 300, 0.0005)
                lat["curve"] += _transport_latencies(kd, frames, 300, 0.0005)
            row = {k: _summary_ms(v) for k, v in lat.items()}
            transport[m.topic] = {"bytes": sum(len(f) for f in frames[0]), **row,
                                  "p50_cost_ms": round(row["curve"]["p50_ms"] - row["plaintext"]["p50_ms"], 3)}
        out["transport"] = transport
        for name, overrides, kdir in (("plaintext", ["security.plaintext=true"], None),
                                      ("curve", [f"security.keys_dir={kd}"], str(kd))):
            c = bench_config([*_plain_overrides(cfg), *overrides])
            r = bench_end_to_end(model, c, duration_s, keys_dir=kdir, progress=progress)
            out[name] = {k: r[k] for k in ("p50_ms", "p99_ms", "frames_sent", "poses_received")}
    out["p50_cost_ms"] = round(out["curve"]["p50_ms"] - out["plaintext"]["p50_ms"], 3)
    out["p99_cost_ms"] = round(out["curve"]["p99_ms"] - out["plaintext"]["p99_ms"], 3)
    return out


def _plain_overrides(cfg: RuntimeConfig) -> list[str]:
    return [f"inference.intra_op_threads={cfg.inference.intra_op_threads}"]


def run_bench(model_path: str, duration_s: float = 20.0, stage_ticks: int = 500, throughput_s: float = 5.0,
              threads: int = 2, overrides: list[str] | None = None, curve_s: float = 0.0,
              progress: bool = True) -> dict:
    cfg = bench_config([f"inference.intra_op_threads={threads}", *(overrides or [])])
    model = OnnxPoseModel.load(model_path, provider=cfg.inference.provider, intra_op_threads=threads)
    report = {"model": str(model_path), "provider": model.provider, "threads": threads,
              "fusion": model.metadata.fusion, "lidar_cap": model.metadata.lidar_cap,
              "cpu_count": os.cpu_count(), "load_avg_1m_start": round(os.getloadavg()[0], 2), "targets": TARGETS}
    report["stages"] = bench_stages(model, cfg, stage_ticks, progress=progress)
    report["throughput"] = bench_throughput(model, cfg, throughput_s)
    report["end_to_end_10hz"] = bench_end_to_end(model, cfg, duration_s, progress=progress)
    if curve_s > 0:
        report["curve_cost"] = bench_curve_cost(model, cfg, curve_s, progress=progress)
    report["load_avg_1m_end"] = round(os.getloadavg()[0], 2)   # other work on the machine skews the figures
    e2e, rss = report["end_to_end_10hz"], report["end_to_end_10hz"]["rss_mb"]
    report["meets"] = {"p99_end_to_end_ms": e2e["p99_ms"] <= TARGETS["p99_end_to_end_ms"],
                       "ticks_per_s": report["throughput"]["ticks_per_s"] >= TARGETS["ticks_per_s"],
                       "rss_mb": (rss["max"] or 0) <= TARGETS["rss_mb"]}
    return report


def format_report(r: dict) -> str:
    lines = [f"model {r['model']} ({r['fusion']}, lidar cap {r['lidar_cap']}) on {r['provider']}, "
             f"{r['threads']} threads, {r['cpu_count']} CPUs, load average {r.get('load_avg_1m_start')} -> "
             f"{r.get('load_avg_1m_end')}", "", f"{'stage':<14}{'p50 ms':>9}{'p99 ms':>9}"]
    for name, s in r["stages"].items():
        lines.append(f"{name:<14}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}")
    t, e = r["throughput"], r["end_to_end_10hz"]
    lines += ["", f"sustained fused ticks/s   {t['ticks_per_s']:.1f}   (target >= {TARGETS['ticks_per_s']:.0f})",
              f"end to end at 10 Hz       p50 {e['p50_ms']:.2f} ms  p99 {e['p99_ms']:.2f} ms   "
              f"(target p99 <= {TARGETS['p99_end_to_end_ms']:.0f} ms; {e['poses_received']}/{e['frames_sent']} poses)",
              f"RSS                       start {e['rss_mb']['start']} MB, end {e['rss_mb']['end']} MB, max "
              f"{e['rss_mb']['max']} MB, growth after warm-up {e['rss_mb']['growth_after_warmup_mb']} MB "
              f"(target <= {TARGETS['rss_mb']:.0f} MB, flat)"]
    if "curve_cost" in r:
        c = r["curve_cost"]
        lines += ["", "CurveZMQ cost, transport alone (one message PUB -> SUB over loopback TCP, 900 each, rounds "
                  "alternated):", f"  {'topic':<8}{'bytes':>7}{'plain p50':>11}{'curve p50':>11}{'cost':>9}"
                  f"{'plain p99':>11}{'curve p99':>11}"]
        for topic, t in c["transport"].items():
            lines.append(f"  {topic:<8}{t['bytes']:>7}{t['plaintext']['p50_ms']:>9.3f}ms{t['curve']['p50_ms']:>9.3f}ms"
                         f"{t['p50_cost_ms']:>+7.3f}ms{t['plaintext']['p99_ms']:>9.3f}ms{t['curve']['p99_ms']:>9.3f}ms")
        lines += [
                  "CurveZMQ cost, end to end at 10 Hz (sensor PUB -> runtime -> pose SUB, both sockets secured):",
                  f"  plaintext  p50 {c['plaintext']['p50_ms']:.2f} ms  p99 {c['plaintext']['p99_ms']:.2f} ms",
                  f"  CurveZMQ   p50 {c['curve']['p50_ms']:.2f} ms  p99 {c['curve']['p99_ms']:.2f} ms",
                  f"  cost       p50 {c['p50_cost_ms']:+.2f} ms  p99 {c['p99_cost_ms']:+.2f} ms"]
    return "\n".join(lines)


STAGE_ROWS = {"decode": "decode (4 messages)", "sync": "sync", "preprocess": "preprocess (features + input health)",
              "inference": "inference (pose + 16 coalitions)", "contributions": "contributions (window 30)",
              "degradation": "degradation", "rehab": "rehab (joint angles, repetitions, trust)",
              "publish": "publish (no socket in this measurement)",
              "metrics": "metrics", "total": "total"}
FLAT_MB = 5.0   # growth of the resident memory after warm-up that still counts as flat


def markdown(r: dict) -> str:
    """README's two tables of a report (``--report``): per-stage latency, and the figures against
    their targets."""
    lines = ["| stage (per tick) | p50 ms | p99 ms |", "|---|---|---|"]
    for name, s in r["stages"].items():
        lines.append(f"| {STAGE_ROWS.get(name, name)} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |")
    e, t, rss = r["end_to_end_10hz"], r["throughput"], r["end_to_end_10hz"]["rss_mb"]
    flat = rss["growth_after_warmup_mb"] <= FLAT_MB
    lines += ["", "| figure | measured | target |", "|---|---|---|",
              f"| end to end at 10 Hz (newest capture used → pose sent), p50 / p99 | {e['p50_ms']:.1f} / "
              f"{e['p99_ms']:.1f} ms | p99 ≤ {TARGETS['p99_end_to_end_ms']:.0f} ms: "
              f"{'met' if r['meets']['p99_end_to_end_ms'] else 'NOT met'} |",
              f"| sustained fused ticks/s, one thread | {t['ticks_per_s']:.0f} | ≥ {TARGETS['ticks_per_s']:.0f}: "
              f"{'met' if r['meets']['ticks_per_s'] else 'NOT met'} |",
              f"| resident memory, {e.get('duration_s', 20):.0f} s run | {rss['start']:.1f} → {rss['max']:.1f} MB, "
              f"{rss['growth_after_warmup_mb']:+.1f} MB after warm-up | ≤ {TARGETS['rss_mb']:.0f} MB, flat: "
              f"{'met' if r['meets']['rss_mb'] and flat else 'NOT met'} |"]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"exported ONNX model (default {DEFAULT_MODEL}, the one `make demo` exports)")
    p.add_argument("--duration", type=float, default=20.0, help="end-to-end run at 10 Hz, seconds (soak: 600)")
    p.add_argument("--stage-ticks", type=int, default=500, help="ticks for the per-stage latency figures")
    p.add_argument("--throughput-s", type=float, default=5.0, help="seconds of back-to-back ticks")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--curve-s", type=float, default=0.0, metavar="S",
                   help="also measure the CurveZMQ cost: S seconds end to end plaintext, then S with CurveZMQ")
    add_set_argument(p, "sync.rate_hz=20")
    add_report_arguments(p)
    p.add_argument("--markdown", metavar="REPORT", default=None,
                   help="measure nothing: print README's tables from a --report file")


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    if not Path(args.model).is_file():
        log.error("model %s not found: pass --model awc.onnx (e.g. from `make demo`, or `training export "
                  "--checkpoint RUN/best.pt --out awc.onnx`)", args.model)
        return 2
    report = run_bench(args.model, args.duration, args.stage_ticks, args.throughput_s, args.threads, args.set,
                       curve_s=args.curve_s, progress=not args.no_progress)
    emit_report(args, report, format_report(report))
    return 0
