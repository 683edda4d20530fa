"""Property-based tests of tick synchronisation and input health: whatever the decoder lets through,
sync picks only samples inside its windows, its buffers stay bounded, a flood far from "now" never
evicts the good samples, and every health component is a finite number in [0, 1]."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.health import COMPONENTS, HealthConfig, InputHealthChecker
from runtime.sync import SyncConfig, Synchronizer
from sensors.core import schema, wire

NOW = 1_700_000_000_000_000_000
MS = 1_000_000
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _msg(topic: str, t_ns: int, seq: int = 0, packets: int = 1, period_ns: int = 10 * MS) -> wire.Message:
    arrays = {"rgb": lambda: {"kpts": np.zeros((17, 2), np.float32)},
              "lidar": lambda: {"points": np.zeros((5, 3), np.float32)},
              "mmwave": lambda: {"points": np.zeros((2, 5), np.float32)},
              "wifi": lambda: {"amp": np.zeros((packets, 3, 114), np.float32),
                               "phase": np.zeros((packets, 3, 114), np.float32)}}[topic]()
    extra = {"period_ns": period_ns} if topic == "wifi" else {}
    return wire.Message(topic, "s", seq, t_ns, t_ns, arrays, extra)


offsets_ms = st.one_of(st.integers(-400, 400), st.integers(-10 ** 7, 10 ** 7))
streams = st.lists(st.tuples(st.sampled_from(schema.MODALITIES), offsets_ms, st.integers(1, 12),
                             st.integers(1, 1000)), max_size=120)


@SETTINGS
@given(stream=streams, tick_offset_ms=st.integers(-200, 200))
def test_a_tick_takes_only_samples_inside_its_windows(stream, tick_offset_ms):
    cfg = SyncConfig()
    sync = Synchronizer(cfg)
    for topic, off, packets, period_ms in stream:
        sync.add(_msg(topic, NOW + off * MS, packets=packets, period_ns=period_ms * 100_000), now_ns=NOW)
    for topic in schema.MODALITIES:
        assert sync.buffered(topic) <= cfg.buffer_len
    tick_ns = NOW + tick_offset_ms * MS
    out = sync.tick(tick_ns)
    for m, sample in out.samples.items():
        if sample is None:
            continue
        skew = sample.t_ns - tick_ns
        assert -cfg.max_age_ns(m) <= skew <= int(cfg.tolerance_s * 1e9), (m, skew)
    if out.samples["wifi"] is not None:
        assert out.wifi_packets == out.samples["wifi"].arrays["amp"].shape[0] >= 1


@SETTINGS
@given(good=st.integers(1, 40), flood=st.integers(1, 500), far_s=st.integers(3, 10 ** 6),
       future=st.booleans())
def test_a_flood_far_from_now_never_evicts_good_samples(good, flood, far_s, future):
    sync = Synchronizer(SyncConfig(buffer_len=64))
    for k in range(good):   # one real sample every 100 ms up to now
        sync.add(_msg("lidar", NOW - (good - 1 - k) * 100 * MS, seq=k), now_ns=NOW)
    sign = 1 if future else -1
    for i in range(flood):
        sync.add(_msg("lidar", NOW + sign * (far_s * 10 ** 9 + i * MS), seq=10 ** 6 + i), now_ns=NOW)
    picked = sync.tick(NOW).samples["lidar"]
    assert picked is not None and picked.t_ns == NOW


@SETTINGS
@given(burst=st.integers(2, 10), lag_ms=st.integers(0, 90), jitter_ms=st.integers(0, 20))
def test_late_csi_bursts_do_not_make_wifi_missing(burst, lag_ms, jitter_ms):
    """Bursts of P packets whose last packet lies after the tick (not yet arrived when the tick runs):
    the tick still finds the earlier packets, newest within the maximum age."""
    sync = Synchronizer(SyncConfig())
    tick = NOW
    last = tick - lag_ms * MS - burst * 10 * MS - jitter_ms * MS   # the previous burst, fully arrived
    sync.add(_msg("wifi", last, packets=burst), now_ns=tick)
    sample = sync.tick(tick).samples["wifi"]
    assert sample is not None and sample.t_ns == last


arrays_for = {
    "rgb": st.sampled_from([0.0, 320.0, -1e6, 1e6, np.nan, np.inf, 3e38]).map(
        lambda v: {"kpts": np.full((17, 2), v, np.float32)}),
    "lidar": st.integers(0, 200).flatmap(lambda n: st.sampled_from([0.0, 1.0, -1e6, 1e6, np.nan, -np.inf]).map(
        lambda v, n=n: {"points": np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32) * 0 + v})),
    "mmwave": st.integers(0, 50).map(lambda n: {"points": np.random.default_rng(n).normal(size=(n, 5)) * 1e5}),
    "wifi": st.sampled_from([np.nan, np.inf, 0.0, 40.0, 1e6]).map(
        lambda v: {"amp": np.full((3, 3, 114), v, np.float32), "phase": np.zeros((3, 3, 114), np.float32)}),
}


@SETTINGS
@given(data=st.data(), ticks=st.integers(1, 25), lead_s=st.floats(-1e6, 1e6), age_s=st.floats(-1e3, 1e3),
       lost=st.integers(0, 10 ** 6))
def test_every_health_component_is_finite_and_in_unit_range(data, ticks, lead_s, age_s, lost):
    checker = InputHealthChecker(HealthConfig(noise_warmup=2, startup_grace_ticks=0))
    for t in range(ticks):
        for m in schema.MODALITIES:
            arrays = data.draw(st.one_of(st.none(), arrays_for[m]))
            h = checker.observe(m, arrays, age_s=age_s, lead_s=lead_s, message_id=("s", t), received=1,
                                lost=lost)
            values = [getattr(h, c) for c in COMPONENTS]
            assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (m, values)
            assert 0.0 <= h.score <= 1.0 and h.worst() in COMPONENTS
            if arrays is not None and any(not np.isfinite(np.asarray(a)).all() for a in arrays.values()
                                          if np.asarray(a).size) and m != "wifi":
                assert h.non_finite > 0   # NaN/inf never scores as healthy
