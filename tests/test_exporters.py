"""Exporters: HTTP endpoints, pose publisher over a real ZeroMQ socket, JSONL/NPZ recorders."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import zmq

from exporters.http import HttpExporter
from exporters.metrics import RuntimeMetrics
from exporters.pose_publisher import PosePublisher
from exporters.recorder import JsonlRecorder, NpzRecorder, open_recorder, stack_records
from sensors.core import schema, wire
from sensors.core.pose_record import PoseRecord


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_serves_metrics_health_and_readiness():
    metrics = RuntimeMetrics()
    metrics.ticks.labels(outcome="fused").inc(3)
    state = {"ready": (False, "ingest not running")}
    http = HttpExporter(metrics.registry, lambda: state["ready"], "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{http.port}"
        status, body = _get(base + "/metrics")
        assert status == 200 and 'awc_ticks_total{outcome="fused"} 3.0' in body
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz") == (503, "ingest not running\n")
        state["ready"] = (True, "ready")
        assert _get(base + "/readyz") == (200, "ready\n")
        assert _get(base + "/nope")[0] == 404
        assert http.url.endswith("/metrics")
    finally:
        http.stop()


def test_pose_message_round_trips_through_the_wire_codec():
    joints = np.arange(51, dtype=np.float32).reshape(17, 3)
    record = PoseRecord(tick=7, tick_ns=123, joints=joints, presence=np.array([1, 1, 0, 1]),
                        degradation=np.array([0, 0, 1, 0]), degraded=np.array([0, 0, 1, 0]), latency_ns=4_000_000,
                        station="st", shapley=np.array([0.1, 0.2, 0.0, 0.3]), shares=np.array([0.25, 0.5, 0.0, 0.25]))
    back = wire.decode(wire.encode(record.to_message()))
    assert back.topic == schema.POSE_TOPIC and back.seq == 7 and back.extra["tick"] == 7
    np.testing.assert_array_equal(back.arrays["joints"], joints)
    assert back.arrays["presence"].dtype == np.uint8 and back.arrays["presence"].tolist() == [1, 1, 0, 1]
    assert back.extra["latency_ns"] == 4_000_000 and back.extra["shares"] == [0.25, 0.5, 0.0, 0.25]
    assert back.extra["shares_gt"] is None and back.extra["station"] == "st"


def test_pose_publisher_sends_over_zeromq():
    ctx = zmq.Context()
    pub = PosePublisher("tcp://127.0.0.1:*", bind=True, context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"pose")
    sub.connect(pub.endpoint)
    try:
        msg = PoseRecord(tick=1, tick_ns=1, joints=np.zeros((17, 3)), presence=np.ones(4), degradation=np.zeros(4),
                         degraded=np.zeros(4), station="st")
        got = None
        for _ in range(50):   # slow joiner: repeat until the subscription is through
            pub.publish(msg)
            if sub.poll(100):
                got = wire.decode(sub.recv_multipart())
                break
        assert got is not None and got.topic == "pose"
        assert pub.sent >= 1
    finally:
        sub.close(0)
        pub.close()
        ctx.term()


def _records(n):
    rng = np.random.default_rng(0)
    return [{"tick": i, "joints": rng.normal(size=(17, 3)).astype(np.float32), "presence": np.ones(4, np.uint8),
             **({"gt": np.full((17, 3), i, np.float32)} if i % 2 else {})} for i in range(n)]


def test_jsonl_recorder_flushes_every_line(tmp_path):
    rec = open_recorder(tmp_path / "r.jsonl")
    assert isinstance(rec, JsonlRecorder)
    recs = _records(3)
    for r in recs:
        rec.write(r)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()   # before close: already on disk
    assert len(lines) == 3
    assert json.loads(lines[1])["gt"][0] == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(json.loads(lines[0])["joints"], recs[0]["joints"], rtol=1e-6)
    rec.close()


def test_npz_recorder_stacks_fills_missing_keys_and_is_bounded(tmp_path):
    rec = open_recorder(tmp_path / "r.npz", max_ticks=4)
    assert isinstance(rec, NpzRecorder)
    for r in _records(6):
        rec.write(r)
    assert not (tmp_path / "r.npz").exists()     # written at close
    rec.close()
    data = np.load(tmp_path / "r.npz")
    assert data["joints"].shape == (4, 17, 3) and data["tick"].tolist() == [0, 1, 2, 3]
    assert data["has_gt"].tolist() == [False, True, False, True]
    assert np.isnan(data["gt"][0]).all() and (data["gt"][1] == 1).all()
    assert int(data["skipped_ticks"]) == 2
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_npz_recorder_is_bounded_in_memory(tmp_path):
    rec = open_recorder(tmp_path / "r.npz", max_mb=0.0005)   # 500 bytes: room for two of these records
    for r in _records(5):
        rec.write(r)
    rec.close()
    data = np.load(tmp_path / "r.npz")
    assert len(data["tick"]) == 2 and int(data["skipped_ticks"]) == 3


def test_recorder_suffix_is_checked(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        open_recorder(tmp_path / "r.csv")
    assert stack_records([]) == {}
