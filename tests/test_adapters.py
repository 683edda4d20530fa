"""Sensor adapters (sensors/adapters) on recordings in the vendors' own formats, built byte by
byte in tests/vendor_formats.py and read through the real libraries (csiread, ouster-sdk,
pyserial, OpenCV + onnxruntime); what reaches a ZeroMQ subscriber is decoded with the wire codec
and checked value by value against what was written."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import numpy as np
import pytest
import vendor_formats as vf
from fixtures.zmq_receiver import Receiver

from sensors.cli import main as sensors_main
from sensors.core import wire

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close(settle_s=0)


def run_cli(*argv: str) -> int:
    """The adapter as a process of its own (the vendor libraries, signal handlers and logging setup
    stay out of the test process)."""
    proc = subprocess.run([sys.executable, "-m", "sensors", *argv, "--log-level", "WARNING"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode


def report(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# TI IWR6843
# ---------------------------------------------------------------------------------------------
def test_iwr6843_dump_torn_and_corrupt_frames_round_trip_value_by_value(tmp_path, receiver):
    rec = vf.radar_recording(tmp_path, frames=40)
    rep = tmp_path / "r.json"
    assert run_cli("iwr6843", "--dump", str(rec.dump), "--rate", "0", "--connect", receiver.endpoint,
                   "--src", "radar-1", "--report", str(rep)) == 0
    msgs = receiver.drain()
    assert [m.topic for m in msgs] == ["mmwave"] * len(rec.sent)
    numbers = sorted(rec.sent)
    for k, m in zip(numbers, msgs):
        ti = rec.sent[k]                                       # x right, y boresight, z up, snr, doppler
        want = np.column_stack([ti[:, 1], -ti[:, 0], ti[:, 2], ti[:, 3], ti[:, 4]])   # MM-Fi axes
        assert m.arrays["points"].shape == (len(ti), 5)
        np.testing.assert_array_equal(m.arrays["points"], want.astype(np.float32))
        assert m.seq == k - 1, "every frame the radar made consumes one seq: the runtime counts the losses"
        assert m.src == "radar-1"
    t = np.array([m.t_ns for m in msgs])
    np.testing.assert_array_equal(np.diff(t), np.diff(numbers) * 100_000_000)   # frameNumber x 100 ms
    r = report(rep)
    assert r["sent"] == len(rec.sent)
    assert r["drops"] == {"torn": len(rec.torn), "corrupt": len(rec.corrupt), "device_gap": len(rec.missing)}


@pytest.mark.parametrize("chunk", [1, 333, 1 << 20])
def test_iwr6843_parser_gives_the_same_frames_however_the_bytes_arrive(tmp_path, chunk):
    from sensors.adapters.iwr6843 import FrameParser

    rec = vf.radar_recording(tmp_path, frames=40)
    data = rec.dump.read_bytes()
    parser, got = FrameParser(), {}
    for i in range(0, len(data), chunk):
        got.update((f.number, f.points) for f in parser.feed(data[i:i + chunk]))
    parser.finish()
    assert sorted(got) == sorted(rec.sent)
    assert all(np.array_equal(got[k], rec.sent[k]) for k in rec.sent)
    assert (parser.torn, parser.corrupt) == (len(rec.torn), len(rec.corrupt))


def test_iwr6843_live_over_serial_ports_configures_reconnects_and_stops_on_sigterm(tmp_path, receiver):
    """A fake radar behind pseudo-terminals: the adapter opens them with pyserial, sends the chirp
    configuration, reads frames, survives an unplug/replug (re-sending the configuration) and stops
    cleanly on SIGTERM."""
    cfg = tmp_path / "profile.cfg"
    cfg.write_text("% out-of-box demo\nsensorStop\nflushCfg\nframeCfg 0 1 16 0 100 1 0\nguiMonitor -1 1 0 0 0 0 1\n"
                   "sensorStart\n")
    cli_master, cli_slave = pty.openpty()
    tty.setraw(cli_master)
    link = tmp_path / "ttyRADAR"
    received_cfg: list[str] = []
    stop = threading.Event()

    def cli_device():          # answers every command line "Done", as the demo's CLI does
        buf = b""
        while not stop.is_set():
            try:
                buf += os.read(cli_master, 256)
            except OSError:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                received_cfg.append(line.decode().strip())
                os.write(cli_master, line + b"\r\nDone\nmmwDemo:/>")

    def plug() -> int:
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        os.close(slave)
        return master

    rng = np.random.default_rng(1)
    frames = {k: rng.normal([0, 3, 0, 0], 0.3, size=(6, 4)).astype(np.float32) for k in range(1, 31)}
    threading.Thread(target=cli_device, daemon=True).start()
    data = plug()
    proc = subprocess.Popen([sys.executable, "-m", "sensors", "iwr6843", "--data-port", str(link), "--cli-port",
                             os.ttyname(cli_slave), "--cfg", str(cfg), "--connect", receiver.endpoint,
                             "--reconnect-s", "0.2", "--report", str(tmp_path / "r.json")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(received_cfg) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received_cfg[:5] == ["sensorStop", "flushCfg", "frameCfg 0 1 16 0 100 1 0",
                                    "guiMonitor -1 1 0 0 0 0 1", "sensorStart"]
        time.sleep(0.3)
        for k in range(1, 16):
            os.write(data, vf.ti_frame(k, frames[k], np.full(6, 20.0)))
            time.sleep(0.02)
        time.sleep(0.5)
        os.close(data)                                      # unplugged
        link.unlink()
        time.sleep(0.6)
        data = plug()                                       # plugged in again: reconfigured
        deadline = time.monotonic() + 20
        while len(received_cfg) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received_cfg) == 10
        time.sleep(0.3)
        for k in range(1, 16):                              # the radar restarted: frames count from 1 again
            os.write(data, vf.ti_frame(k, frames[k + 15], np.full(6, 20.0)))
            time.sleep(0.02)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        os.close(data)
        os.close(cli_master)
        os.close(cli_slave)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "went away" in err and "stopped by SIGTERM" in err
    msgs = receiver.drain()
    assert len(msgs) == 30
    for k, m in enumerate(msgs, start=1):
        ti = frames[k]
        np.testing.assert_array_equal(m.arrays["points"][:, [1, 2, 4]], np.column_stack([-ti[:, 0], ti[:, 2], ti[:, 3]]))
    r = report(tmp_path / "r.json")
    assert r["sent"] == 30 and r["reconnects"] == 1 and r["dropped"] == 0
    assert out.strip().startswith("mmwave src=")


# ---------------------------------------------------------------------------------------------
# Atheros CSI tool
# ---------------------------------------------------------------------------------------------
def csi_db(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[114, 3, 1] ints as written -> amplitude dB and phase [3, 114] as MM-Fi's units."""
    x = h[:, :, 0].T
    with np.errstate(divide="ignore"):
        return (20 * np.log10(np.abs(x))).astype(np.float32), np.angle(x).astype(np.float32)


@pytest.mark.parametrize("burst", [1, 5])
def test_csi_log_through_csiread_round_trips_every_packet(tmp_path, receiver, burst):
    rec = vf.csi_recording(tmp_path, packets=120)
    rep = tmp_path / "r.json"
    assert run_cli("csi", "--log", str(rec.log), "--rate", "0", "--burst", str(burst), "--connect", receiver.endpoint,
                   "--report", str(rep)) == 0
    msgs = receiver.drain()
    amp = np.concatenate([m.arrays["amp"] for m in msgs])
    phase = np.concatenate([m.arrays["phase"] for m in msgs])
    assert amp.shape == (len(rec.h), 3, 114)
    for i, h in enumerate(rec.h):
        want_amp, want_phase = csi_db(h)
        np.testing.assert_array_equal(amp[i], want_amp)
        np.testing.assert_array_equal(phase[i], want_phase)
    assert np.isneginf(amp[3, 1, 10])                          # |H| = 0 -> -inf dB, as MM-Fi's files
    times = np.concatenate([m.packet_times_ns() for m in msgs])
    want = (np.array(rec.t_us) - rec.t_us[0]) * 1000
    tol = 0 if burst == 1 else 2_000_000                       # a burst spaces its packets evenly
    assert np.abs((times - times[0]) - want).max() <= tol
    r = report(rep)
    assert r["sent"] == len(msgs)
    assert r["drops"] == {"unusable": rec.unusable, "corrupt": rec.corrupt, "torn": 1}


def test_csi_tcp_stream_reconnects_and_stops_on_sigterm(tmp_path, receiver):
    import socket

    rec = vf.csi_recording(tmp_path, packets=60, damage=False)
    data = rec.log.read_bytes()
    half = len(data) // 2 + 77                                 # the connection drops mid-record
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def router():
        for i, part in enumerate((data[:half], data[half:])):
            conn, _ = server.accept()
            if i == 1:
                server.close()                                 # no third connection
            with conn:
                conn.sendall(part)
                time.sleep(0.3)

    threading.Thread(target=router, daemon=True).start()
    proc = subprocess.Popen([sys.executable, "-m", "sensors", "csi", "--tcp", f"127.0.0.1:{port}", "--connect",
                             receiver.endpoint, "--reconnect-s", "0.2", "--report", str(tmp_path / "r.json")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    got: list[wire.Message] = []
    while time.monotonic() < deadline and len(got) < 59:
        time.sleep(0.2)
        got += receiver.drain(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
    r = report(tmp_path / "r.json")
    assert r["reconnects"] == 1
    assert r["sent"] + r["drops"].get("torn", 0) == 60 and r["drops"].get("torn", 0) == 1
    assert len(got) == r["sent"]
    assert np.diff([m.seq for m in got]).max() == 2            # the torn record's seq is consumed


def test_csi_follows_a_growing_log_and_a_replaced_one(tmp_path, receiver):
    first = vf.csi_recording(tmp_path, packets=40, damage=False, seed=1)
    data = first.log.read_bytes()
    log = tmp_path / "live.dat"
    log.write_bytes(data[:1000])                               # the tool is mid-record
    proc = subprocess.Popen([sys.executable, "-m", "sensors", "csi", "--follow", str(log), "--from-start", "--connect",
                             receiver.endpoint, "--report", str(tmp_path / "r.json")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        with open(log, "ab") as f:                             # the rest is appended
            f.write(data[1000:])
        time.sleep(1.0)
        (tmp_path / "b").mkdir()
        second = vf.csi_recording(tmp_path / "b", packets=10, damage=False, seed=2)
        os.replace(second.log, log)                            # log rotation: a new file
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
    msgs = receiver.drain()
    assert len(msgs) == 50
    for m, h in zip(msgs, first.h + second.h):
        np.testing.assert_array_equal(m.arrays["amp"][0], csi_db(h)[0])
    r = report(tmp_path / "r.json")
    assert r["sent"] == 50 and r["dropped"] == 0 and r["reconnects"] == 1


# ---------------------------------------------------------------------------------------------
# Ouster
# ---------------------------------------------------------------------------------------------
def test_ouster_pcap_through_ouster_sdk_gives_the_documented_xyz(tmp_path, receiver):
    rec = vf.ouster_recording(tmp_path, frames=5)
    rep = tmp_path / "r.json"
    assert run_cli("ouster", "--pcap", str(rec.pcap), "--meta", str(rec.meta), "--rate", "0", "--min-range", "1",
                   "--max-range", "5", "--fov-deg", "60", "--connect", receiver.endpoint, "--report", str(rep)) == 0
    msgs = receiver.drain()
    assert len(msgs) == 5
    for f, m in enumerate(msgs):
        xyz = vf.ouster_xyz(rec.ranges_mm[f])                 # the manual's formula, sensor frame
        dist = np.linalg.norm(xyz, axis=-1)
        keep = ((rec.ranges_mm[f] > 0) & (dist >= 1) & (dist <= 5)
                & (np.abs(np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))) <= 30))
        want = xyz[keep]                                        # row-major: ring by ring, top beam first
        assert 500 < len(want) < 5000
        np.testing.assert_allclose(m.arrays["points"], want.astype(np.float32), atol=2e-6, rtol=0)
        assert np.all(np.abs(m.arrays["points"][:, 1]) <= m.arrays["points"][:, 0] * np.tan(np.radians(30)) + 1e-5)
    # capture time: the median time of the columns that gave points, frames 100 ms apart
    assert np.allclose(np.diff([m.t_ns for m in msgs]), 100_000_000, atol=200_000)
    assert report(rep)["dropped"] == 0


# ---------------------------------------------------------------------------------------------
# Camera
# ---------------------------------------------------------------------------------------------
def test_camera_images_through_an_onnx_keypoint_model_scale_to_mmfi_pixels(tmp_path, receiver):
    model = vf.cam_keypoint_model(tmp_path / "kp.onnx")
    images = vf.cam_images(tmp_path / "frames", 8)
    rep = tmp_path / "r.json"
    assert run_cli("camera", "--images", str(images), "--model", str(model), "--rate", "0", "--connect",
                   receiver.endpoint, "--report", str(rep)) == 0
    msgs = receiver.drain()
    assert len(msgs) == 8
    # 1280x720 -> centred 960x720 (4:3) -> 640x480
    centres = (vf.cam_marker_centres() - [160, 0]) * (640 / 960)
    stride = vf.STRIDE / vf.cam_scale()[0] * (640 / 960)      # one heatmap cell in MM-Fi pixels
    for m in msgs:
        kpts = m.arrays["kpts"]
        assert kpts.shape == (17, 2) and m.arrays["score"].shape == (17,)
        assert np.abs(kpts - centres).max() <= stride
        nearest = np.linalg.norm(kpts[:, None] - centres[None], axis=-1).argmin(axis=1)
        np.testing.assert_array_equal(nearest, np.arange(17))  # COCO-17 order kept
    assert kpts[0, 1] < kpts[5, 1] < kpts[11, 1] < kpts[15, 1]  # nose above shoulders above hips above ankles
    assert kpts[5, 0] > kpts[6, 0]                              # the subject's left on the image's right
    lat = report(rep)["detector_latency"]
    assert lat["frames"] == 8 and 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["max_ms"]


def test_camera_video_file_and_mmfi_scaling(tmp_path, receiver):
    import cv2

    from sensors.adapters.keypoints import MMFiScale

    s = MMFiScale(1280, 720, "stretch")
    np.testing.assert_allclose(s(np.array([[1280, 720], [640, 360]], np.float32)), [[640, 480], [320, 240]])
    s = MMFiScale(480, 640, "crop")                            # portrait: top and bottom cropped
    assert s.box() == (0.0, 140.0, 480.0, 360.0)
    np.testing.assert_allclose(s(np.array([[240, 320]], np.float32)), [[320, 240]])

    model = vf.cam_keypoint_model(tmp_path / "kp.onnx")
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (vf.CAM_W, vf.CAM_H))
    for _ in range(5):
        w.write(vf.cam_frame())
    w.release()
    assert run_cli("camera", "--video", str(video), "--model", str(model), "--rate", "0", "--connect",
                   receiver.endpoint) == 0
    msgs = receiver.drain()
    assert len(msgs) == 5
    assert np.allclose(np.diff([m.t_ns for m in msgs]), 100_000_000, atol=1_000_000)   # the file's own times
    centres = (vf.cam_marker_centres() - [160, 0]) * (640 / 960)
    assert np.abs(msgs[-1].arrays["kpts"] - centres).max() <= vf.STRIDE / vf.cam_scale()[0] * (640 / 960)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, no traceback, no stall
# ---------------------------------------------------------------------------------------------
def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensors", *argv, "--connect-timeout", "1"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln or ln.startswith("sensors: error")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def test_bad_recordings_give_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    rec = vf.ouster_recording(tmp_path, frames=1)
    model = vf.cam_keypoint_model(tmp_path / "kp.onnx")
    little = vf.csi_recording(tmp_path, packets=5, endian="<", damage=False)

    one_error_line(cli("iwr6843", "--dump", str(garbage)), 1, "no out-of-box demo frame")
    one_error_line(cli("iwr6843", "--dump", str(tmp_path / "missing.dat")), 1, "not found")
    one_error_line(cli("csi", "--log", str(garbage)), 1, "no Atheros CSI record")
    one_error_line(cli("csi", "--log", str(little.log)), 1, "--endian little")
    one_error_line(cli("ouster", "--pcap", str(garbage.rename(tmp_path / "g.pcap")), "--meta", str(rec.meta)), 1,
                   "ouster-sdk cannot")
    (tmp_path / "bad.json").write_text('{"lidar_mode": 12}')
    one_error_line(cli("ouster", "--pcap", str(rec.pcap), "--meta", str(tmp_path / "bad.json")), 1, "bad.json")
    one_error_line(cli("ouster", "--pcap", str(rec.pcap)), 1, "--meta")
    (tmp_path / "notonnx.onnx").write_bytes(b"\x00garbage" * 100)
    one_error_line(cli("camera", "--images", str(tmp_path), "--model", str(tmp_path / "notonnx.onnx")), 2,
                   "onnxruntime cannot load")
    (tmp_path / "clip.mp4").write_bytes(b"\x00garbage" * 100)
    one_error_line(cli("camera", "--video", str(tmp_path / "clip.mp4"), "--model", str(model)), 1, "OpenCV cannot")
    one_error_line(cli("csi", "--tcp", "router-without-port"), 2, "HOST:PORT")
    # a recording in the right format but no runtime listening: one line saying so
    one_error_line(cli("iwr6843", "--dump", str(vf.radar_recording(tmp_path).dump)), 1, "no runtime subscribed")


@pytest.mark.parametrize("argv", [["iwr6843", "--data-port", "/dev/ttyUSB-unplugged"],
                                  ["camera", "--device", "/dev/video-unplugged"],
                                  ["csi", "--tcp", "127.0.0.1:9"]])
def test_unplugged_live_devices_say_so_retry_and_stop_on_sigterm(tmp_path, argv):
    if argv[0] == "camera":
        argv = [*argv, "--model", str(vf.cam_keypoint_model(tmp_path / "kp.onnx"))]
    proc = subprocess.Popen([sys.executable, "-m", "sensors", *argv, "--connect-timeout", "0.5", "--reconnect-s", "0.2"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "retrying every 0.2 s" in err                      # not a silent stall
    assert "stopped by SIGTERM" in err


# ---------------------------------------------------------------------------------------------
# A station without an adapter's extra
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["camera", "ouster", "iwr6843", "csi"])
def test_help_exists_and_needs_no_vendor_library(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        sensors_main([command, "--help"])
    assert exit_.value.code == 0
    assert "--connect" in capsys.readouterr().out


def test_a_missing_vendor_library_is_one_line_naming_the_extra(tmp_path):
    rec = vf.csi_recording(tmp_path, packets=3, damage=False)
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('csiread', 'cv2', 'ouster', 'serial'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from sensors.cli import main\n"
            f"sys.exit(main(['csi', '--log', {str(rec.log)!r}, '--connect-timeout', '1']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "install the 'csi' extra: pip install 'awc-pose[csi]'" in proc.stderr
