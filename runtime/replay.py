"""``runtime replay``: offline validation through the REAL pipeline.

    runtime replay --model awc.onnx --data DIR --protocol P1 --split S1 [--subset test] [--rate 0]
                   [--fault lidar:stop@5 ...] [--report out.json] [--config F] [--set k=v ...]

1. starts the runtime in-process exactly as ``runtime serve`` assembles it (``runtime.serve.Runtime``)
   on free loopback ports (data clock when ``--rate 0``, i.e. as fast as possible; wall clock otherwise);
2. subscribes to its pose stream;
3. replays the dataset into it over ZeroMQ with ``sensors.replay`` (ground truth on the ``gt``
   topic, optional injected faults);
4. reports MPJPE / PA-MPJPE (mm) of the streamed poses against the ground truth the runtime used at
   each tick (overall and per action), contribution shares (label-free and with labels),
   degradation events, throughput, latency, message accounting, and for each injected fault whether
   and how many ticks after its start the faulted modality was flagged (and whether others were).

Prints a table and writes JSON (``--report``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from runtime.config import RuntimeConfig, free_loopback_port
from runtime.inference import ModelError
from runtime.serve import Runtime, add_config_arguments, config_from_args, load_model
from sensors import mmfi
from sensors.core import keys as keyfiles
from sensors.core import posemath, schema, wire
from sensors.core.cli_util import add_list_argument, add_report_arguments, emit_report, require_packages
from sensors.core.pose_record import PoseRecord
from sensors.faults import parse_fault
from sensors.replay import ReplayError, replay

log = logging.getLogger(__name__)

REPLAY_QUEUE_SIZE = 200_000   # messages the ingest may hold when replaying as fast as possible


class PoseCollector(threading.Thread):
    """SUB on the pose stream; keeps every decoded pose message (bounded by ``max_messages``)."""

    def __init__(self, endpoint: str, max_messages: int = 2_000_000, curve: keyfiles.CurveClient | None = None):
        super().__init__(name="awc-pose-collector", daemon=True)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.setsockopt(zmq.SUBSCRIBE, schema.POSE_TOPIC.encode())
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.connect(endpoint)
        self._halt = threading.Event()
        self.max_messages = max_messages
        self.poses: list[PoseRecord] = []
        self.invalid = 0

    def run(self) -> None:
        while not self._halt.is_set():
            if not self._sock.poll(50):
                continue
            frames = self._sock.recv_multipart(copy=True)
            try:
                msg = wire.decode(frames)
            except wire.WireError as err:
                self.invalid += 1
                log.warning("invalid pose message: %s", err)
                continue
            if len(self.poses) < self.max_messages:
                self.poses.append(PoseRecord.from_message(msg))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self._sock.close(0)
        self._ctx.term()


# ---------------------------------------------------------------------------------------------
# Pure evaluation of a collected pose stream
# ---------------------------------------------------------------------------------------------
@dataclass
class GroundTruthIndex:
    """Ground-truth frame bytes -> (sequence, frame), to name the action of each tick's truth."""

    table: dict[bytes, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, root, protocol: str, split: str, subset: str) -> GroundTruthIndex:
        ds = mmfi.MMFiDataset(root, protocol, split, subset)
        table = {}
        for key in ds.keys:
            gt = mmfi.read_ground_truth(key.path(root)).astype(np.float32)
            for f in range(gt.shape[0]):
                table.setdefault(np.ascontiguousarray(gt[f]).tobytes(), (str(key), f))
        return cls(table)

    def lookup(self, joints: np.ndarray) -> tuple[str, int] | None:
        return self.table.get(np.ascontiguousarray(joints, np.float32).tobytes())


def accuracy(poses: list[PoseRecord], index: GroundTruthIndex | None = None) -> dict:
    """MPJPE / PA-MPJPE (mm) over ticks carrying ground truth, overall and per action."""
    pairs = [(m.joints, m.gt) for m in poses if m.gt is not None]
    if not pairs:
        return {"frames": 0, "mpjpe_mm": None, "pa_mpjpe_mm": None, "per_action": {}}
    pred = np.stack([p for p, _ in pairs])
    gt = np.stack([g for _, g in pairs])
    err, pa = posemath.mpjpe(pred, gt), posemath.pa_mpjpe(pred, gt)
    out = {"frames": len(pairs), "mpjpe_mm": round(float(err.mean()), 2), "pa_mpjpe_mm": round(float(pa.mean()), 2),
           "per_action": {}}
    if index is not None:
        actions = []
        for _, g in pairs:
            hit = index.lookup(g)
            actions.append(hit[0].split("/")[-1] if hit else "unknown")
        for a in sorted(set(actions)):
            sel = np.array([x == a for x in actions])
            out["per_action"][a] = {"name": schema.ACTION_NAMES.get(a, a), "frames": int(sel.sum()),
                                    "mpjpe_mm": round(float(err[sel].mean()), 2),
                                    "pa_mpjpe_mm": round(float(pa[sel].mean()), 2)}
    return out


def contribution_summary(poses: list[PoseRecord]) -> dict:
    """Mean per-tick window shares, label-free and (where present) with labels."""
    out = {}
    for key, name in (("shares", "label_free"), ("shares_gt", "labelled")):
        rows = [getattr(m, key) for m in poses if getattr(m, key) is not None]
        out[name] = None if not rows else dict(zip(schema.MODALITIES, np.round(np.mean(rows, axis=0), 4).tolist()))
    return out


def degradation_events(poses: list[PoseRecord]) -> list[dict]:
    """Every 0 -> 1 (degraded) and 1 -> 0 (recovered) transition of the flags on the stream."""
    events, prev = [], np.zeros(schema.N_MODALITIES, bool)
    for m in poses:
        flags = np.asarray(m.degraded, bool)
        for i in np.flatnonzero(flags != prev):
            events.append({"modality": schema.MODALITIES[i], "event": "degraded" if flags[i] else "recovered",
                           "tick": m.tick, "t_ns": m.tick_ns})
        prev = flags
    return events


def fault_detection(poses: list[PoseRecord], faults: list[dict], period_ns: int) -> list[dict]:
    """faults: [{"spec", "modality", "start_ns"}] -> whether / after how many ticks each was flagged,
    and which other modalities were flagged while it lasted."""
    out = []
    for f in faults:
        i = schema.MODALITY_INDEX[f["modality"]]
        after = [m for m in poses if m.tick_ns >= f["start_ns"] and (f.get("end_ns") is None or m.tick_ns < f["end_ns"])]
        hit = next((m for m in after if m.degraded[i]), None)
        # Other modalities flagged while this fault lasted, leaving out those with a fault of their own.
        faulted = {g["modality"] for g in faults if _overlap(f, g)}
        others = sorted({schema.MODALITIES[j] for m in after for j in range(schema.N_MODALITIES)
                         if m.degraded[j] and schema.MODALITIES[j] not in faulted})
        ticks = None if hit is None else int(np.ceil((hit.tick_ns - f["start_ns"]) / period_ns)) + 1
        out.append({**f, "flagged": hit is not None, "ticks_to_flag": ticks,
                    "seconds_to_flag": None if hit is None else round((hit.tick_ns - f["start_ns"]) / 1e9, 3),
                    "others_flagged": others, "poses_during_fault": len(after)})
    return out


def _overlap(f: dict, g: dict) -> bool:
    f_end = np.inf if f.get("end_ns") is None else f["end_ns"]
    g_end = np.inf if g.get("end_ns") is None else g["end_ns"]
    return f["start_ns"] < g_end and g["start_ns"] < f_end


def latency_summary(poses: list[PoseRecord], wall_s: float) -> dict:
    lat = np.array([m.latency_ns for m in poses], np.float64) / 1e6
    return {"poses": len(poses), "wall_s": round(wall_s, 2),
            "poses_per_s": round(len(poses) / wall_s, 1) if wall_s > 0 else None,
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None}


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------
def replay_config(cfg: RuntimeConfig, rate: float, clock: str | None, keys_dir: str | None = None) -> RuntimeConfig:
    """The runtime config on free loopback ports; data clock for as-fast-as-possible replay;
    CurveZMQ with ``keys_dir``, else plaintext (loopback only)."""
    data = cfg.to_dict()
    data["security"] = {"keys_dir": keys_dir or "", "plaintext": not keys_dir, "force_plaintext": False}
    data["inputs"].update(endpoints=[f"tcp://127.0.0.1:{free_loopback_port()}"], bind=True)
    data["output"].update(endpoint=f"tcp://127.0.0.1:{free_loopback_port()}", bind=True)
    data["metrics"].update(host="127.0.0.1", port=0)
    data["sync"]["clock"] = clock or ("data" if rate == 0 else "wall")
    if data["sync"]["clock"] == "data":
        # PUB/SUB has no back-pressure: a replay as fast as possible is buffered, then ticked in order.
        data["inputs"]["queue_size"] = max(data["inputs"]["queue_size"], REPLAY_QUEUE_SIZE)
    return RuntimeConfig.from_dict(data)


def run_replay(model_path: str, data_root: str, protocol: str, split: str, subset: str = "test",
               rate: float = 0.0, faults: list[str] | None = None, cfg: RuntimeConfig | None = None,
               clock: str | None = None, max_frames: int | None = None, sequences: list[str] | None = None,
               seed: int = 0, secure: bool = False, rehab_report: str | None = None, progress: bool = True) -> dict:
    """Serve ``model_path`` in-process, replay the dataset into it over ZeroMQ, return the report.
    ``secure``: CurveZMQ on both sockets, with a key directory made for this run.
    ``rehab_report``: also write the rehabilitation report (runtime.rehab.report) of the pose stream there.
    ``progress``: the replay's progress bar on stderr (``--no-progress`` switches it off)."""
    if secure:
        with tempfile.TemporaryDirectory(prefix="awc-replay-keys-") as tmp:
            kd = Path(tmp) / "keys"
            keyfiles.init(kd)
            keyfiles.add(kd, "replay", "sensor", keyfiles.make_scope("replay", ["all"], ground_truth=True))
            keyfiles.add(kd, "viewer", "viewer")
            return _run_replay(model_path, data_root, protocol, split, subset, rate, faults, cfg, clock, max_frames,
                               sequences, seed, str(kd), rehab_report, progress)
    return _run_replay(model_path, data_root, protocol, split, subset, rate, faults, cfg, clock, max_frames,
                       sequences, seed, None, rehab_report, progress)


def _run_replay(model_path, data_root, protocol, split, subset, rate, faults, cfg, clock, max_frames, sequences,
                seed, keys_dir: str | None, rehab_report: str | None = None, progress: bool = True) -> dict:
    cfg = replay_config(cfg or RuntimeConfig(), rate, clock, keys_dir)
    sensor = viewer = None
    if keys_dir:
        server = Path(keys_dir) / "server.key"
        sensor = keyfiles.CurveClient.load(Path(keys_dir) / "clients" / "replay.key_secret", server)
        viewer = keyfiles.CurveClient.load(Path(keys_dir) / "clients" / "viewer.key_secret", server)
    parsed = [parse_fault(f) for f in faults or []]
    model = load_model(cfg, model_path)
    rt = Runtime(cfg, model).start()
    loop = threading.Thread(target=rt.run, name="awc-loop", daemon=True)
    collector = PoseCollector(cfg.output.endpoint, curve=viewer)
    collector.start()
    loop.start()
    time.sleep(0.3)   # the pose subscription settles before the first tick
    start = time.monotonic()
    try:
        stats = replay(data_root, cfg.inputs.endpoints[0], protocol=protocol, split=split, subset=subset,
                       rate=rate, faults=parsed, send_gt=True, max_frames=max_frames, sequences=sequences,
                       seed=seed, progress=progress, curve=sensor)
        _wait_for_quiet(rt, collector, cfg, stats.total_sent())
    finally:
        wall = time.monotonic() - start
        rt.stop_event.set()
        loop.join(timeout=30)
        if loop.is_alive():   # still working through a backlog: its sockets stay open until the process exits
            log.warning("the runtime's loop did not stop within 30 s; the report covers the poses made so far")
        else:
            rt.close()
        collector.stop()
    fault_windows = [{"spec": spec, "modality": f.modality, "kind": f.kind,
                      "start_ns": stats.start_ns + int(f.start_s * 1e9),
                      "end_ns": None if f.duration_s is None else stats.start_ns + int((f.start_s + f.duration_s) * 1e9)}
                     for spec, f in zip(faults or [], parsed)]
    report = build_report(collector.poses, stats, rt, cfg, wall, data_root, protocol, split, subset, rate, model_path,
                          fault_windows)
    report["pose_stream_invalid"] = collector.invalid
    if rehab_report:
        from runtime.rehab.report import records_from_poses, write_report  # matplotlib only when asked

        data = write_report(records_from_poses(collector.poses), rehab_report,
                            source=f"runtime replay of {data_root} ({protocol}/{split}/{subset})")
        report["rehab"] = {"report": str(rehab_report), "total_repetitions": data["total_repetitions"],
                           "low_confidence_repetitions": data["low_confidence_repetitions"],
                           "segments": [{k: v for k, v in s.items() if k != "repetitions"} for s in data["segments"]],
                           "mirror_symmetry": data["mirror_symmetry"]}
    return report


def _wait_for_quiet(rt: Runtime, collector: PoseCollector, cfg: RuntimeConfig, sent: int, quiet_s: float = 1.0,
                    stall_s: float = 60.0) -> None:
    """Wait until the runtime has processed everything the replay sent: every message received or
    dropped by it, every received one fed to the loop (a replay as fast as possible leaves a
    backlog that the loop takes from the queue in large batches, and a busy machine can stall it
    for seconds), and the loop idle past the data clock's final flush; then until no new pose
    reaches the collector for ``quiet_s``. Gives up, with a warning, after ``stall_s`` without
    any progress."""
    ingest, loop = rt.ingest, rt.loop
    idle_s = cfg.sync.data_flush_s + 1.0
    last, moved = None, time.monotonic()
    while ingest is not None and loop is not None:
        received = ingest.received_total()
        accounted, fed, ticked = received + ingest.dropped_total(), loop.stats.messages, loop.last_tick_wall
        now = time.monotonic()
        if accounted >= sent and fed >= received and ticked is not None and now - ticked > idle_s:
            break
        if (accounted, fed, ticked) != last:
            last, moved = (accounted, fed, ticked), now
        elif now - moved > stall_s:
            log.warning("the runtime accounted for %d of the %d messages sent and made no progress for %.0f s: "
                        "the report covers the poses made so far", accounted, sent, stall_s)
            break
        time.sleep(0.1)
    last_n, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < quiet_s:
        time.sleep(0.1)
        n = len(collector.poses)
        if n != last_n:
            last_n, last_change = n, time.monotonic()


def build_report(poses, stats, rt: Runtime, cfg: RuntimeConfig, wall_s: float, data_root, protocol, split,
                 subset, rate, model_path, faults: list[dict]) -> dict:
    poses = sorted(poses, key=lambda m: m.tick_ns)
    reg = rt.metrics.registry
    received = {m: reg.get_sample_value("awc_messages_received_total", {"modality": m}) for m in schema.MODALITIES}
    dropped = {m: {r: reg.get_sample_value("awc_messages_dropped_total", {"modality": m, "reason": r})
                   for r in schema.DROP_REASONS} for m in schema.MODALITIES}
    dropped = {m: {r: v for r, v in d.items() if v} for m, d in dropped.items()}
    ticks = {o: reg.get_sample_value("awc_ticks_total", {"outcome": o}) for o in ("fused", "partial", "empty", "dropped")}
    try:
        index = GroundTruthIndex.from_dataset(data_root, protocol, split, subset)
    except mmfi.MMFiFormatError as err:
        log.warning("per-action figures unavailable: %s", err)
        index = None
    period = int(round(1e9 / cfg.sync.rate_hz))
    return {
        "model": str(model_path), "data": str(data_root), "protocol": protocol, "split": split, "subset": subset,
        "rate": rate, "clock": cfg.sync.clock,
        "accuracy": accuracy(poses, index),
        "contribution_shares": contribution_summary(poses),
        "degradation_events": degradation_events(poses),
        "faults": fault_detection(poses, faults, period),
        "throughput": latency_summary(poses, wall_s),
        "ticks": ticks,
        "messages": {"sent": dict(stats.sent), "replay_dropped": dict(stats.dropped),
                     "suppressed_by_faults": dict(stats.suppressed), "received": received, "dropped": dropped},
        "replay": {"frames": stats.frames, "sequences": stats.sequences, "wall_s": round(stats.wall_s, 2)},
    }


def format_report(r: dict) -> str:
    a = r["accuracy"]
    lines = [f"replay {r['data']} {r['protocol']}/{r['split']}/{r['subset']} at rate {r['rate']} ({r['clock']} clock)",
             f"poses {r['throughput']['poses']}  ({r['throughput']['poses_per_s']}/s)  latency p50 "
             f"{r['throughput']['latency_p50_ms']} ms  p99 {r['throughput']['latency_p99_ms']} ms"
             + ("  (as fast as possible: includes the time each message queued behind the backlog)"
                if not r["rate"] else ""),
             "", f"{'action':<8}{'name':<32}{'frames':>8}{'MPJPE':>9}{'PA-MPJPE':>10}"]
    for act, v in a["per_action"].items():
        lines.append(f"{act:<8}{v['name'][:31]:<32}{v['frames']:>8}{v['mpjpe_mm']:>9.1f}{v['pa_mpjpe_mm']:>10.1f}")
    if a["frames"]:
        lines.append(f"{'all':<40}{a['frames']:>8}{a['mpjpe_mm']:>9.1f}{a['pa_mpjpe_mm']:>10.1f}")
    lines += ["", f"{'shares':<12}" + "".join(f"{m:>9}" for m in schema.MODALITIES)]
    for kind, shares in r["contribution_shares"].items():
        if shares:
            lines.append(f"{kind:<12}" + "".join(f"{shares[m]:>9.3f}" for m in schema.MODALITIES))
    lines.append("")
    for f in r["faults"]:
        verdict = f"flagged after {f['ticks_to_flag']} ticks" if f["flagged"] else "NOT flagged"
        lines.append(f"fault {f['spec']:<22} {verdict}; others flagged: {', '.join(f['others_flagged']) or 'none'}")
    lines.append(f"degradation events: {len(r['degradation_events'])}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported ONNX model")
    p.add_argument("--data", required=True, help="MM-Fi-format dataset root")
    p.add_argument("--protocol", default="P1", choices=sorted(schema.PROTOCOLS))
    p.add_argument("--split", default="S1", choices=schema.SPLITS)
    p.add_argument("--subset", default="test", choices=("train", "test", "all"))
    p.add_argument("--rate", type=float, default=0.0, help="replay speed (1 = real time, 0 = as fast as possible)")
    add_list_argument(p, "--fault", default=[], metavar="SPEC[,SPEC]",
                      help="inject faults, e.g. lidar:stop@5 (see sensors replay)")
    p.add_argument("--max-frames", type=int, default=None, help="replay at most this many frames")
    add_list_argument(p, "--sequences", default=None, metavar="E01/S01/A02[,...]", help="replay these sequences")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    add_report_arguments(p)
    p.add_argument("--secure", action="store_true",
                   help="CurveZMQ on the sensor and pose sockets (a key directory made for this run)")
    p.add_argument("--rehab-report", default=None, metavar="FILE.html",
                   help="also write the rehabilitation session report (angles, repetitions, trust) of the replay")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.rehab_report:
        require_packages("matplotlib")   # the `report` extra, before the replay starts
    try:
        cfg = config_from_args(args)
        report = run_replay(args.model, args.data, args.protocol, args.split, args.subset, args.rate, args.fault,
                            cfg, clock=args.clock, max_frames=args.max_frames, sequences=args.sequences,
                            seed=args.seed, secure=args.secure,
                            rehab_report=args.rehab_report, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ModelError, ReplayError, RuntimeError) as err:   # MMFiFormatError is a ValueError
        log.error("%s", err)
        return 2
    text = format_report(report)
    if "rehab" in report:
        from runtime.rehab.report import format_summary

        text += "\n\n" + format_summary(report["rehab"]) + f"\nrehabilitation report: {report['rehab']['report']}"
    emit_report(args, report, text)
    return 0
