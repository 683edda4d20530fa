"""The station viewer without a browser: frames from the wire and from recordings, the hub's
latest-wins queues and counters, and `runtime view` serving live frames over Server-Sent Events."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")

from exporters.pose_publisher import PosePublisher  # noqa: E402
from exporters.recorder import open_recorder  # noqa: E402
from runtime.config import free_loopback_port  # noqa: E402
from runtime.degradation import dominant_reasons  # noqa: E402
from runtime.view.bench import synthetic_pose  # noqa: E402
from runtime.view.frames import frame_from_message, load_recording, page_config  # noqa: E402
from runtime.view.hub import Hub, SubscriberConfig  # noqa: E402
from runtime.view.launch import connect_endpoint  # noqa: E402
from sensors.core import schema, wire  # noqa: E402
from sensors.core.pose_record import PoseRecord  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JOINTS = np.arange(51, dtype=np.float32).reshape(17, 3) / 100


def _roundtrip(msg: wire.Message) -> list[bytes]:
    return [bytes(f) for f in wire.encode(msg)]


def test_frame_from_a_pose_message_carries_what_the_page_draws():
    msg = wire.decode(_roundtrip(synthetic_pose("ward-3", 42, JOINTS, reasons=["", "missing", "", "noise"]).to_message()))
    f = frame_from_message(msg)
    assert f["station"] == "ward-3" and f["tick"] == 42 and f["latency_ns"] == 4_000_000
    np.testing.assert_allclose(f["joints"], JOINTS, atol=1e-4)
    assert f["presence"] == [1, 1, 1, 1] and abs(sum(f["shares"]) - 1) < 1e-3
    assert f["reasons"] == ["", "missing", "", "noise"] and f["degraded"] == [0, 0, 0, 0]
    assert f["rehab"] is None and f["points"] is None and f["gt"] is None
    json.dumps(f, allow_nan=False)


def test_rehab_outputs_pass_through_when_the_stream_has_them():
    msg = synthetic_pose("s", 1, JOINTS).to_message()
    msg.extra["rehab"] = {"reps": 3, "last_rom_deg": 87.5, "angles": {"left_knee": 120.0}}
    f = frame_from_message(wire.decode(_roundtrip(msg)))
    assert f["rehab"] == {"reps": 3, "last_rom_deg": 87.5, "angles": {"left_knee": 120.0}}
    msg.extra["rehab"] = {"reps": 1, "angles_deg": {"knee": float("nan")}, "trace": [1.5, float("inf")]}
    f = frame_from_message(wire.decode(_roundtrip(msg)))
    assert f["rehab"]["angles_deg"] == {"knee": None} and f["rehab"]["trace"] == [1.5, None]
    json.dumps(f, allow_nan=False)                            # whatever the header held, the page gets JSON


def _records(n: int) -> list[dict]:
    out = []
    for t in range(n):
        rec = {"tick": t, "tick_ns": 1_000 + t * schema.FRAME_PERIOD_NS, "outcome": "fused", "latency_ns": 5,
               "presence": np.array([1, int(t < 3), 1, 1], np.uint8), "joints": JOINTS + t,
               "degradation": np.array([0, 0.9 * (t >= 3), 0, 0], np.float32),
               "degraded": np.array([0, int(t >= 4), 0, 0], np.uint8),
               "reasons": ["", "missing" if t >= 3 else "", "", ""],
               "input_t_ns": np.zeros(4, np.int64)}
        if t >= 2:   # no contribution window yet on the first ticks
            rec.update(shapley=np.full(4, 0.5, np.float32), shares=np.full(4, 0.25, np.float32))
        if t == 1:
            rec["joints"] = np.full((17, 3), np.nan, np.float32)
        if t >= 4:
            n = len(getattr(schema, "ANGLE_CHANNELS", ())) or 3
            rec.update(exercise="squat", session="", reps=t // 2, angles=np.full(n, 90.0 + t, np.float32))
        out.append(rec)
    return out


@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_recordings_of_the_runtime_play_back_as_frames(tmp_path, suffix):
    path = tmp_path / f"poses{suffix}"
    rec = open_recorder(path)
    for r in _records(6):
        rec.write(r)
    rec.close()
    frames = load_recording(path)
    assert [f["tick"] for f in frames] == list(range(6))
    assert frames[0]["shares"] is None and frames[2]["shares"] == [0.25] * 4
    assert frames[1]["joints"][0] == [None, None, None]            # NaN -> null, the page skips it
    assert frames[4]["degraded"] == [0, 1, 0, 0] and frames[4]["reasons"][1] == "missing"
    assert frames[0]["station"] == "poses"
    assert frames[0]["rehab"] is None and frames[5]["rehab"]["reps"] == 2
    assert list(frames[5]["rehab"]["angles_deg"].values())[:1] == [95.0]
    json.dumps(frames, allow_nan=False)
    thinned = load_recording(path, max_frames=3)
    assert [f["tick"] for f in thinned] == [0, 2, 5]               # evenly over the whole recording


def test_bad_recordings_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        load_recording(tmp_path / "poses.csv")
    with pytest.raises(FileNotFoundError):
        load_recording(tmp_path / "missing.jsonl")
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"tick": 0, "joints": []}\n{"tick": 1, "joi')
    assert [f["tick"] for f in load_recording(cut)] == [0]   # a line cut short by a killed process: skipped
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    with pytest.raises(ValueError, match="none of its lines"):
        load_recording(garbage)
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="runtime serve --record"):
        load_recording(other)


def test_idle_ticks_are_not_counted_as_lost_only_missing_messages_are():
    # a runtime without sensor data publishes nothing for a while: its ticks jump, its seq does not
    hub = Hub()
    for seq, tick in ((0, 10), (1, 11), (2, 400), (4, 402), (0, 3)):     # 3 lost, then a restart
        msg = synthetic_pose("a", tick, JOINTS).to_message()
        msg.seq = seq
        hub.receive(_roundtrip(msg))
    assert hub.stats.lost == 1 and hub.stats.received == 5


def test_hub_keeps_the_newest_frame_per_station_and_counts_what_is_lost():
    hub = Hub()
    slow = hub.add_client()
    for tick in (1, 2, 5):                                   # 3 and 4 never arrived
        assert hub.receive(_roundtrip(synthetic_pose("a", tick, JOINTS).to_message())) is not None
    hub.receive(_roundtrip(synthetic_pose("b", 7, JOINTS).to_message()))
    assert hub.stats.lost == 2 and hub.stats.received == 4
    assert {s: f["tick"] for s, f in slow.pending.items()} == {"a": 5, "b": 7}
    assert slow.coalesced == 2 and slow.event.is_set()
    late = hub.add_client()                                  # a page opened now starts from the newest
    assert {s: f["tick"] for s, f in late.pending.items()} == {"a": 5, "b": 7}
    assert hub.receive([b"pose", b"\xc1not msgpack"]) is None
    gt = wire.Message(schema.GT_TOPIC, "x", 0, 1, 1, {"joints": JOINTS})
    assert hub.receive(_roundtrip(gt)) is None
    assert hub.stats.unreadable == 1 and hub.stats.not_pose == 1


def test_subscriber_config_refuses_plaintext_off_loopback_and_bad_endpoints():
    SubscriberConfig("tcp://127.0.0.1:5556")
    with pytest.raises(ValueError, match="plaintext"):
        SubscriberConfig("tcp://192.0.2.10:5556")
    with pytest.raises(ValueError, match="endpoint"):
        SubscriberConfig("127.0.0.1:5556")
    assert connect_endpoint("tcp://*:5556") == "tcp://127.0.0.1:5556"
    assert connect_endpoint("tcp://0.0.0.0:5556") == "tcp://127.0.0.1:5556"
    assert connect_endpoint("tcp://10.1.2.3:5556") == "tcp://10.1.2.3:5556"


def test_dominant_reason_names_the_largest_component():
    r = dominant_reasons([1.0, 0.0, 0.1, 0.0], ["missing", "stale", "noise", "frozen"],
                         [0.0, 0.6, 0.2, 0.0], [0.0, 0.0, 0.0, 0.01])
    assert r == ("missing", "disagreement", "disagreement", "")


def test_page_config_colours_left_and_right():
    c = page_config("live", "tcp://127.0.0.1:5556")
    assert c["side"][schema.JOINT_INDEX["left_wrist"]] == "left"
    assert c["side"][schema.JOINT_INDEX["right_knee"]] == "right"
    assert c["side"][schema.JOINT_INDEX["pelvis"]] == "centre"
    assert len(c["edges"]) == len(schema.SKELETON_EDGES) and c["modalities"] == list(schema.MODALITIES)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def test_runtime_view_streams_live_frames_over_sse_and_serves_its_assets(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    port = free_loopback_port()
    pub = PosePublisher(endpoint, bind=True)
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "view", "--connect", endpoint, "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(base + "/healthz")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "runtime view did not come up"
                time.sleep(0.1)
        assert b"importmap" in _get(base + "/")
        assert b"REVISION" in _get(base + "/static/vendor/three.core.js")      # vendored, not a CDN
        assert json.loads(_get(base + "/api/config"))["mode"] == "live"
        # Publish until the SUB socket is connected (slow joiner), then read frames from the SSE stream.
        tick, got = 0, []
        with urllib.request.urlopen(base + "/api/events", timeout=5) as events:
            while len(got) < 5:
                assert time.monotonic() < deadline + 10, f"only {len(got)} frames over SSE"
                pub.publish(synthetic_pose("st-1", tick, JOINTS))
                tick += 1
                line = events.readline().decode()
                while line.strip():
                    if line.startswith("data:") and '"tick"' in line:
                        got.append(json.loads(line[5:]))
                    line = events.readline().decode()
        assert all(f["station"] == "st-1" for f in got)
        assert [f["tick"] for f in got] == sorted(f["tick"] for f in got)
        stats = json.loads(_get(base + "/api/stats"))
        assert stats["received"] >= 5 and stats["stations"] == ["st-1"] and stats["unreadable"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        pub.close()
    assert proc.returncode in (0, -15)      # uvicorn re-raises the SIGTERM it handled


def test_runtime_view_needs_exactly_one_source(capsys):
    from runtime.cli import main

    with pytest.raises(SystemExit):
        main(["view"])
    assert main(["view", "--recording", "nope.csv"]) == 2


def _stats(base: str) -> dict | None:
    try:
        return json.loads(_get(base + "/api/stats"))
    except OSError:
        return None


STALLED_SENDS = 20_000


def test_a_stalled_viewer_never_blocks_the_pose_publisher_and_its_losses_are_counted():
    """The viewer process frozen (SIGSTOP): the runtime's PUB keeps publishing at full speed, ZeroMQ
    drops for this subscriber only at its small receive HWM, and the viewer counts the gap."""
    import signal

    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    port = free_loopback_port()
    pub = PosePublisher(endpoint, bind=True, send_hwm=50)
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "view", "--connect", endpoint, "--port", str(port),
                             "--rcv-hwm", "5"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    tick, deadline = 0, time.monotonic() + 30

    def send():
        nonlocal tick
        pub.publish(synthetic_pose("st", tick, JOINTS))
        tick += 1

    try:
        while not ((s := _stats(base)) and s["received"] > 0):          # connected and reading
            assert proc.poll() is None and time.monotonic() < deadline, "runtime view received nothing"
            send()
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        t0 = time.perf_counter()
        for _ in range(STALLED_SENDS):
            send()
        elapsed = time.perf_counter() - t0
        proc.send_signal(signal.SIGCONT)
        assert elapsed < 30.0, f"publishing {STALLED_SENDS} poses took {elapsed:.1f} s with the viewer stalled"
        # Resumed, it reads what its buffers held, then the newest; every tick is received or counted lost.
        while not ((s := _stats(base)) and s["tick_span"]["st"][1] == tick - 1):
            assert time.monotonic() < deadline + 30, f"the viewer did not catch up: {s}"
            send()
            time.sleep(0.05)
        first, last = s["tick_span"]["st"]
        assert s["received"] + s["lost"] == last - first + 1  # the publisher's seq follows the tick here
        assert s["lost"] > STALLED_SENDS // 2, s                 # most were dropped for this viewer only
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)
        pub.close()


def test_forwarded_points_travel_on_the_pose_stream_to_the_page():
    from runtime.config import OutputConfig
    from runtime.pipeline import forwarded_points

    class Sample:
        def __init__(self, points):
            self.arrays = {"points": points}

    lidar = np.random.default_rng(0).normal([3, 0, 0], 0.3, (1200, 3)).astype(np.float32)
    samples = {"lidar": Sample(lidar), "mmwave": Sample(np.zeros((0, 5), np.float32))}
    assert forwarded_points(samples, 0) is None
    points = forwarded_points(samples, 256)
    assert points["lidar"].shape == (256, 3) and points["mmwave"].shape == (0, 5)
    np.testing.assert_array_equal(points["lidar"][[0, -1]], lidar[[0, -1]])    # evenly over the cloud
    def record(points):
        return PoseRecord(tick=1, tick_ns=1, joints=JOINTS, presence=np.ones(4), degradation=np.zeros(4),
                          degraded=np.zeros(4), station="s", points=points)

    f = frame_from_message(wire.decode(_roundtrip(record(points).to_message())))
    assert len(f["points"]["lidar"]) == 256 and f["points"]["mmwave"] == []
    bad = wire.encode(record({"mmwave": np.zeros((schema.MAX_MMWAVE_POINTS + 1, 5), np.float32)}).to_message())
    with pytest.raises(wire.WireError, match="exceed"):
        wire.decode(bad)
    with pytest.raises(ValueError, match="forward_points"):
        OutputConfig(forward_points=-1)
