"""Hostile input into a real `runtime serve` process over ZeroMQ: garbage bytes, huge shapes, wrong
dtypes, NaN, bad versions, unknown topics. Every message is counted and dropped by reason, the
process keeps serving poses, and its memory stays bounded over a few thousand garbage messages."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from test_serve_e2e import ServeProcess, export_tiny_model, pose_subscriber

from sensors.core import schema, wire

pytestmark = pytest.mark.slow

N_EACH = 400   # garbage messages per kind (8 kinds -> 3,200)


def _header(topic: str, arrays: list[dict], **over) -> bytes:
    h = {"v": 1, "mod": topic, "src": "evil", "seq": 0, "t_ns": time.time_ns(), "sent_ns": time.time_ns(),
         "arrays": arrays}
    h.update(over)
    return msgpack.packb(h, use_bin_type=True)


def garbage(kind: str, rng: np.random.Generator, i: int) -> tuple[list[bytes], str | None, str | None]:
    """(frames, modality label, expected drop reason)."""
    if kind == "foreign_topic":   # no known topic at all: decoded, counted and dropped, never filtered away
        return [b"\xff" + rng.bytes(8), rng.bytes(32)], "unknown", "unknown_topic"
    if kind == "random_frames":
        return [b"mmwave", *(rng.bytes(int(rng.integers(1, 64))) for _ in range(int(rng.integers(1, 3))))], \
            "mmwave", "malformed"
    if kind == "bad_header":
        return [b"lidar", rng.bytes(40), rng.bytes(12)], "lidar", "malformed"
    if kind == "huge_shape":   # claims 10^9 points with a 12-byte buffer: refused before any allocation
        return [b"lidar", _header("lidar", [{"name": "points", "dtype": "<f4", "shape": [10**9, 3]}], seq=i),
                b"\0" * 12], "lidar", "oversized"
    if kind == "wrong_dtype":
        pts = rng.normal(size=(20, 5))
        return [b"mmwave", _header("mmwave", [{"name": "points", "dtype": "<f8", "shape": [20, 5]}], seq=i),
                pts.tobytes()], "mmwave", "bad_dtype"
    if kind == "nan_points":
        pts = np.full((100, 3), np.nan, np.float32)
        return [b"lidar", _header("lidar", [{"name": "points", "dtype": "<f4", "shape": [100, 3]}], seq=i),
                pts.tobytes()], "lidar", "non_finite"
    if kind == "bad_version":
        return [b"rgb", _header("rgb", [{"name": "kpts", "dtype": "<f4", "shape": [17, 2]}], v=99, seq=i),
                np.zeros((17, 2), np.float32).tobytes()], "rgb", "bad_version"
    if kind == "unknown_topic":   # looks like a modality topic but is not one
        return [b"rgb-thermal", _header("rgb-thermal", []), b""], "unknown", "unknown_topic"
    raise ValueError(kind)


KINDS = ("foreign_topic", "random_frames", "bad_header", "huge_shape", "wrong_dtype", "nan_points", "bad_version",
         "unknown_topic")


def test_garbage_is_counted_by_reason_and_the_runtime_keeps_serving(tmp_path):
    model = export_tiny_model(tmp_path)
    with ServeProcess(model, tmp_path) as srv:
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        pub.connect(srv.input)
        poses = pose_subscriber(ctx, srv.output)
        rng = np.random.default_rng(0)
        k = srv.wait_for_valid_traffic(pub, rng)     # valid frames until the runtime counts them
        before = srv.metrics()
        rss_before = srv.rss_mb()
        expected: dict[tuple[str, str], int] = {}
        sent = 0
        for i in range(N_EACH):
            for kind in KINDS:
                frames, mod, reason = garbage(kind, rng, i)
                pub.send_multipart(frames)
                expected[(mod, reason)] = expected.get((mod, reason), 0) + 1
                sent += 1
            if i % 20 == 0:   # valid frames keep flowing at roughly 10 Hz among the garbage
                k = srv.send_valid(pub, rng, k)
                time.sleep(0.02)
        for _ in range(10):
            k = srv.send_valid(pub, rng, k)
            time.sleep(0.1)
        time.sleep(1.0)
        after = srv.metrics()
        assert srv.alive(), "the runtime died on hostile input"
        assert srv.get("/healthz")[0] == 200
        for (mod, reason), n in expected.items():
            key = f'awc_messages_dropped_total{{modality="{mod}",reason="{reason}"}}'
            got = after.get(key, 0) - before.get(key, 0)
            assert got == n, f"{key}: sent {n}, counted {got}"
        # poses keep coming after the garbage
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(got) < 3:
            k = srv.send_valid(pub, rng, k)
            if poses.poll(100):
                got.append(wire.decode(poses.recv_multipart()))
        assert len(got) >= 3 and all(p.topic == schema.POSE_TOPIC for p in got)
        assert srv.rss_mb() - rss_before < 60, f"RSS grew from {rss_before:.0f} to {srv.rss_mb():.0f} MB"
        assert sent == len(KINDS) * N_EACH
        pub.close(0)
        poses.close(0)
        ctx.term()
