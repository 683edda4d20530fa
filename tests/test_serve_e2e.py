"""End to end over real ZeroMQ sockets on loopback: `runtime serve` as a subprocess, sensor
streams (the dataset replay, or hand-made frames) into it, the pose stream and /metrics out,
SIGTERM flushing the recorder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from runtime.config import free_loopback_port
from sensors.core import schema, wire

REPO = Path(__file__).resolve().parents[1]
PERIOD = schema.FRAME_PERIOD_NS


# ---------------------------------------------------------------------------------------------
# Helpers (also used by test_hostile_input.py)
# ---------------------------------------------------------------------------------------------
def export_tiny_model(tmp_path: Path, data_root: Path | None = None) -> Path:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from training.export import export_untrained

    return export_untrained(tmp_path / "tiny.onnx", preset="tiny", seed=0, data_root=data_root)


def valid_frame(k: int, t_ns: int, rng) -> list[wire.Message]:
    """The four sensor messages of one frame (seq k) captured at t_ns."""
    a = {
        "rgb": {"kpts": rng.uniform([200, 100], [440, 400], size=(17, 2)).astype(np.float32)},
        "lidar": {"points": rng.normal([3, 0, 0], 0.4, size=(300, 3)).astype(np.float32)},
        "mmwave": {"points": rng.normal([3, 0, 0, 20, 0], 0.3, size=(10, 5)).astype(np.float32)},
        "wifi": {"amp": rng.normal(40, 3, size=(10, 3, 114)).astype(np.float32),
                 "phase": rng.uniform(-3, 3, size=(10, 3, 114)).astype(np.float32)},
    }
    extra = {"wifi": {"period_ns": PERIOD // 10}}
    return [wire.Message(m, f"test-{m}", k, t_ns, time.time_ns(), a[m], extra.get(m, {})) for m in schema.MODALITIES]


def pose_subscriber(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, schema.POSE_TOPIC.encode())
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    return sub


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class ServeProcess:
    """`python -m runtime serve` on free loopback ports; terminated (SIGTERM) on exit."""

    def __init__(self, model: Path, workdir: Path, *extra: str, clock: str = "wall", env: dict | None = None):
        self.extra_env = env or {}
        self.input = f"tcp://127.0.0.1:{free_loopback_port()}"
        self.output = f"tcp://127.0.0.1:{free_loopback_port()}"
        self.port = free_loopback_port()
        self.log = workdir / "serve.log"
        self.cmd = [sys.executable, "-m", "runtime", "serve", "--model", str(model), "--clock", clock,
                    "--input", self.input, "--output", self.output, "--metrics-port", str(self.port),
                    "--threads", "1", "--plaintext", *extra]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **self.extra_env}
        self._log = open(self.log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.alive(), f"runtime serve exited early:\n{self.log.read_text()}"
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"runtime serve did not come up:\n{self.log.read_text()}")

    def __exit__(self, *exc) -> None:
        if self.alive():
            self.terminate()
        self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get("/metrics")[1])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def send_valid(self, pub: zmq.Socket, rng, k: int) -> int:
        for m in valid_frame(k, time.time_ns(), rng):
            pub.send_multipart(wire.encode(m))
        return k + 1

    def wait_for_valid_traffic(self, pub: zmq.Socket, rng, timeout: float = 20.0) -> int:
        """Send valid frames until the runtime has counted some (the PUB/SUB connection is up)."""
        k, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            k = self.send_valid(pub, rng, k)
            time.sleep(0.1)
            if self.metrics().get('awc_messages_received_total{modality="rgb"}', 0) > 0:
                return k
        raise AssertionError(f"no valid message reached the runtime:\n{self.log.read_text()}")


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_flushes_the_recorder_and_readiness_follows_the_poses(tmp_path):
    model = export_tiny_model(tmp_path)
    rec = tmp_path / "rec.npz"
    with ServeProcess(model, tmp_path, "--record", str(rec), "--set", "metrics.ready_max_tick_age_s=1.0") as srv:
        # Alive but not ready while no sensor sends: ready means poses are flowing.
        deadline = time.monotonic() + 20
        while srv.metrics().get('awc_ticks_total{outcome="empty"}', 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.get("/healthz")[0] == 200
        assert srv.get("/readyz") == (503, "no pose yet: no sensor has sent data the model can use\n")
        assert srv.metrics()["awc_ready"] == 0.0
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.connect(srv.input)
        poses = pose_subscriber(ctx, srv.output)
        rng = np.random.default_rng(0)
        k = srv.wait_for_valid_traffic(pub, rng)
        got = []
        for _ in range(20):
            k = srv.send_valid(pub, rng, k)
            deadline = time.monotonic() + 0.1
            while (wait := deadline - time.monotonic()) > 0:
                if poses.poll(max(1, int(wait * 1000))):
                    got.append(wire.decode(poses.recv_multipart()))
        assert srv.get("/readyz")[0] == 200
        assert srv.metrics()["awc_ready"] == 1.0
        assert len(got) >= 10
        time.sleep(1.5)                         # every sensor stops: ticks go on, empty; poses stop
        status, reason = srv.get("/readyz")
        assert status == 503 and reason.startswith("no pose for "), reason
        assert srv.metrics()["awc_ready"] == 0.0
        assert srv.terminate() == 0, srv.log.read_text()
        pub.close(0)
        poses.close(0)
        ctx.term()
    data = np.load(rec)                        # written at SIGTERM
    assert data["joints"].shape[0] >= len(got)
    seen = {p.extra["tick"] for p in got}
    assert seen <= set(data["tick"].tolist())  # every published tick is in the recording
    assert (rec.parent / "rec.npz.config.yaml").exists()
    assert "stopping and flushing" in srv.log.read_text()


@pytest.fixture(scope="module")
def replay_model(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("e2e_model"))


@pytest.mark.slow
def test_replay_into_serve_poses_match_offline_inference_and_counters_add_up(tiny_dataset, replay_model, tmp_path):
    from runtime.inference import OnnxPoseModel
    from sensors import mmfi
    from sensors.replay import replay

    rec = tmp_path / "rec.npz"
    frames = 120
    with ServeProcess(replay_model, tmp_path, "--record", str(rec), "--record-inputs",
                      "--set", "inputs.queue_size=100000", "--set", "metrics.ready_max_tick_age_s=60", clock="data") as srv:
        # Data clock: no data, no tick, no pose, not ready (and /readyz says why).
        assert srv.get("/readyz") == (503, "no pose yet: no sensor has sent data the model can use\n")
        ctx = zmq.Context()
        poses_sock = pose_subscriber(ctx, srv.output)
        time.sleep(0.3)
        stats = replay(tiny_dataset, srv.input, protocol="P1", split="S1", subset="all", rate=0.0,
                       max_frames=frames, send_gt=True)
        poses = []
        quiet = time.monotonic()
        while time.monotonic() - quiet < 2.0:            # until the stream goes quiet
            if poses_sock.poll(100):
                poses.append(wire.decode(poses_sock.recv_multipart()))
                quiet = time.monotonic()
        metrics = srv.metrics()
        assert metrics["awc_ready"] == 1.0
        assert srv.terminate() == 0, srv.log.read_text()
        poses_sock.close(0)
        ctx.term()

    # Every frame became one tick and one pose (data clock, nothing lost on loopback).
    assert len(poses) == frames, f"{len(poses)} poses for {frames} frames"
    assert [p.t_ns for p in poses] == [stats.start_ns + k * PERIOD for k in range(frames)]
    # Counters add up: sent = received + counted drops, per modality.
    for m in schema.MODALITIES:
        received = metrics[f'awc_messages_received_total{{modality="{m}"}}']
        dropped = sum(v for k, v in metrics.items()
                      if k.startswith(f'awc_messages_dropped_total{{modality="{m}"'))
        assert stats.sent[m] == received + dropped, (m, stats.sent[m], received, dropped)
        assert dropped == 0
    assert metrics['awc_ticks_total{outcome="dropped"}'] == 0
    assert metrics['awc_ticks_total{outcome="fused"}'] + metrics['awc_ticks_total{outcome="partial"}'] == frames

    # The streamed poses are the model's output on the synced inputs (recorded at each tick) ...
    data = np.load(rec)
    model = OnnxPoseModel.load(replay_model, provider="cpu", intra_op_threads=1)
    by_tick = {p.extra["tick"]: p for p in poses}
    inputs = {k: data[f"input_{k}"] for k in schema.MODEL_INPUTS}
    pose, coalitions = model.run(inputs)
    for i, tick in enumerate(data["tick"]):
        np.testing.assert_allclose(by_tick[int(tick)].arrays["joints"], pose[i], atol=1e-5)
        np.testing.assert_allclose(data["joints"][i], pose[i], atol=1e-5)
    np.testing.assert_allclose(data["coalition_poses"], coalitions, atol=1e-5)

    # ... and those inputs are what training builds from the same dataset frames (serving = training).
    ds = mmfi.MMFiDataset(tiny_dataset, "P1", "S1", "all", contract=model.metadata)
    assert [str(k) for k in ds.keys[:1]] == stats.sequences[:1]
    for i in range(model.metadata.rgb_window, frames, 7):
        want = ds[i]
        for name in schema.MODEL_INPUTS:
            np.testing.assert_allclose(inputs[name][i], want[name], atol=1e-5, err_msg=f"frame {i} {name}")
        np.testing.assert_array_equal(np.asarray(by_tick[int(data["tick"][i])].extra["gt"], np.float32),
                                      want["joints"])
    # Live contributions with labels are reported beside the label-free ones.
    last = poses[-1].extra
    assert abs(sum(last["shares"]) - 1) < 1e-6 and last["shares_gt"] is not None


# Detection bounds stated in docs/runtime.md (ticks from the first faulted tick, counted as 1).
FAULT_BOUNDS = {"stop": 4, "freeze": 5, "nan": 4, "noise": 4, "skew": 3}


@pytest.mark.slow
def test_runtime_replay_flags_the_faulted_modality_only_and_keeps_serving(tiny_dataset, replay_model, tmp_path):
    from runtime.cli import main

    faults = ["lidar:stop@3+2", "rgb:freeze@6+2", "wifi:nan@9+2", "mmwave:nan@12+2", "rgb:noise@15+2",
              "lidar:noise@18+2", "wifi:noise@21+2", "rgb:skew@24+2"]
    out = tmp_path / "replay.json"
    code = main(["replay", "--model", str(replay_model), "--data", str(tiny_dataset), "--protocol", "P1",
                 "--split", "S1", "--subset", "all", "--rate", "0", "--max-frames", "280", "--threads", "1",
                 *[a for f in faults for a in ("--fault", f)], "--report", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["throughput"]["poses"] == 280          # poses keep coming through every fault
    assert report["accuracy"]["frames"] == 280 and report["accuracy"]["mpjpe_mm"] > 0
    assert set(report["accuracy"]["per_action"]) <= set(schema.PROTOCOLS["P1"])
    for f in report["faults"]:
        assert f["flagged"], f"{f['spec']} was not flagged"
        assert f["ticks_to_flag"] <= FAULT_BOUNDS[f["kind"]], f
        assert f["others_flagged"] == [], f
    # Every flag raised lies inside a fault of that modality (an empty radar frame "corrupted" with
    # NaN is still an empty frame, so a flag may drop and come back inside one fault).
    events = [e for e in report["degradation_events"] if e["event"] == "degraded"]
    assert {e["modality"] for e in events} == {f.split(":")[0] for f in faults}
    for e in events:
        assert any(f["modality"] == e["modality"] and f["start_ns"] <= e["t_ns"] <= f["end_ns"] + 5 * PERIOD
                   for f in report["faults"]), e
    assert report["messages"]["suppressed_by_faults"]["lidar"] == 20
    shares = report["contribution_shares"]
    assert abs(sum(shares["label_free"].values()) - 1) < 1e-3 and shares["labelled"] is not None


def _bars(stderr: str) -> set[str]:
    """Names of the tqdm bars drawn on ``stderr`` ("replay:  50%|#####     | 10/20 [...]")."""
    return set(re.findall(r"([A-Za-z][\w ]*): +\d+%\|", stderr))


def test_runtime_replay_and_bench_draw_no_bar_with_no_progress(tiny_dataset, replay_model, capsys, monkeypatch):
    """``--no-progress`` silences every bar of ``runtime replay`` and ``runtime bench`` (the replay's
    bar was drawn anyway: its library call set ``disable=False`` explicitly, which wins over
    TQDM_DISABLE); without it the replay shows its bar."""
    from runtime.cli import main

    monkeypatch.delenv("TQDM_DISABLE", raising=False)   # the CLI sets it for the whole process: undone after
    replay = ["replay", "--model", str(replay_model), "--data", str(tiny_dataset), "--protocol", "P1", "--split",
              "S1", "--subset", "all", "--rate", "0", "--max-frames", "20", "--threads", "1", "--log-level", "WARNING"]
    assert main(replay) == 0
    assert "replay" in _bars(capsys.readouterr().err)
    assert main([*replay, "--no-progress"]) == 0
    out = capsys.readouterr()
    assert _bars(out.err) == set() and _bars(out.out) == set(), out.err[-500:]
    assert "poses" in out.out   # the report itself is still printed
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bench = ["bench", "--model", str(replay_model), "--duration", "1", "--stage-ticks", "5", "--throughput-s", "0.2",
             "--threads", "1", "--log-level", "WARNING", "--no-progress"]
    assert main(bench) == 0
    out = capsys.readouterr()
    assert _bars(out.err) == set() and _bars(out.out) == set(), out.err[-500:]
    assert "end to end at 10 Hz" in out.out


@pytest.mark.slow
def test_systemd_notify_ready_watchdog_and_stopping(replay_model, tmp_path):
    """Under Type=notify: READY=1 once serving, WATCHDOG=1 from the tick loop, STOPPING=1 at SIGTERM."""
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    try:
        with ServeProcess(replay_model, tmp_path, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}) as srv:
            first = sock.recv(4096).decode()
            assert first.startswith("READY=1\nSTATUS=serving station"), first
            pings = [sock.recv(4096) for _ in range(3)]      # every 0.5 s: half the watchdog interval
            assert pings == [b"WATCHDOG=1"] * 3
            assert srv.terminate() == 0, srv.log.read_text()
        rest = []
        sock.settimeout(1)
        while True:
            try:
                rest.append(sock.recv(4096))
            except TimeoutError:
                break
        assert b"STOPPING=1" in rest
    finally:
        sock.close()
