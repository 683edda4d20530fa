"""Wire protocol v1: round trips for every topic, every drop reason, and the documented example."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest

from sensors.core import schema, wire

T0 = 1_700_000_000_000_000_000
REPO = Path(__file__).resolve().parents[1]


def _msg(topic: str, **kw) -> wire.Message:
    rng = np.random.default_rng(0)
    arrays = {
        "rgb": {"kpts": rng.uniform(0, 480, (17, 2)), "score": rng.uniform(0, 1, 17)},
        "lidar": {"points": rng.normal(size=(1200, 3))},
        "mmwave": {"points": rng.normal(size=(7, 5))},
        "wifi": {"amp": rng.normal(40, 3, (4, 3, 114)), "phase": rng.uniform(-3, 3, (4, 3, 114))},
        "gt": {"joints": rng.normal(size=(17, 3))},
        "pose": {"joints": rng.normal(size=(17, 3)), "presence": np.array([1, 1, 0, 1]),
                 "shapley": rng.normal(size=4), "degradation": rng.uniform(size=4)},
    }[topic]
    extra = {"wifi": {"period_ns": 10_000_000}, "pose": {"tick": 12, "latency_ns": 3_400_000}}.get(topic, {})
    base = dict(topic=topic, src=f"{topic}-0", seq=41, t_ns=T0, sent_ns=T0 + 2_000_000, arrays=arrays,
                extra={"station": "room-1", **extra})
    base.update(kw)
    return wire.Message(**base)


def _frames(topic="rgb", header_update=None, drop_keys=(), buffers=None, **kw) -> list[bytes]:
    """Encode a valid message, then tamper with its header/buffers."""
    frames = wire.encode(_msg(topic, **kw))
    header = msgpack.unpackb(frames[1], raw=False)
    header.update(header_update or {})
    for k in drop_keys:
        header.pop(k)
    return [frames[0], msgpack.packb(header, use_bin_type=True), *(frames[2:] if buffers is None else buffers)]


@pytest.mark.parametrize("topic", wire.TOPICS)
def test_round_trip_every_topic(topic):
    msg = _msg(topic)
    frames = wire.encode(msg)
    assert frames[0] == topic.encode() and len(frames) == 2 + len(msg.arrays)
    out = wire.decode(frames)
    assert (out.topic, out.src, out.seq, out.t_ns, out.sent_ns) == (topic, msg.src, 41, T0, T0 + 2_000_000)
    assert out.extra == msg.extra
    assert list(out.arrays) == list(msg.arrays)
    for name, arr in msg.arrays.items():
        spec = {s.name: s for s in wire.ARRAY_SPECS[topic]}[name]
        assert out.arrays[name].dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(out.arrays[name], np.asarray(arr).astype(spec.dtype))


def test_decode_is_zero_copy_and_accepts_memoryviews():
    frames = wire.encode(_msg("lidar"))
    out = wire.decode([memoryview(f) for f in frames])
    assert not out.arrays["points"].flags.owndata and not out.arrays["points"].flags.writeable
    assert np.shares_memory(out.arrays["points"], np.frombuffer(frames[2], dtype="<f4"))


def test_empty_radar_frame_and_nan_csi_are_valid():
    empty = wire.decode(wire.encode(_msg("mmwave", arrays={"points": np.zeros((0, 5))})))
    assert empty.arrays["points"].shape == (0, 5)
    amp = np.full((1, 3, 114), np.nan)
    amp[0, 0, 0] = np.inf
    out = wire.decode(wire.encode(_msg("wifi", arrays={"amp": amp, "phase": amp.copy()})))
    assert np.isnan(out.arrays["amp"]).sum() == 3 * 114 - 1


def test_wifi_packet_times_end_at_t_ns():
    out = wire.decode(wire.encode(_msg("wifi")))
    np.testing.assert_array_equal(out.packet_times_ns(), T0 - 10_000_000 * np.arange(3, -1, -1))


def test_encode_rejects_wrong_shape_and_unknown_array():
    with pytest.raises(ValueError, match=r"expected shape \[17, 2\]"):
        wire.encode(_msg("rgb", arrays={"kpts": np.zeros((16, 2))}))
    with pytest.raises(ValueError, match="unknown array"):
        wire.encode(_msg("gt", arrays={"joints": np.zeros((17, 3)), "extra": np.zeros(3)}))
    with pytest.raises(ValueError, match="clash"):
        wire.encode(_msg("gt", extra={"seq": 3}))


def _reason(frames, limits=wire.DEFAULT_LIMITS) -> wire.WireError:
    with pytest.raises(wire.WireError) as info:
        wire.decode(frames, limits)
    assert info.value.reason in schema.DROP_REASONS
    return info.value


def test_garbage_and_framing_errors():
    assert _reason([b"\x00\xff garbage"]).reason == "malformed"
    assert _reason(b"rgb").reason == "malformed"
    assert _reason([b"\xde\xad\xbe\xef", b"x"]).reason == "unknown_topic"
    err = _reason([b"rgbx", wire.encode(_msg("rgb"))[1]])
    assert (err.reason, err.modality) == ("unknown_topic", schema.UNKNOWN_MODALITY)
    assert _reason([b"rgb", b"\xc1\xc1 not msgpack"]).reason == "malformed"
    assert _reason([b"rgb", msgpack.packb([1, 2, 3])]).reason == "malformed"
    assert _reason([b"rgb", msgpack.packb({1: 2})]).reason == "malformed"  # strict_map_key
    frames = wire.encode(_msg("rgb"))
    err = _reason(frames[:-1])  # header lists 2 arrays, 1 buffer came
    assert (err.reason, err.modality, err.src, err.seq) == ("malformed", "rgb", "rgb-0", 41)


def test_header_errors():
    assert _reason(_frames(header_update={"v": 2})).reason == "bad_version"
    assert _reason(_frames(drop_keys=("sent_ns",))).reason == "malformed"
    assert _reason(_frames(header_update={"mod": "lidar"})).reason == "malformed"
    assert _reason(_frames(header_update={"seq": -1})).reason == "malformed"
    assert _reason(_frames(header_update={"src": ""})).reason == "malformed"
    assert _reason(_frames("pose", drop_keys=("tick",))).reason == "malformed"
    assert _reason(_frames("wifi", header_update={"period_ns": 0})).reason == "out_of_range"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -5, 2 ** 63])
def test_bad_timestamps_are_non_finite(value):
    err = _reason(_frames(header_update={"t_ns": value}))
    assert err.reason == "non_finite" and err.seq == 41


def test_float_timestamp_is_accepted_when_finite():
    assert wire.decode(_frames(header_update={"t_ns": 1.5e18})).t_ns == 1_500_000_000_000_000_000


def test_dtype_errors():
    frames = _frames(header_update={"arrays": [{"name": "kpts", "dtype": "<f8", "shape": [17, 2]},
                                               {"name": "score", "dtype": "<f4", "shape": [17]}]})
    assert _reason(frames).reason == "bad_dtype"
    frames = _frames(header_update={"arrays": [{"name": "kpts", "dtype": ">f4", "shape": [17, 2]},
                                               {"name": "score", "dtype": "<f4", "shape": [17]}]})
    assert _reason(frames).reason == "bad_dtype"
    frames = _frames(header_update={"arrays": [{"name": "kpts", "dtype": "O", "shape": [17, 2]},
                                               {"name": "score", "dtype": "<f4", "shape": [17]}]})
    assert _reason(frames).reason == "bad_dtype"  # object dtype would mean pickle: never
    pose = _frames("pose")
    header = msgpack.unpackb(pose[1])
    header["arrays"][1]["dtype"] = "|u1"  # numpy's own spelling of a byte: accepted
    assert wire.decode([pose[0], msgpack.packb(header), *pose[2:]]).arrays["presence"].tolist() == [1, 1, 0, 1]


def test_shape_errors():
    frames = wire.encode(_msg("lidar"))
    assert _reason([*frames[:2], frames[2][:-4]]).reason == "bad_shape"  # buffer one point short
    hdr = {"arrays": [{"name": "points", "dtype": "<f4", "shape": [10, 4]}]}
    assert _reason(_frames("lidar", header_update=hdr)).reason == "bad_shape"
    hdr = {"arrays": [{"name": "points", "dtype": "<f4", "shape": [3]}]}
    assert _reason(_frames("lidar", header_update=hdr)).reason == "bad_shape"
    hdr = {"arrays": [{"name": "points", "dtype": "<f4", "shape": ["3", 3]}]}
    assert _reason(_frames("lidar", header_update=hdr)).reason == "bad_shape"
    wifi = _frames("wifi", buffers=[wire.encode(_msg("wifi"))[2]] * 2)
    header = msgpack.unpackb(wifi[1])
    header["arrays"][1]["shape"] = [0, 3, 114]
    assert _reason([wifi[0], msgpack.packb(header), wifi[2], b""]).reason == "bad_shape"  # P >= 1


def test_huge_declared_shape_with_tiny_buffer_allocates_nothing():
    limits = wire.WireLimits(max_points={"lidar": 10 ** 15, "mmwave": 10 ** 15})
    hdr = {"arrays": [{"name": "points", "dtype": "<f4", "shape": [10 ** 14, 3]}]}
    frames = _frames("lidar", header_update=hdr, buffers=[b"\x00" * 12])
    tracemalloc.start()
    err = _reason(frames, limits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.reason == "bad_shape" and peak < 1_000_000
    # With the default limits the same header is refused as oversized before the buffer is read.
    assert _reason(frames).reason == "oversized"


def test_point_and_packet_limits():
    n = schema.MAX_MMWAVE_POINTS + 1
    err = _reason(wire.encode(_msg("mmwave", arrays={"points": np.zeros((n, 5))})))
    assert err.reason == "oversized"
    small = wire.WireLimits(max_wifi_packets=3)
    assert _reason(wire.encode(_msg("wifi")), small).reason == "oversized"  # 4 packets
    assert wire.decode(wire.encode(_msg("wifi")), wire.WireLimits(max_wifi_packets=4)).arrays["amp"].shape[0] == 4


def test_non_finite_points_and_keypoints():
    pts = np.zeros((5, 3))
    pts[2, 1] = np.nan
    assert _reason(wire.encode(_msg("lidar", arrays={"points": pts}))).reason == "non_finite"
    kpts = np.zeros((17, 2))
    kpts[3, 0] = np.inf
    err = _reason(wire.encode(_msg("rgb", arrays={"kpts": kpts})))
    assert (err.reason, err.modality, err.src) == ("non_finite", "rgb", "rgb-0")


def test_limits_validate_themselves():
    with pytest.raises(ValueError, match="max_points"):
        wire.WireLimits(max_points={"wifi": 3})
    with pytest.raises(ValueError, match="min_t_ns"):
        wire.WireLimits(min_t_ns=10, max_t_ns=5)


def _doc_example() -> tuple[list[bytes], dict]:
    text = (REPO / "docs" / "wire.md").read_text()
    block = re.search(r"<!-- hex-example -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/wire.md lost its hex example block"
    parts: dict[str, bytes] = {}
    for line in block.group(1).strip().splitlines():
        label, hexpart = line.split(":", 1)
        parts[label.strip()] = parts.get(label.strip(), b"") + bytes.fromhex(hexpart)
    frames = list(parts.values())
    values = re.search(r"<!-- example-values -->\s*```python\n(.*?)```", text, re.S)
    assert values, "docs/wire.md lost its example values block"
    return frames, eval(values.group(1), {"np": np})  # noqa: S307 - our own document


def test_documented_hex_example_decodes_to_documented_values():
    frames, expected = _doc_example()
    msg = wire.decode(frames)
    assert msg.topic == expected["topic"] and msg.src == expected["src"] and msg.seq == expected["seq"]
    assert msg.t_ns == expected["t_ns"] and msg.sent_ns == expected["sent_ns"]
    assert msg.extra == expected["extra"]
    np.testing.assert_array_equal(msg.arrays["kpts"], expected["kpts"])
    # And the encoder still produces exactly the documented bytes.
    again = wire.Message(topic=msg.topic, src=msg.src, seq=msg.seq, t_ns=msg.t_ns, sent_ns=msg.sent_ns,
                         arrays={"kpts": expected["kpts"]}, extra=expected["extra"])
    assert wire.encode(again) == frames


def test_documented_standalone_client_talks_to_the_ingest():
    import zmq

    from runtime.ingest import Ingest

    text = (REPO / "docs" / "wire.md").read_text()
    block = re.search(r"<!-- client-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/wire.md lost its client example"
    namespace: dict = {}
    exec(compile(block.group(1), "docs/wire.md", "exec"), namespace)  # noqa: S102 - our own document
    ctx = zmq.Context()
    ing = Ingest("tcp://127.0.0.1:0", bind=True, context=ctx).start()
    try:
        namespace["lidar_client"](ing.endpoints[0], frames=3)
        msgs = [ing.get(2.0) for _ in range(3)]
        assert [m.seq for m in msgs] == [0, 1, 2] and ing.dropped_total() == 0
        assert msgs[0].arrays["points"].shape == (1200, 3) and msgs[0].station == "room-1"
    finally:
        ing.stop()
        ctx.term()
