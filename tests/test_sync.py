"""Tick synchronisation: nearest / newest / absent, WiFi windows, multi-rate and unordered input."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.sync import Due, SyncConfig, Synchronizer, TickClock
from sensors.core import schema
from sensors.core.wire import Message

MS = 1_000_000
T0 = 1_767_225_600_000_000_000  # on the 100 ms grid


def _msg(topic: str, t_ns: int, seq: int = 0, src: str = "s", value: float = 0.0, packets: int = 1) -> Message:
    if topic == "rgb":
        arrays = {"kpts": np.full((17, 2), value, np.float32)}
    elif topic in ("lidar", "mmwave"):
        arrays = {"points": np.full((3, 3 if topic == "lidar" else 5), value, np.float32)}
    elif topic == "wifi":
        vals = value + np.arange(packets, dtype=np.float32)[:, None, None]
        arrays = {"amp": np.broadcast_to(vals, (packets, 3, 114)).copy(), "phase": np.zeros((packets, 3, 114), np.float32)}
    else:
        arrays = {"joints": np.full((17, 3), value, np.float32)}
    extra = {"period_ns": 10 * MS} if topic == "wifi" else {}
    return Message(topic, src, seq, t_ns, t_ns, arrays, extra)


def test_config_validates_itself():
    with pytest.raises(ValueError, match="rate_hz"):
        SyncConfig(rate_hz=0)
    with pytest.raises(ValueError, match="max_age_s keys"):
        SyncConfig(max_age_s={"radar": 0.3})
    with pytest.raises(ValueError, match="buffer_len"):
        SyncConfig(buffer_len=0)
    cfg = SyncConfig(max_age_s={"wifi": 0.5})
    assert cfg.max_age_ns("wifi") == 500 * MS and cfg.max_age_ns("rgb") == 300 * MS
    assert cfg.period_ns == 100 * MS


def test_nearest_within_tolerance_then_newest_within_max_age_then_absent():
    sync = Synchronizer(SyncConfig())
    for i, dt in enumerate((-120, -30, 40)):       # rgb: nearest to T0 is -30 ms (not +40)
        sync.add(_msg("rgb", T0 + dt * MS, seq=i, value=dt))
    sync.add(_msg("lidar", T0 + 30 * MS, value=1))  # future but within tolerance: nearest
    sync.add(_msg("mmwave", T0 - 200 * MS, value=2))  # outside tolerance, within max age: newest
    sync.add(_msg("mmwave", T0 + 80 * MS, value=3))   # future beyond tolerance: never used
    tick = sync.tick(T0)
    assert tick.samples["rgb"].skew_s == pytest.approx(-0.03) and tick.samples["rgb"].seq == 1
    assert tick.samples["lidar"].skew_s == pytest.approx(0.03)
    assert tick.samples["mmwave"].skew_s == pytest.approx(-0.2)
    assert tick.samples["mmwave"].arrays["points"][0, 0] == 2
    assert tick.samples["wifi"] is None and tick.wifi_packets == 0
    np.testing.assert_array_equal(tick.presence(), [1, 1, 1, 0])
    assert tick.newest_ns["mmwave"] == T0 - 200 * MS and tick.newest_ns["wifi"] is None
    # 0.35 s later the old mmwave sample is too old; the +80 ms one is used (0.27 s old).
    later = sync.tick(T0 + 350 * MS)
    assert later.samples["mmwave"].arrays["points"][0, 0] == 3 and later.index == 1
    assert later.samples["rgb"] is None  # newest rgb (+40 ms) is 310 ms old
    np.testing.assert_array_equal(later.presence(), [0, 0, 1, 0])


def test_tie_prefers_the_past_sample_and_per_modality_max_age():
    sync = Synchronizer(SyncConfig(max_age_s={"lidar": 1.0}))
    sync.add(_msg("rgb", T0 + 20 * MS, value=1))
    sync.add(_msg("rgb", T0 - 20 * MS, value=2))
    sync.add(_msg("lidar", T0 - 800 * MS))
    sync.add(_msg("mmwave", T0 - 800 * MS))
    tick = sync.tick(T0)
    assert tick.samples["rgb"].arrays["kpts"][0, 0] == 2
    assert tick.samples["lidar"] is not None and tick.samples["mmwave"] is None


def test_out_of_order_and_late_arrivals_are_placed_by_capture_time():
    ordered, shuffled = Synchronizer(), Synchronizer()
    msgs = [_msg(m, T0 + k * 100 * MS + off * MS, seq=k, value=k)
            for k in range(10) for m, off in (("rgb", 3), ("lidar", -7), ("gt", 0))]
    for m in msgs:
        ordered.add(m)
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(msgs)):
        shuffled.add(msgs[i])
    for k in range(10):
        a, b = ordered.tick(T0 + k * 100 * MS), shuffled.tick(T0 + k * 100 * MS)
        for m in ("rgb", "lidar"):
            assert a.samples[m].seq == b.samples[m].seq == k
        np.testing.assert_array_equal(a.gt, b.gt)
        assert b.gt[0, 0] == k
    # A late sample (captured before the tick, arriving after) is used at the next tick by max age.
    late = Synchronizer()
    assert late.tick(T0).samples["rgb"] is None
    late.add(_msg("rgb", T0 - 10 * MS))
    assert late.tick(T0 + 100 * MS).samples["rgb"].skew_s == pytest.approx(-0.11)


def test_multi_rate_sensors_against_10hz_ticks():
    sync = Synchronizer()
    period30 = 1e9 / 30
    for k in range(60):  # 2 s of a 30 Hz camera, starting 5 ms after the grid
        sync.add(_msg("rgb", T0 + int(5 * MS + k * period30), seq=k))
    for k in range(10):  # 2 s of a 5 Hz LiDAR
        sync.add(_msg("lidar", T0 + k * 200 * MS + 1 * MS, seq=k))
    skews, lidar_seqs = [], []
    for k in range(1, 20):
        tick = sync.tick(T0 + k * 100 * MS)
        skews.append(abs(tick.samples["rgb"].skew_s))
        lidar_seqs.append(tick.samples["lidar"].seq)
    assert max(skews) <= 1 / 60 + 1e-6  # a 30 Hz sample is always within half its period
    # 5 Hz: each LiDAR sample serves the tick it lands on and the one after it (nearest, then newest).
    assert lidar_seqs == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]


def test_wifi_window_takes_packets_of_the_last_100ms_in_time_order():
    sync = Synchronizer()
    for k in range(25):  # 100 Hz single packets from T0 - 240 ms to T0
        sync.add(_msg("wifi", T0 - (24 - k) * 10 * MS, seq=k, value=k))
    tick = sync.tick(T0)
    assert tick.wifi_packets == 10
    np.testing.assert_array_equal(tick.samples["wifi"].arrays["amp"][:, 0, 0], np.arange(15, 25))
    assert tick.samples["wifi"].t_ns == T0 and tick.samples["wifi"].seq == 24
    assert tick.samples["wifi"].arrays["phase"].shape == (10, 3, 114)


def test_wifi_bursts_out_of_order_are_split_at_the_window_edge():
    sync = Synchronizer()
    # Bursts of 4 packets: values = packet index; last packet times T0+20, T0-20, T0-60, T0-100 ms.
    for b, last in enumerate((20, -20, -60, -100)):
        sync.add(_msg("wifi", T0 + last * MS, seq=b, value=100 * b, packets=4))
    tick = sync.tick(T0)
    # Window (T0-100, T0]: packets at -90..-60 (burst 2), -50..-20 (burst 1), -10..0 (burst 0, first 2).
    amp = tick.samples["wifi"].arrays["amp"][:, 0, 0]
    np.testing.assert_array_equal(amp, [200, 201, 202, 203, 100, 101, 102, 103, 0, 1])
    assert tick.wifi_packets == 10 and tick.samples["wifi"].t_ns == T0


def test_missing_and_bursty_input_never_blocks_a_tick():
    sync = Synchronizer()
    assert sync.tick(T0).presence().sum() == 0 and sync.newest_t_ns() is None
    for k in range(5):  # a burst of 5 rgb frames arriving at once after a 1 s outage
        sync.add(_msg("rgb", T0 + 1000 * MS + k * 10 * MS, seq=k))
    tick = sync.tick(T0 + 1040 * MS)
    assert tick.samples["rgb"].seq == 4 and tick.presence().tolist() == [1, 0, 0, 0]
    assert sync.newest_t_ns() == T0 + 1040 * MS


def test_buffers_are_bounded():
    sync = Synchronizer(SyncConfig(buffer_len=8))
    for k in range(1000):
        sync.add(_msg("lidar", T0 + k * MS, seq=k))
    assert sync.buffered("lidar") == 8
    sync.add(_msg("lidar", T0 - 10_000 * MS, seq=5000))  # very late: older than all, evicted at once
    assert sync.buffered("lidar") == 8
    assert sync.tick(T0 + 999 * MS).samples["lidar"].seq == 999
    sync.add(_msg("pose", T0))  # not an input: ignored
    assert sync.buffered("rgb") == 0


def test_gt_is_nearest_within_tolerance_only():
    sync = Synchronizer()
    sync.add(_msg("gt", T0 - 60 * MS, value=7))
    assert sync.tick(T0).gt is None
    assert sync.tick(T0 - 100 * MS).gt[0, 0] == 7
    assert sync.tick(T0).samples == {m: None for m in schema.MODALITIES}


def test_tick_clock_latest_wins_and_counts_skips():
    clock = TickClock(10.0, "wall")
    assert clock.due(T0 + 30 * MS) == Due(T0, 0)
    assert clock.due(T0 + 60 * MS) is None                  # same tick: nothing new
    assert clock.due(T0 + 100 * MS) == Due(T0 + 100 * MS, 0)
    assert clock.due(T0 + 450 * MS) == Due(T0 + 400 * MS, 2)  # fell behind: 200 and 300 skipped
    assert clock.skipped_total == 2
    assert clock.next_due_ns(T0 + 450 * MS) == T0 + 500 * MS
    assert clock.due(None) is None


def test_data_clock_with_delay_runs_each_frame_once_when_keeping_up():
    sync = Synchronizer()
    clock = TickClock(10.0, "data", delay_s=0.05)
    ran = []
    for f in range(5):
        t = T0 + f * 100 * MS
        for p in range(10):
            sync.add(_msg("wifi", t - (9 - p) * 10 * MS, seq=f * 10 + p))
            due = clock.due(sync.newest_t_ns())
            if due:
                ran.append(((due.tick_ns - T0) // MS, sync.tick(due.tick_ns).wifi_packets))
        sync.add(_msg("rgb", t, seq=f))
    # The tick at T is due once data 50 ms past T is seen: the first packet (T0 - 90 ms) starts the
    # clock at T0 - 200 ms (no packets yet); from T0 on, each window holds its frame's 10 packets.
    assert [r[0] for r in ran] == [-200, -100, 0, 100, 200, 300]
    assert [r[1] for r in ran] == [0, 0, 10, 10, 10, 10] and clock.skipped_total == 0
    with pytest.raises(ValueError, match="mode"):
        TickClock(10.0, "cpu")
