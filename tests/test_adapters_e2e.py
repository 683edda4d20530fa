"""The four sensor adapters, each a `sensors` process reading a recording in its vendor's own
format, feed one `runtime serve` together: the runtime fuses all four into poses, its counters
add up with the adapters' reports, and the LiDAR and radar points it used come back on the pose
stream exactly as the vendors' bytes said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import vendor_formats as vf
import zmq
from test_serve_e2e import REPO, ServeProcess, export_tiny_model, pose_subscriber

from sensors.core import schema, wire

SECONDS = 4


@pytest.mark.slow
def test_four_adapters_from_vendor_recordings_feed_one_runtime_which_fuses_them(tmp_path):
    model = export_tiny_model(tmp_path)
    frames = SECONDS * 10
    radar = vf.radar_recording(tmp_path, frames=frames)
    csi = vf.csi_recording(tmp_path, packets=frames * 10)
    lidar = vf.ouster_recording(tmp_path, frames=frames)
    kp_model = vf.cam_keypoint_model(tmp_path / "kp.onnx")
    images = vf.cam_images(tmp_path / "frames", frames)
    with ServeProcess(model, tmp_path, "--set", "output.forward_points=4096") as srv:
        ctx = zmq.Context()
        poses = pose_subscriber(ctx, srv.output)
        # one session: every recording's first sample at the same moment, a few seconds from now
        start_ns = (time.time_ns() // 100_000_000 + 80) * 100_000_000
        common = ["--connect", srv.input, "--rate", "1", "--start-ns", str(start_ns), "--log-every", "0"]
        cmds = {
            "rgb": ["camera", "--images", str(images), "--model", str(kp_model)],
            "lidar": ["ouster", "--pcap", str(lidar.pcap), "--meta", str(lidar.meta)],
            "mmwave": ["iwr6843", "--dump", str(radar.dump)],
            "wifi": ["csi", "--log", str(csi.log), "--burst", "2"],
        }
        procs = {m: subprocess.Popen([sys.executable, "-m", "sensors", *argv, *common, "--src", f"{m}-1",
                                      "--report", str(tmp_path / f"{m}.json")],
                                     cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for m, argv in cmds.items()}
        got: list[wire.Message] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
            if poses.poll(100):
                got.append(wire.decode(poses.recv_multipart()))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            if poses.poll(50):
                got.append(wire.decode(poses.recv_multipart()))
        outs = {m: p.communicate(timeout=30) for m, p in procs.items()}
        metrics = srv.metrics()
        poses.close(0)
        ctx.term()

    for m, p in procs.items():
        assert p.returncode == 0, f"{m}: {outs[m][1]}"
        assert "Traceback" not in outs[m][1]
    reports = {m: json.loads((tmp_path / f"{m}.json").read_text()) for m in procs}

    # The runtime fused all four: poses whose presence has every modality.
    presence = np.array([p.arrays["presence"] for p in got])
    full = presence.all(axis=1)
    assert full.sum() >= SECONDS * 10 // 2, f"{full.sum()} fused ticks of {len(got)}"
    assert all(np.isfinite(p.arrays["joints"]).all() for p in got)

    # What each adapter sent is what the runtime received; losses in the recordings arrive as gaps.
    for m in schema.MODALITIES:
        assert metrics[f'awc_messages_received_total{{modality="{m}"}}'] == reports[m]["sent"], m
    gaps = {m: metrics.get(f'awc_messages_dropped_total{{modality="{m}",reason="sequence_gap"}}', 0) for m in schema.MODALITIES}
    # radar: the torn, the corrupt and the never received frame (the frame torn at the very end has no
    # successor to show its gap); CSI: the unusable record and the garbage run
    assert gaps["mmwave"] == len(radar.corrupt) + len(radar.missing) + 1
    assert gaps["wifi"] == csi.unusable + csi.corrupt
    assert gaps["lidar"] == 0 and gaps["rgb"] == 0
    assert reports["rgb"]["detector_latency"]["frames"] == frames

    # The points the runtime used, forwarded on the pose stream, are the vendors' values exactly.
    radar_frames = [np.column_stack([p[:, 1], -p[:, 0], p[:, 2], p[:, 3], p[:, 4]]).astype(np.float32)
                    for p in radar.sent.values()]
    lidar_frames = [vf.ouster_xyz(r) for r in lidar.ranges_mm]
    seen_radar = seen_lidar = 0
    for p in got:
        if "mmwave_points" in p.arrays and len(p.arrays["mmwave_points"]):
            pts = p.arrays["mmwave_points"]
            assert any(f.shape == pts.shape and np.array_equal(f, pts) for f in radar_frames)
            seen_radar += 1
        if "lidar_points" in p.arrays:
            pts = p.arrays["lidar_points"]
            match = [f for f in lidar_frames if _same_cloud(f, pts)]
            assert match, "forwarded LiDAR points match no frame of the pcap"
            seen_lidar += 1
    assert seen_radar >= 10 and seen_lidar >= 10


def _same_cloud(xyz: np.ndarray, pts: np.ndarray) -> bool:
    """``pts`` is the adapter's crop of the frame ``xyz`` (defaults: 0.5-6 m, ±30°)."""
    dist = np.linalg.norm(xyz, axis=-1)
    want = xyz[(dist >= 0.5) & (dist <= 6) & (np.abs(np.arctan2(xyz[..., 1], xyz[..., 0])) <= np.radians(30))]
    return want.shape == pts.shape and np.allclose(want, pts, atol=2e-6, rtol=0)
