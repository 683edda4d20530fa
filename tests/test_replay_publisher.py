"""Publisher and MM-Fi replay over real ZeroMQ: what ReplayStats says was sent is what arrives."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import zmq
from fixtures.zmq_receiver import Receiver

from exporters.metrics import RuntimeMetrics
from runtime.ingest import Ingest
from sensors import cli, faults, mmfi, splits
from sensors.core import schema, wire
from sensors.publisher import SensorPublisher
from sensors.replay import ReplayError, replay

N_FRAMES = 30
T0 = 1_767_225_600_000_000_000
MS = 1_000_000


def _subject_in_s1_test(action_k: int = 0) -> str:
    return sorted(splits.s1_test_subjects(action_k))[0]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """One hand-made MM-Fi-format sequence (P1 S1 test) with N_FRAMES frame files: every 5th radar
    file is 0 bytes (no detections), lidar frame 7 is missing."""
    root = tmp_path_factory.mktemp("mmfi_hand")
    subject = _subject_in_s1_test()
    seq = root / schema.environment_of(subject) / subject / "A02"
    rng = np.random.default_rng(0)
    for m in schema.MODALITIES:
        (seq / schema.MMFI_FOLDERS[m]).mkdir(parents=True)
    for f in range(N_FRAMES):
        np.save(seq / "rgb" / schema.frame_file_name("rgb", f), rng.uniform(100, 400, (17, 2)).astype(np.float32))
        if f != 7:
            rng.normal(size=(50, 3)).tofile(seq / "lidar" / schema.frame_file_name("lidar", f))
        rng.normal(size=(0 if f % 5 == 0 else 8, 5)).tofile(seq / "mmwave" / schema.frame_file_name("mmwave", f))
        amp = rng.normal(40, 2, (3, 114, 10)) + np.arange(10) * 100  # packet k of frame f: mean 40 + 100 k
        scipy.io.savemat(seq / "wifi-csi" / schema.frame_file_name("wifi", f),
                         {"CSIamp": amp, "CSIphase": rng.uniform(-3, 3, (3, 114, 10))}, format="5")
    np.save(seq / "ground_truth.npy", rng.normal(size=(297, 17, 3)).astype(np.float32))
    return root


def _unseen_drops(stats, seqs: dict[str, list[int]]) -> dict[str, int]:
    """Drops before the first or after the last message a receiver saw of a topic: no gap reveals
    them (seq starts at 0; sent + dropped seq numbers were consumed per topic)."""
    out = {}
    for t in set(stats.sent) | set(stats.dropped):
        consumed = stats.sent.get(t, 0) + stats.dropped.get(t, 0)
        out[t] = consumed - (max(seqs[t]) - min(seqs[t]) + 1) if seqs.get(t) else consumed
    return out


def _seqs(msgs) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in msgs:
        out.setdefault(m.topic, []).append(m.seq)
    return out


def _tally(frames):
    valid, invalid, gaps, msgs = Counter(), Counter(), Counter(), []
    last: dict[tuple[str, str], int] = {}
    for fr in frames:
        try:
            m = wire.decode(fr)
        except wire.WireError as err:
            invalid[(err.modality, err.reason)] += 1
            key, seq = (err.modality, err.src), err.seq
        else:
            valid[m.topic] += 1
            msgs.append(m)
            key, seq = (m.topic, m.src), m.seq
        if key in last and seq > last[key] + 1:
            gaps[key[0]] += seq - last[key] - 1
        last[key] = seq
    return valid, invalid, gaps, msgs


@pytest.fixture()
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def test_publisher_waits_for_the_subscription_and_counts_seq_per_topic(ctx):
    rx = Receiver(ctx)
    with SensorPublisher(rx.endpoint, src="cam-1", station="room-1", context=ctx) as pub:
        assert pub.wait_connected(5.0, topics=("rgb", "wifi"))
        assert pub.send("rgb", T0, kpts=np.zeros((17, 2))) == 0
        assert pub.send("rgb", T0 + 1, kpts=np.zeros((17, 2))) == 1
        csi = {"amp": np.zeros((2, 3, 114)), "phase": np.zeros((2, 3, 114))}
        assert pub.send("wifi", T0, **csi) == 0
        assert pub.skip("wifi") == 1
        assert pub.send("wifi", T0 + 20 * MS, **csi) == 2
        with pytest.raises(ValueError, match="unknown modality"):
            pub.send("depth", T0, image=np.zeros(3))
    valid, invalid, gaps, msgs = _tally(rx.close())
    assert valid == {"rgb": 2, "wifi": 2} and not invalid and gaps == {"wifi": 1}
    wifi = [m for m in msgs if m.topic == "wifi"][0]
    assert wifi.extra == {"station": "room-1", "period_ns": 10 * MS} and wifi.src == "cam-1"


def test_wait_connected_times_out_without_a_subscriber(ctx):
    with SensorPublisher("tcp://127.0.0.1:0", bind=True, context=ctx) as pub:
        t = time.monotonic()
        assert not pub.wait_connected(0.3)
        assert 0.25 < time.monotonic() - t < 2.0
    with pytest.raises(ValueError, match="cannot connect"):
        SensorPublisher("nonsense://x", context=ctx)


def test_replay_with_drops_and_faults_matches_what_arrives(ctx, small_root):
    rx = Receiver(ctx)
    flt = ["lidar:stop@1+1", "rgb:nan@2+0.5", "mmwave:freeze@0.5+1", "wifi:skew@2=0.2"]
    stats = replay(small_root, rx.endpoint, protocol="P1", split="S1", subset="test", rate=0, jitter_ms=3,
                   drop_prob=0.1, faults=flt, seed=3, max_frames=N_FRAMES, start_ns=T0, context=ctx)
    valid, invalid, gaps, msgs = _tally(rx.close())
    assert stats.frames == N_FRAMES and len(stats.sequences) == 1 and stats.capture_s == pytest.approx(3.0)
    # Every sent message arrived: valid + refused (NaN keypoints) per topic, and gaps = random drops
    # (except drops after a topic's last message, which no receiver can see).
    unseen = _unseen_drops(stats, _seqs(msgs))  # the first/last rgb are never NaN here
    for topic in (*schema.MODALITIES, "gt"):
        refused = sum(n for (m, _), n in invalid.items() if m == topic)
        assert valid[topic] + refused == stats.sent.get(topic, 0), topic
        assert gaps[topic] + unseen.get(topic, 0) == stats.dropped.get(topic, 0), topic
    assert set(invalid) <= {("rgb", "non_finite")} and invalid[("rgb", "non_finite")] >= 1
    assert stats.dropped.get("gt", 0) == 0 and stats.sent["gt"] == N_FRAMES
    assert sum(stats.dropped.values()) > 0
    # Planned message counts: lidar frame 7 is missing; lidar is stopped for frames 10..19.
    assert stats.suppressed == {"lidar": 10} and stats.faulted["lidar:stop"] == 10
    assert stats.sent["lidar"] + stats.dropped.get("lidar", 0) == N_FRAMES - 1 - 10
    assert stats.sent["wifi"] + stats.dropped.get("wifi", 0) == N_FRAMES * 10
    assert stats.faulted["rgb:nan"] == 5 and stats.faulted["mmwave:freeze"] == 10
    assert stats.faulted["wifi:skew"] == 91  # packets captured from 2.0 s: the last of frame 20, then 21..29
    # Timing: frames on the 100 ms grid, WiFi packets 10 ms apart ending at the frame time.
    by_topic: dict[str, list[wire.Message]] = {}
    for m in msgs:
        by_topic.setdefault(m.topic, []).append(m)
    gt_times = [m.t_ns for m in by_topic["gt"]]
    assert gt_times == [T0 + f * 100 * MS for f in range(N_FRAMES)]
    wifi_first = [m for m in by_topic["wifi"] if m.t_ns < T0 + 100 * MS]
    assert all((m.t_ns - T0) % (10 * MS) == 0 and m.t_ns >= T0 - 90 * MS for m in wifi_first)
    skewed = [m for m in by_topic["wifi"] if m.t_ns >= T0 + 2200 * MS]
    assert skewed and all((m.t_ns - T0 - 200 * MS) % (10 * MS) == 0 for m in skewed)
    # Empty radar frames travel as [0, 5]; freeze repeats frame 4's points during 0.5-1.5 s.
    radar = {(m.t_ns - T0) // (100 * MS): m.arrays["points"] for m in by_topic["mmwave"]}
    assert any(p.shape == (0, 5) for f, p in radar.items() if f % 5 == 0 and not 5 <= f < 15)
    frozen = [p for f, p in radar.items() if 5 <= f < 15]
    assert all(np.array_equal(p, frozen[0]) for p in frozen) and frozen[0].shape == (8, 5)
    # Per-topic sequence numbers rise in send order (jitter never reorders one sensor).
    for topic, ms in by_topic.items():
        seqs = [m.seq for m in ms]
        assert seqs == sorted(seqs), topic


def test_replay_into_ingest_keeps_the_accounting_invariant(ctx, small_root):
    metrics = RuntimeMetrics()
    ing = Ingest("tcp://127.0.0.1:0", bind=True, metrics=metrics, context=ctx).start()
    try:
        stats = replay(small_root, ing.endpoints[0], sequences=[_seq_name()], rate=0, drop_prob=0.2,
                       faults=["lidar:nan@0.5+0.5"], seed=1, max_frames=20, start_ns=T0, wifi_burst=5,
                       context=ctx)
        total = stats.total_sent() + sum(stats.dropped.values())
        deadline = time.monotonic() + 5
        while ing.received_total() + ing.dropped_total() < total - 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # drops at a topic's start or end stay unseen
        msgs = ing.drain()
        unseen = sum(_unseen_drops(stats, _seqs(msgs)).values())  # lidar NaN only mid-stream
        assert ing.received_total() + ing.dropped_total() + unseen == total
        assert ing.dropped_total(reason="sequence_gap") + unseen == sum(stats.dropped.values())
        assert ing.dropped_total("lidar", "non_finite") == stats.sent["lidar"] - ing.received_total("lidar")
        assert ing.dropped_total("lidar", "non_finite") >= 1
        assert stats.sent["wifi"] + stats.dropped.get("wifi", 0) == 20 * 2  # bursts of 5 packets
        for m in schema.MODALITIES:
            assert metrics.registry.get_sample_value("awc_messages_received_total", {"modality": m}) == \
                ing.received_total(m)
        wifi = [m for m in msgs if m.topic == "wifi"]
        assert all(m.arrays["amp"].shape == (5, 3, 114) for m in wifi)
    finally:
        ing.stop()


def _seq_name() -> str:
    subject = _subject_in_s1_test()
    return f"{schema.environment_of(subject)}/{subject}/A02"


def test_replay_real_time_pacing(ctx, small_root):
    rx = Receiver(ctx)
    stats = replay(small_root, rx.endpoint, sequences=[_seq_name()], rate=4.0, max_frames=6, send_gt=False,
                   context=ctx)
    valid, *_ = _tally(rx.close())
    assert 0.6 * 0.6 / 4 < stats.wall_s < 3.0  # 0.6 s of capture at 4x
    assert "gt" not in valid and valid["rgb"] == 6


def test_real_time_replay_sends_each_message_at_its_capture_time(ctx, small_root):
    rx = Receiver(ctx)
    stats = replay(small_root, rx.endpoint, sequences=[_seq_name()], rate=1.0, max_frames=4, context=ctx)
    _, _, _, msgs = _tally(rx.close())
    assert stats.start_ns % (100 * MS) == 0 and len(msgs) == 4 * 14
    lateness_ms = np.array([(m.sent_ns - m.t_ns) / MS for m in msgs])
    assert lateness_ms.min() > -1.0 and np.median(lateness_ms) < 50.0, lateness_ms
    rgb = sorted(m.t_ns for m in msgs if m.topic == "rgb")
    assert rgb == [stats.start_ns + f * 100 * MS for f in range(4)]


def test_replay_refuses_without_subscriber_and_with_bad_arguments(ctx, small_root):
    with pytest.raises(ReplayError, match="no subscriber"):
        replay(small_root, "tcp://127.0.0.1:0", bind=True, sequences=[_seq_name()], connect_timeout_s=0.2,
               context=ctx)
    with pytest.raises(ValueError, match="drop probability"):
        replay(small_root, "tcp://127.0.0.1:0", drop_prob=1.5)
    with pytest.raises(ValueError, match="ENV/SUBJECT/ACTION"):
        replay(small_root, "tcp://127.0.0.1:0", bind=True, sequences=["S01/A02"], context=ctx)


def test_cli_replay_prints_and_writes_stats(ctx, small_root, tmp_path, capsys):
    rx = Receiver(ctx)
    out = tmp_path / "stats.json"
    code = cli.main(["replay", "--data", str(small_root), "--connect", rx.endpoint, "--rate", "0",
                     "--max-frames", "5", "--fault", "rgb:stop@0.2", "--drop", "0.1", "--seed", "2",
                     "--stats-json", str(out), "--no-progress"])
    valid, invalid, gaps, _ = _tally(rx.close())
    assert code == 0
    stats = json.loads(out.read_text())
    assert stats["frames"] == 5 and stats["suppressed"] == {"rgb": 3}
    assert {t: valid[t] for t in stats["sent"]} == stats["sent"]
    _, _, _, msgs = _tally(rx.frames)
    unseen = _unseen_drops(SimpleNamespace(**stats), _seqs(msgs))
    assert {t: gaps[t] + unseen[t] for t in unseen if gaps[t] + unseen[t]} == stats["dropped"]
    assert "replayed 5 frames" in capsys.readouterr().out
    assert cli.main(["replay", "--data", str(small_root), "--fault", "rgb:melt@1"]) == 2


def test_fault_injector_is_reproducible_and_freeze_repeats_the_last_frame():
    spec = [faults.parse_fault("rgb:noise@1+1=50"), faults.parse_fault("lidar:freeze@1")]
    a, b = (faults.FaultInjector(spec, np.random.default_rng(7)) for _ in range(2))
    kpts = np.full((17, 2), 300.0)
    assert a.apply("rgb", 0.5, {"kpts": kpts}).labels == ()
    noisy_a, noisy_b = a.apply("rgb", 1.5, {"kpts": kpts}), b.apply("rgb", 1.5, {"kpts": kpts})
    np.testing.assert_array_equal(noisy_a.arrays["kpts"], noisy_b.arrays["kpts"])
    assert 20 < np.std(noisy_a.arrays["kpts"] - 300) < 80 and noisy_a.labels == ("rgb:noise",)
    a.apply("lidar", 0.9, {"points": np.ones((4, 3))})
    frozen = a.apply("lidar", 5.0, {"points": np.zeros((9, 3))})
    np.testing.assert_array_equal(frozen.arrays["points"], np.ones((4, 3)))
    with pytest.raises(ValueError, match="modality:kind@start_s"):
        faults.parse_fault("lidar@3")


def test_replay_of_the_generated_tiny_dataset_sends_the_files_values(ctx, tiny_dataset):
    rx = Receiver(ctx)
    stats = replay(tiny_dataset, rx.endpoint, protocol="P1", split="S1", subset="test", rate=0,
                   max_frames=12, start_ns=T0, context=ctx)
    _, invalid, gaps, msgs = _tally(rx.close())
    assert not invalid and not gaps and stats.frames == 12
    key = mmfi.SequenceKey(*stats.sequences[0].split("/"))
    assert (key.subject, key.action) in splits.subset_pairs("P1", "S1", "test")
    seq_dir = key.path(tiny_dataset)
    by_topic = {}
    for m in msgs:
        by_topic.setdefault(m.topic, []).append(m)
    f = 3
    rgb = next(m for m in by_topic["rgb"] if m.t_ns == T0 + f * 100 * MS)
    np.testing.assert_array_equal(rgb.arrays["kpts"], mmfi.read_frame(seq_dir, "rgb", f))
    csi = mmfi.read_frame(seq_dir, "wifi", f)
    packets = [m for m in by_topic["wifi"] if T0 + (f - 1) * 100 * MS < m.t_ns <= T0 + f * 100 * MS]
    amp = np.concatenate([m.arrays["amp"] for m in packets])
    np.testing.assert_array_equal(amp, np.moveaxis(csi.amp, -1, 0).astype(np.float32))
    gt = next(m for m in by_topic["gt"] if m.t_ns == T0 + f * 100 * MS)
    np.testing.assert_array_equal(gt.arrays["joints"], mmfi.read_ground_truth(seq_dir)[f])
    radar = [m.arrays["points"].shape[0] for m in by_topic["mmwave"]]
    assert len(radar) == 12  # one message per frame, empty clouds included


def test_nodrop_publisher_pushes_back_on_a_stalled_receiver_instead_of_losing_silently(ctx):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 10)
    sub.setsockopt(zmq.LINGER, 0)
    sub.bind("tcp://127.0.0.1:0")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    with SensorPublisher(sub.getsockopt_string(zmq.LAST_ENDPOINT), src="x", context=ctx, sndhwm=10,
                         nodrop=True, send_timeout_s=0.2) as pub:
        deadline = time.monotonic() + 5
        while not pub.wait_connected(0.01) and time.monotonic() < deadline:
            sub.poll(10)  # a SUB sends its subscription when it is polled
        points = np.zeros((1000, 3))
        for k in range(5000):  # the receiver reads nothing: buffers fill, then a send times out
            if not pub.send_message(wire.Message("lidar", "x", k, T0 + k, T0, {"points": points})):
                break
        assert pub.timeouts == {"lidar": 1} and 10 < pub.sent["lidar"] < 5000
        got = 0
        while sub.poll(300):
            sub.recv_multipart()
            got += 1
        assert got == pub.sent["lidar"]  # everything that was "sent" arrived
    sub.close()


def test_replayed_streams_sync_into_complete_ticks(ctx, small_root):
    """Replay -> ingest -> synchroniser: every frame's tick finds all four modalities and its 10 CSI
    packets; the missing LiDAR file (frame 7) falls back to the previous frame by max age."""
    from runtime.sync import Synchronizer, TickClock

    ing = Ingest("tcp://127.0.0.1:0", bind=True, context=ctx).start()
    try:
        replay(small_root, ing.endpoints[0], sequences=[_seq_name()], rate=0, max_frames=12, start_ns=T0,
               context=ctx)
        msgs = []
        deadline = time.monotonic() + 5
        while len(msgs) < 12 * 14 - 1 and time.monotonic() < deadline:
            msgs += ing.drain() or ([m] if (m := ing.get(0.05)) else [])
    finally:
        ing.stop()
    sync, clock, ticks = Synchronizer(), TickClock(10.0, "data", delay_s=0.05), []
    for m in msgs:
        sync.add(m)
        due = clock.due(sync.newest_t_ns())
        if due is not None:
            ticks.append(sync.tick(due.tick_ns))
    ticks = [t for t in ticks if t.tick_ns >= T0]
    assert [(t.tick_ns - T0) // (100 * MS) for t in ticks] == list(range(11))  # frame 11 has no later data
    assert clock.skipped_total == 0
    for f, tick in enumerate(ticks):
        assert tick.presence().tolist() == [1, 1, 1, 1] and tick.wifi_packets == 10, f
        assert tick.gt is not None and tick.samples["rgb"].skew_s == 0.0
        assert tick.samples["lidar"].skew_s == pytest.approx(-0.1 if f == 7 else 0.0)
        assert tick.samples["mmwave"].arrays["points"].shape == ((0, 5) if f % 5 == 0 else (8, 5))
        amp = tick.samples["wifi"].arrays["amp"]
        np.testing.assert_allclose(amp.mean(axis=(1, 2)) - 100 * np.arange(10), 40, atol=0.5)


def test_frame_messages_put_radar_columns_in_wire_order(small_root):
    from sensors.replay import frame_messages

    seq_dir = small_root / _seq_name()
    disk = ("x", "y", "z", "doppler_mps", "snr_db")  # a dataset that stores velocity before SNR
    as_is = {t: a for t, _, a, _ in frame_messages(seq_dir, 1, T0, None)}
    swapped = {t: a for t, _, a, _ in frame_messages(seq_dir, 1, T0, None, mmwave_columns=disk)}
    np.testing.assert_array_equal(swapped["mmwave"]["points"][:, [3, 4]], as_is["mmwave"]["points"][:, [4, 3]])
    assert "gt" not in as_is and as_is["wifi"]["amp"].shape == (1, 3, 114)
    with pytest.raises(ValueError, match="mmwave_columns"):
        replay(small_root, "tcp://127.0.0.1:0", bind=True, mmwave_columns=("x", "y"))
