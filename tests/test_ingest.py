"""Ingest over real ZeroMQ sockets on loopback: gaps, invalid messages, queue overflow, accounting."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from exporters.metrics import RuntimeMetrics
from runtime.ingest import Ingest
from sensors.core import schema, wire
from sensors.publisher import SensorPublisher

T0 = 1_767_225_600_000_000_000
KPTS = np.full((17, 2), 320.0, np.float32)


@pytest.fixture()
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def _wait(cond, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _accounted(ing: Ingest) -> int:
    return ing.received_total() + ing.dropped_total()


def _metric(metrics: RuntimeMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _raw_pub(ctx, endpoint: str) -> zmq.Socket:
    """A bare XPUB (for crafted frames) that has seen the ingest's subscription."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, 0)  # no send-side limit: this test floods on purpose
    sock.connect(endpoint)
    assert sock.poll(5000), "no subscription reached the raw publisher"
    while sock.poll(200):
        sock.recv()
    return sock


def test_gaps_invalid_messages_and_the_accounting_invariant(ctx):
    metrics = RuntimeMetrics()
    ing = Ingest(["tcp://127.0.0.1:0"], bind=True, metrics=metrics, context=ctx).start()
    pub = SensorPublisher(ing.endpoints[0], src="cam", context=ctx)
    raw = _raw_pub(ctx, ing.endpoints[0])
    try:
        assert pub.wait_connected(5.0, topics=("rgb", "lidar", "gt"))
        sent = 0
        for k in range(10):  # rgb seq 0..9 with 2 and 5, 6 lost upstream
            if k in (2, 5, 6):
                pub.skip("rgb")
            else:
                pub.send("rgb", T0 + k, kpts=KPTS)
                sent += 1
        sent += 3  # the three lost ones were "sent" by the sensor
        for k in range(3):  # a sensor restart: seq starts again at 0, nothing is counted lost
            pub.send_message(wire.Message("rgb", "cam", k, T0 + 100 + k, T0, {"kpts": KPTS}))
            sent += 1
        pub.send("lidar", T0, points=np.array([[1.0, np.nan, 0.0]]))  # non_finite, seq 0
        pub.send("lidar", T0, points=np.zeros((4, 3)))                # valid, seq 1: no gap
        pub.send("gt", T0, joints=np.zeros((17, 3)))
        sent += 3
        good = wire.encode(wire.Message("mmwave", "radar", 0, T0, T0, {"points": np.zeros((2, 5))}))
        header = msgpack.unpackb(good[1])
        header["arrays"][0]["dtype"] = "<f8"
        next_header = msgpack.packb({**msgpack.unpackb(good[1]), "seq": 1})
        crafted = [
            [b"rgbx", good[1], good[2]],                         # unknown topic (matches the prefix)
            [b"\x00\xff", b"\x01", b"\x02"],                         # garbage topic: counted, not filtered
            [b"mmwave", msgpack.packb(header), good[2]],         # bad dtype
            [b"mmwave", b"\xc1\xc1garbage"],                      # malformed header
            [b"mmwave", next_header],                            # buffer missing (seq 1: no restart)
            [b"wifi"],                                           # one frame only
        ]
        for frames in crafted:
            raw.send_multipart(frames)
        sent += len(crafted)
        assert _wait(lambda: _accounted(ing) >= sent), ing.counts
        time.sleep(0.1)
        counts = ing.counts
        assert counts["received"] == {"rgb": 10, "lidar": 1, "gt": 1}
        assert counts["dropped"]["rgb"] == {"sequence_gap": 3}
        assert counts["dropped"]["lidar"] == {"non_finite": 1}
        assert counts["dropped"]["mmwave"] == {"bad_dtype": 1, "malformed": 2}
        assert counts["dropped"][schema.UNKNOWN_MODALITY] == {"unknown_topic": 2, "malformed": 1}
        assert counts["restarts"] == 1
        assert _accounted(ing) == sent  # sent = received + all drops
        assert _metric(metrics, "awc_messages_received_total", modality="rgb") == 10
        assert _metric(metrics, "awc_messages_dropped_total", modality="rgb", reason="sequence_gap") == 3
        assert _metric(metrics, "awc_messages_dropped_total", modality="unknown", reason="unknown_topic") == 2
        msgs = ing.drain()
        assert [m.topic for m in msgs] == ["rgb"] * 10 + ["lidar", "gt"]  # arrival order
        assert [m.seq for m in msgs[:7]] == [0, 1, 3, 4, 7, 8, 9]
        assert ing.get(0.01) is None
    finally:
        pub.close()
        raw.close()
        ing.stop()
    assert not ing.running


def test_bounded_queue_counts_queue_full_and_garbage_never_grows_memory(ctx):
    ing = Ingest("tcp://127.0.0.1:0", bind=True, queue_size=5, context=ctx).start()
    pub = SensorPublisher(ing.endpoints[0], src="cam", context=ctx)
    raw = _raw_pub(ctx, ing.endpoints[0])
    try:
        assert pub.wait_connected(5.0, topics=("rgb",))
        for k in range(20):
            pub.send("rgb", T0 + k, kpts=KPTS)
        for _ in range(2000):
            raw.send_multipart([b"rgb", b"\xff" * 64, b"\x00" * 1024])
        assert _wait(lambda: _accounted(ing) >= 2020, 10.0), ing.counts
        assert ing.counts["received"] == {"rgb": 5}
        assert ing.counts["dropped"]["rgb"] == {"queue_full": 15, "malformed": 2000}
        assert ing.queue.qsize() == 5
        assert [m.seq for m in ing.drain()] == [0, 1, 2, 3, 4]
    finally:
        pub.close()
        raw.close()
        ing.stop()


def test_connect_mode_with_one_publisher_per_sensor(ctx):
    pubs = [SensorPublisher("tcp://127.0.0.1:0", bind=True, src=f"s{i}", context=ctx) for i in range(2)]
    ing = Ingest([p.endpoint for p in pubs], bind=False, context=ctx).start()
    try:
        assert all(p.wait_connected(5.0, topics=("lidar",)) for p in pubs)
        for k in range(5):
            for p in pubs:
                p.send("lidar", T0 + k, points=np.zeros((3, 3)))
        assert _wait(lambda: ing.received_total() >= 10)
        by_src = {}
        for m in ing.drain():
            by_src.setdefault(m.src, []).append(m.seq)
        assert by_src == {"s0": [0, 1, 2, 3, 4], "s1": [0, 1, 2, 3, 4]}
        assert ing.dropped_total() == 0
    finally:
        for p in pubs:
            p.close()
        t = time.monotonic()
        ing.stop()
        assert time.monotonic() - t < 2.0 and not ing.running


def test_bind_error_names_the_endpoint(ctx):
    first = Ingest("tcp://127.0.0.1:0", bind=True, context=ctx).start()
    try:
        with pytest.raises(ValueError, match="cannot bind"):
            Ingest(first.endpoints, bind=True, context=ctx).start()
    finally:
        first.stop()
    with pytest.raises(ValueError, match="topics"):
        Ingest("tcp://127.0.0.1:0", bind=True, topics=("pose",))


def test_each_queued_message_carries_the_messages_lost_before_it():
    """Gaps upstream, messages refused here and queue overflow all reach the next queued message of
    the same source (``Message.lost``), the one count the pipeline's input health uses."""
    ing = Ingest(["tcp://127.0.0.1:0"], bind=True, queue_size=3)   # not started: no socket

    def rgb(seq, kpts=KPTS):
        return wire.Message("rgb", "cam", seq, T0 + seq, T0 + seq, {"kpts": kpts})

    assert ing.accept(rgb(0)).lost == 0
    assert ing.accept(rgb(3)).lost == 2                             # 1, 2 lost upstream
    ing.handle(wire.encode(rgb(4))[:2] + [b"\0" * 7])              # refused here (bad buffer size)
    assert ing.accept(rgb(5)).lost == 1
    assert ing.accept(rgb(6)) is None                               # queue full: dropped here ...
    ing.drain()
    assert ing.accept(rgb(7)).lost == 1                             # ... and carried by the next one
    assert ing.accept(rgb(0)).lost == 0                             # a restart counts nothing
    assert ing.dropped_total("rgb", "sequence_gap") == 2 and ing.dropped_total("rgb", "queue_full") == 1
