"""Property-based tests of the wire decoder: whatever arrives, ``decode`` returns a Message whose
every value is bounded, or raises a WireError with a documented reason, and nothing else."""

from __future__ import annotations

import math

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensors.core import schema, wire

T0 = 1_700_000_000_000_000_000
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any msgpack value: what a hostile client can put anywhere in a header.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=20),
    st.sampled_from([0, 1, -1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 1.0, 3e38, "rgb", "kpts", "<f4", "|u1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _valid(topic: str, rows: int = 3) -> wire.Message:
    rng = np.random.default_rng(rows)
    arrays = {
        "rgb": {"kpts": rng.uniform(0, 480, (17, 2))},
        "lidar": {"points": rng.normal(size=(rows, 3))},
        "mmwave": {"points": rng.normal(size=(rows, 5))},
        "wifi": {"amp": rng.normal(40, 3, (max(rows, 1), 3, 114)), "phase": rng.uniform(-3, 3, (max(rows, 1), 3, 114))},
        "gt": {"joints": rng.normal(size=(17, 3))},
        "pose": {"joints": rng.normal(size=(17, 3)), "presence": np.ones(4), "shapley": np.zeros(4),
                 "degradation": np.zeros(4)},
    }[topic]
    extra = {"wifi": {"period_ns": 10_000_000}, "pose": {"tick": 1, "latency_ns": 5}}.get(topic, {})
    return wire.Message(topic=topic, src="s", seq=0, t_ns=T0, sent_ns=T0, arrays=arrays, extra=extra)


def _check_bounded(msg: wire.Message, limits: wire.WireLimits = wire.DEFAULT_LIMITS) -> None:
    """What the rest of the runtime may rely on after a successful decode."""
    assert msg.topic in wire.TOPICS
    assert isinstance(msg.src, str) and 0 < len(msg.src) <= wire.MAX_SRC_LEN
    assert type(msg.seq) is int and 0 <= msg.seq <= 2 ** 64 - 1
    for t in (msg.t_ns, msg.sent_ns):
        assert type(t) is int and limits.min_t_ns <= t <= limits.max_t_ns
    specs = {s.name: s for s in wire.ARRAY_SPECS[msg.topic]}
    for name, arr in msg.arrays.items():
        assert arr.dtype == np.dtype(specs[name].dtype)
        if arr.dtype.kind == "f":
            mag = np.abs(arr[np.isfinite(arr)])
            assert not mag.size or mag.max() <= limits.max_abs_value
    if msg.topic == "wifi":
        times = msg.packet_times_ns()
        assert times.dtype == np.int64 and times.min() >= limits.min_t_ns and times.max() == msg.t_ns
        assert 1 <= times.size <= limits.max_wifi_packets
    if msg.topic == "pose":
        assert all(type(msg.extra[k]) is int and 0 <= msg.extra[k] < 2 ** 63 for k in ("tick", "latency_ns"))


def _decode_or_reason(frames) -> wire.Message | None:
    try:
        msg = wire.decode(frames)
    except wire.WireError as err:
        assert err.reason in schema.DROP_REASONS
        assert err.modality in (*wire.TOPICS, schema.UNKNOWN_MODALITY)
        return None
    _check_bounded(msg)
    return msg


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_escape(frames):
    _decode_or_reason(frames)


@SETTINGS
@given(topic=st.sampled_from(wire.TOPICS), key=st.sampled_from([*wire.CORE_KEYS, "period_ns", "tick",
                                                                 "latency_ns", "station", "x"]),
       value=values)
def test_any_header_value_is_bounded_or_refused(topic, key, value):
    frames = wire.encode(_valid(topic))
    header = msgpack.unpackb(frames[1], raw=False)
    header[key] = value
    _decode_or_reason([frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]])


@SETTINGS
@given(topic=st.sampled_from(wire.TOPICS), index=st.integers(0, 3), field=st.sampled_from(["name", "dtype", "shape"]),
       value=values)
def test_any_array_entry_is_bounded_or_refused(topic, index, field, value):
    frames = wire.encode(_valid(topic))
    header = msgpack.unpackb(frames[1], raw=False)
    entries = header["arrays"]
    entries[index % len(entries)][field] = value
    _decode_or_reason([frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]])


@SETTINGS
@given(topic=st.sampled_from(wire.TOPICS), data=st.data())
def test_mutated_buffers_are_bounded_or_refused(topic, data):
    frames = wire.encode(_valid(topic))
    i = data.draw(st.integers(2, len(frames) - 1))
    buf = bytearray(frames[i])
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "extreme"]))
    if how == "flip" and buf:
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        del buf[data.draw(st.integers(0, len(buf))):]
    elif how == "extend":
        buf += data.draw(st.binary(min_size=1, max_size=16))
    elif how == "extreme" and len(buf) >= 4:
        value = data.draw(st.sampled_from([3e38, -3e38, math.inf, math.nan, 1e6, 1.0000001e6, 65504.0]))
        at = 4 * data.draw(st.integers(0, len(buf) // 4 - 1))
        buf[at:at + 4] = np.float32(value).tobytes()
    _decode_or_reason([*frames[:i], bytes(buf), *frames[i + 1:]])


@SETTINGS
@given(packets=st.integers(1, schema.MAX_WIFI_PACKETS), period=st.integers(1, wire.MAX_PERIOD_NS),
       t_ns=st.integers(0, 2 ** 63 - 1))
def test_wifi_packet_times_never_overflow(packets, period, t_ns):
    amp = np.zeros((packets, 3, 114), np.float32)
    msg = wire.Message(topic="wifi", src="w", seq=0, t_ns=t_ns, sent_ns=t_ns, arrays={"amp": amp, "phase": amp},
                       extra={"period_ns": period})
    out = _decode_or_reason(wire.encode(msg))
    first = t_ns - (packets - 1) * period
    assert (out is None) == (first < 0)   # refused exactly when the first packet would precede the epoch


@SETTINGS
@given(topic=st.sampled_from(wire.TOPICS), rows=st.integers(0, 50), seq=st.integers(0, 2 ** 64 - 1),
       t_ns=st.integers(10 ** 12, 2 ** 63 - 1), src=st.text(min_size=1, max_size=wire.MAX_SRC_LEN))
def test_valid_messages_round_trip(topic, rows, seq, t_ns, src):
    msg = _valid(topic, rows)
    msg.seq, msg.t_ns, msg.sent_ns, msg.src = seq, t_ns, t_ns, src
    out = wire.decode(wire.encode(msg))
    _check_bounded(out)
    assert (out.topic, out.src, out.seq, out.t_ns) == (topic, src, seq, t_ns)
    for name, arr in msg.arrays.items():
        np.testing.assert_array_equal(out.arrays[name], np.asarray(arr).astype(out.arrays[name].dtype))


def test_version_must_be_the_integer_one():
    frames = wire.encode(_valid("rgb"))
    header = msgpack.unpackb(frames[1], raw=False)
    for bad in (1.0, True, "1", 2):
        header["v"] = bad
        try:
            wire.decode([frames[0], msgpack.packb(header), frames[2]])
        except wire.WireError as err:
            assert err.reason == "bad_version", bad
        else:
            raise AssertionError(f"v={bad!r} was accepted")


def test_unhashable_array_name_is_malformed():
    frames = wire.encode(_valid("lidar"))
    header = msgpack.unpackb(frames[1], raw=False)
    header["arrays"][0]["name"] = ["points"]
    try:
        wire.decode([frames[0], msgpack.packb(header), frames[2]])
    except wire.WireError as err:
        assert err.reason == "malformed"
    else:
        raise AssertionError("a list as array name was accepted")


def test_extreme_finite_points_are_out_of_range():
    msg = _valid("lidar", 5)
    msg.arrays["points"][2, 1] = 3e38
    try:
        wire.decode(wire.encode(msg))
    except wire.WireError as err:
        assert err.reason == "out_of_range"
    else:
        raise AssertionError("a point at 3e38 m was accepted")
