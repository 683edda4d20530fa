"""Wire protocol v1: one sensor sample = one ZeroMQ multipart message (docs/wire.md).

    frame 0   topic, ASCII: rgb | lidar | mmwave | wifi | gt | pose
    frame 1   msgpack map: v, mod, src, seq, t_ns, sent_ns, arrays=[{name, dtype, shape}, ...], extras
    frame 2…  one raw C-contiguous little-endian buffer per entry of ``arrays``, in that order

``decode`` trusts nothing: it checks the frame count, the header map and its types, the version,
topic against ``mod``, every array's name, dtype and shape, the shape against the buffer length
(before anything is allocated), point/packet limits, timestamps, and NaN/inf where values must be
finite. Every failure is a ``WireError`` whose ``reason`` is one of ``schema.DROP_REASONS``.
Never pickle: msgpack is unpacked with ``raw=False``, ``strict_map_key`` and small length caps.
Only numpy and msgpack are used, so a station needs nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgpack
import numpy as np

from sensors.core import schema

WIRE_VERSION = 1
INPUT_TOPICS: tuple[str, ...] = schema.MODALITIES
TOPICS: tuple[str, ...] = (*schema.MODALITIES, schema.GT_TOPIC, schema.POSE_TOPIC)
CORE_KEYS: tuple[str, ...] = ("v", "mod", "src", "seq", "t_ns", "sent_ns", "arrays")
WIFI_PERIOD_NS = int(round(1e9 / schema.WIFI_PACKET_RATE_HZ))  # default spacing of CSI packets
MAX_SRC_LEN = 128
MAX_PERIOD_NS = 1_000_000_000    # WiFi period_ns above 1 s is refused (no CSI rate is that low)
MAX_ABS_VALUE = 1e6              # |value| bound of every float array (m, px, dB, m/s, rad); see below
_U64_MAX = 2 ** 64 - 1
_I64_MAX = 2 ** 63 - 1


class WireError(ValueError):
    """A message that cannot be accepted.

    reason: one of ``schema.DROP_REASONS``; modality: the topic (``schema.UNKNOWN_MODALITY`` when
    the topic is not known); src/seq: taken from the header when it was readable (so a receiver can
    keep its sequence tracking in step), else None.
    """

    def __init__(self, reason: str, modality: str, detail: str, *, src: str | None = None,
                 seq: int | None = None):
        if reason not in schema.DROP_REASONS:
            raise ValueError(f"WireError reason must be one of {schema.DROP_REASONS}, got {reason!r}")
        super().__init__(f"[{modality}/{reason}] {detail}")
        self.reason = reason
        self.modality = modality
        self.detail = detail
        self.src = src
        self.seq = seq


ArraySpec = schema.ArraySpec
_J = schema.N_JOINTS
ARRAY_SPECS: dict[str, tuple[ArraySpec, ...]] = {
    **{m: spec.wire for m, spec in schema.MODALITY_SPECS.items()},
    schema.GT_TOPIC: (ArraySpec("joints", "<f4", (_J, 3), finite=True),),
    schema.POSE_TOPIC: (ArraySpec("joints", "<f4", (_J, 3)),
                        ArraySpec("presence", "<u1", (schema.N_MODALITIES,)),
                        ArraySpec("shapley", "<f4", (schema.N_MODALITIES,)),
                        ArraySpec("degradation", "<f4", (schema.N_MODALITIES,)),
                        # optional: the sensor points the tick used, forwarded for viewers
                        *(ArraySpec(f"{m}_points", "<f4", (None, len(schema.MODALITY_SPECS[m].columns)),
                                    required=False, finite=True) for m in schema.POINT_MODALITIES)),
}
# Pose-stream arrays of forwarded sensor points -> their modality.
POINT_ARRAYS: dict[str, str] = {f"{m}_points": m for m in schema.POINT_MODALITIES}
# Header fields a topic must carry besides the core keys (name -> description), all unsigned ints.
REQUIRED_EXTRAS: dict[str, tuple[str, ...]] = {schema.POSE_TOPIC: ("tick", "latency_ns")}
# Single-byte dtypes have no byte order: numpy spells them "|u1"; both spellings are accepted.
_DTYPE_ALIASES = {"|u1": "<u1", "|i1": "<i1", "|b1": "<b1"}


@dataclass(frozen=True)
class WireLimits:
    """Hard limits on anything that comes off the wire (a hostile-input guard)."""

    max_points: dict = field(default_factory=lambda: {m: schema.MODALITY_SPECS[m].max_points
                                                      for m in schema.POINT_MODALITIES})
    max_wifi_packets: int = schema.MAX_WIFI_PACKETS
    max_header_bytes: int = 64 * 1024
    min_t_ns: int = 0               # capture/send times must lie in [min_t_ns, max_t_ns]
    max_t_ns: int = 2 ** 63 - 1     # int64 nanoseconds (year 2262)
    # Finite values beyond this magnitude are refused (reason out_of_range): physical values are
    # far below it, and float32 arithmetic on values near 3e38 overflows to inf/NaN downstream.
    max_abs_value: float = MAX_ABS_VALUE

    def __post_init__(self):
        unknown = set(self.max_points) - set(schema.POINT_MODALITIES)
        if unknown:
            raise ValueError(f"WireLimits.max_points takes the point modalities {list(schema.POINT_MODALITIES)}, "
                             f"got {sorted(unknown)}")
        if min(self.max_points.values(), default=1) < 0 or self.max_wifi_packets < 1:
            raise ValueError("WireLimits: point limits must be >= 0 and max_wifi_packets >= 1")
        if not 0 <= self.min_t_ns < self.max_t_ns <= _I64_MAX:
            raise ValueError(f"WireLimits: need 0 <= min_t_ns < max_t_ns <= 2**63-1, got {self.min_t_ns}, "
                             f"{self.max_t_ns}")
        if not (math.isfinite(self.max_abs_value) and self.max_abs_value > 0):
            raise ValueError(f"WireLimits: max_abs_value must be a positive finite number, got {self.max_abs_value}")

    def max_rows(self, topic: str, name: str = "") -> int:
        """Limit on the variable (first) dimension of the array ``name`` of ``topic``."""
        if topic == schema.POSE_TOPIC:   # forwarded points: lidar_points, mmwave_points
            return self.max_points[POINT_ARRAYS[name]]
        return self.max_wifi_packets if is_csi(topic) else self.max_points[topic]


DEFAULT_LIMITS = WireLimits()


def is_csi(topic: str) -> bool:
    """Whether ``topic`` is a CSI modality (a packet stream: several packets per message, ``period_ns``)."""
    spec = schema.spec_of(topic)
    return spec is not None and spec.kind == schema.CSI


@dataclass
class Message:
    """One decoded (or to-be-encoded) message. Times are ns since the Unix epoch."""

    topic: str                  # "rgb" "lidar" "mmwave" "wifi" "gt" "pose"
    src: str                    # sensor id; seq counts per (topic, src)
    seq: int
    t_ns: int                   # capture time (wifi: of the last packet)
    sent_ns: int
    arrays: dict[str, np.ndarray]  # name -> array, in frame order
    extra: dict = field(default_factory=dict)  # station, period_ns (wifi), tick, latency_ns (pose), ...
    lost: int = 0               # receiver side, never on the wire: messages of this (topic, src) that
                                # did not reach the receiver's queue just before this one (runtime.ingest)
    key: str = ""               # receiver side: the allow-listed key that sent it ("" on a plaintext socket)

    @property
    def source(self) -> tuple[str, str]:
        """(key, src): who sent it, as the receiver judges sources (one key cannot speak for another)."""
        return self.key, self.src

    @property
    def station(self) -> str | None:
        return self.extra.get("station")

    def packet_times_ns(self) -> np.ndarray:
        """CSI (wifi): capture time of each of the P packets (int64 [P], oldest first)."""
        p = _rows(self.arrays)
        period = int(self.extra.get("period_ns", WIFI_PERIOD_NS))
        # decode bounds period_ns (<= MAX_PERIOD_NS) and P (<= max_wifi_packets), and checks that the
        # oldest packet time is >= min_t_ns: this int64 arithmetic cannot overflow.
        return np.int64(self.t_ns) - np.int64(period) * np.arange(p - 1, -1, -1, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------
def encode(msg: Message) -> list[bytes]:
    """Message -> multipart frames [topic, header, buffers...].

    Arrays are converted to the wire dtype of their spec (e.g. float64 points -> ``<f4``) and made
    C-contiguous; shapes are checked so a sender learns of a mistake before the receiver drops it.
    """
    if msg.topic not in ARRAY_SPECS:
        raise ValueError(f"unknown topic {msg.topic!r}: expected one of {TOPICS}")
    clash = set(msg.extra) & set(CORE_KEYS)
    if clash:
        raise ValueError(f"extra header fields {sorted(clash)} clash with the core keys {CORE_KEYS}")
    specs = {s.name: s for s in ARRAY_SPECS[msg.topic]}
    entries, buffers = [], []
    for name, arr in msg.arrays.items():
        if name not in specs:
            raise ValueError(f"{msg.topic}: unknown array {name!r}; expected {sorted(specs)}")
        wire = np.ascontiguousarray(arr, dtype=np.dtype(specs[name].dtype))
        _check_shape_for_encode(msg.topic, specs[name], wire.shape)
        entries.append({"name": name, "dtype": specs[name].dtype, "shape": list(wire.shape)})
        buffers.append(wire.tobytes())
    missing = [s.name for s in specs.values() if s.required and s.name not in msg.arrays]
    if missing:
        raise ValueError(f"{msg.topic}: missing array(s) {missing}")
    header = {"v": WIRE_VERSION, "mod": msg.topic, "src": str(msg.src), "seq": int(msg.seq),
              "t_ns": int(msg.t_ns), "sent_ns": int(msg.sent_ns), **msg.extra, "arrays": entries}
    return [msg.topic.encode("ascii"), msgpack.packb(header, use_bin_type=True), *buffers]


def _check_shape_for_encode(topic: str, spec: ArraySpec, shape: tuple[int, ...]) -> None:
    ok = len(shape) == len(spec.shape) and all(w is None or w == s for w, s in zip(spec.shape, shape))
    if not ok:
        want = ["N" if w is None else w for w in spec.shape]
        raise ValueError(f"{topic}.{spec.name}: expected shape {want}, got {list(shape)}")


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def decode(frames: list, limits: WireLimits = DEFAULT_LIMITS) -> Message:
    """Multipart frames (bytes, bytearray, memoryview or zmq.Frame) -> validated Message.

    Arrays are read-only numpy views on the received buffers (no copy). Raises WireError.
    """
    if not isinstance(frames, list | tuple) or len(frames) < 2:
        n = len(frames) if isinstance(frames, list | tuple) else type(frames).__name__
        raise WireError("malformed", schema.UNKNOWN_MODALITY,
                        f"expected at least 2 frames [topic, header, buffers...], got {n}")
    topic = _topic(frames[0])
    header = _header(frames[1], topic, limits)
    src, seq = _src_seq(header, topic)
    try:
        return _decode_body(frames, topic, header, src, seq, limits)
    except WireError as err:
        err.src, err.seq = src, seq
        raise


def _decode_body(frames, topic: str, header: dict, src: str, seq: int, limits: WireLimits) -> Message:
    t_ns = _timestamp(header, "t_ns", topic, limits)
    sent_ns = _timestamp(header, "sent_ns", topic, limits)
    if header["mod"] != topic:
        raise WireError("malformed", topic, f"header mod {header['mod']!r} differs from topic {topic!r}")
    extra = {k: v for k, v in header.items() if k not in CORE_KEYS}
    _check_extras(topic, extra)
    entries = header["arrays"]
    if not isinstance(entries, list) or len(entries) != len(frames) - 2:
        n = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise WireError("malformed", topic, f"header lists {n} arrays but {len(frames) - 2} buffer frames came")
    specs = {s.name: s for s in ARRAY_SPECS[topic]}
    arrays: dict[str, np.ndarray] = {}
    for entry, frame in zip(entries, frames[2:]):
        name, dtype, shape = _entry(entry, topic, specs)
        if name in arrays:
            raise WireError("malformed", topic, f"array {name!r} appears twice")
        arrays[name] = _array(frame, topic, specs[name], dtype, shape, limits)
    missing = [s.name for s in specs.values() if s.required and s.name not in arrays]
    if missing:
        raise WireError("malformed", topic, f"missing array(s) {missing}; {topic} carries {sorted(specs)}")
    _check_rows_agree(topic, arrays)
    if is_csi(topic):
        _check_packet_span(topic, t_ns, _rows(arrays), extra, limits)
    return Message(topic=topic, src=src, seq=seq, t_ns=t_ns, sent_ns=sent_ns, arrays=arrays, extra=extra)


def _buffer(frame) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError as exc:
        raise WireError("malformed", schema.UNKNOWN_MODALITY,
                        f"frame of type {type(frame).__name__} is not a byte buffer") from exc
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _topic(frame) -> str:
    raw = bytes(_buffer(frame)[:16])
    try:
        topic = raw.decode("ascii")
    except UnicodeDecodeError:
        topic = ""
    if len(_buffer(frame)) > 16 or topic not in ARRAY_SPECS:
        raise WireError("unknown_topic", schema.UNKNOWN_MODALITY,
                        f"topic {raw!r} is not one of {TOPICS}")
    return topic


def _header(frame, topic: str, limits: WireLimits) -> dict:
    buf = _buffer(frame)
    if len(buf) > limits.max_header_bytes:
        raise WireError("malformed", topic, f"header of {len(buf)} bytes exceeds {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=4096, max_bin_len=0, max_array_len=64, max_map_len=64,
                                 max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise WireError("malformed", topic, f"header is not a valid msgpack map: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError("malformed", topic, f"header must be a msgpack map, got {type(header).__name__}")
    missing = [k for k in CORE_KEYS if k not in header]
    if missing:
        raise WireError("malformed", topic, f"header lacks {missing}; required keys are {list(CORE_KEYS)}")
    v = header["v"]
    if type(v) is not int or v != WIRE_VERSION:   # 1.0 and True are not version 1
        raise WireError("bad_version", topic, f"wire version {v!r} not supported: this receiver speaks v{WIRE_VERSION}")
    return header


def _src_seq(header: dict, topic: str) -> tuple[str, int]:
    src, seq = header["src"], header["seq"]
    if not isinstance(src, str) or not 0 < len(src) <= MAX_SRC_LEN:
        raise WireError("malformed", topic, f"src must be a non-empty string of <= {MAX_SRC_LEN} chars, got {src!r}")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _U64_MAX:
        raise WireError("malformed", topic, f"seq must be an unsigned integer, got {seq!r}", src=src)
    return src, seq


def _timestamp(header: dict, key: str, topic: str, limits: WireLimits) -> int:
    value = header[key]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WireError("non_finite", topic, f"{key} is {value}: timestamps must be finite integers (ns)")
        value = int(value)
    elif not isinstance(value, int) or isinstance(value, bool):
        raise WireError("malformed", topic, f"{key} must be an integer of ns since the Unix epoch, got {value!r}")
    if not limits.min_t_ns <= value <= limits.max_t_ns:
        raise WireError("non_finite", topic,
                        f"{key}={value} outside the sane range [{limits.min_t_ns}, {limits.max_t_ns}] ns")
    return value


def _check_extras(topic: str, extra: dict) -> None:
    station = extra.get("station")
    if station is not None and (not isinstance(station, str) or len(station) > MAX_SRC_LEN):
        raise WireError("malformed", topic, f"station must be a string of <= {MAX_SRC_LEN} chars, got {station!r}")
    for key in REQUIRED_EXTRAS.get(topic, ()):
        value = extra.get(key)
        if type(value) is not int or not 0 <= value <= _I64_MAX:
            raise WireError("malformed", topic, f"{topic} header needs {key} as an integer in [0, 2**63-1], "
                                                f"got {value!r}")
    if "period_ns" in extra:
        period = extra["period_ns"]
        if not is_csi(topic):
            raise WireError("malformed", topic, "period_ns belongs to CSI (wifi) messages only")
        if type(period) is not int or not 1 <= period <= MAX_PERIOD_NS:
            raise WireError("out_of_range", topic, f"period_ns must be an integer in [1, {MAX_PERIOD_NS}] "
                                                   f"(ns between CSI packets; 10,000,000 at 100 Hz), got {period!r}")


def _check_packet_span(topic: str, t_ns: int, packets: int, extra: dict, limits: WireLimits) -> None:
    """The oldest packet's time, t_ns - (P-1) * period_ns, must lie within the time limits too."""
    first = t_ns - (packets - 1) * int(extra.get("period_ns", WIFI_PERIOD_NS))
    if first < limits.min_t_ns:
        raise WireError("non_finite", topic, f"the first of {packets} packets would be captured at {first} ns, "
                                             f"before {limits.min_t_ns}: check t_ns and period_ns")


def _entry(entry, topic: str, specs: dict[str, ArraySpec]) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(entry, dict) or not {"name", "dtype", "shape"} <= set(entry):
        raise WireError("malformed", topic, f"array entry must be a map with name, dtype, shape; got {entry!r}")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or name not in specs:
        raise WireError("malformed", topic, f"unknown array {name!r}: {topic} carries {sorted(specs)}")
    if not isinstance(dtype, str):
        raise WireError("bad_dtype", topic, f"{name}: dtype must be a string like '<f4', got {dtype!r}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int for d in shape):
        raise WireError("bad_shape", topic, f"{name}: shape must be a list of integers, got {shape!r}")
    return name, dtype, tuple(shape)


def _array(frame, topic: str, spec: ArraySpec, dtype: str, shape: tuple[int, ...],
           limits: WireLimits) -> np.ndarray:
    if _DTYPE_ALIASES.get(dtype, dtype) != spec.dtype:
        raise WireError("bad_dtype", topic, f"{spec.name}: expected dtype {spec.dtype!r}, got {dtype!r}")
    want = ["N" if w is None else w for w in spec.shape]
    if len(shape) != len(spec.shape) or any(d < 0 for d in shape) or \
            any(w is not None and w != d for w, d in zip(spec.shape, shape)):
        raise WireError("bad_shape", topic, f"{spec.name}: expected shape {want}, got {list(shape)}")
    if spec.shape[0] is None:
        limit = limits.max_rows(topic, spec.name)
        if shape[0] > limit or (is_csi(topic) and shape[0] < 1):
            raise WireError("oversized" if shape[0] > limit else "bad_shape", topic,
                            f"{spec.name}: {shape[0]} rows, allowed 1..{limit}" if is_csi(topic)
                            else f"{spec.name}: {shape[0]} points exceed the limit of {limit}")
    buf = _buffer(frame)
    itemsize = np.dtype(spec.dtype).itemsize
    expected = math.prod(shape) * itemsize  # Python ints: no overflow, nothing allocated yet
    if len(buf) != expected:
        raise WireError("bad_shape", topic, f"{spec.name}: shape {list(shape)} x {itemsize} B needs "
                                            f"{expected} bytes, the buffer has {len(buf)}")
    arr = np.frombuffer(buf, dtype=np.dtype(spec.dtype)).reshape(shape)
    if spec.finite and not np.isfinite(arr).all():
        raise WireError("non_finite", topic, f"{spec.name}: NaN/inf values; send finite values or drop the "
                                             f"point/keypoint on the sensor side")
    if arr.dtype.kind == "f" and arr.size:
        mag = np.abs(arr)   # NaN compares False and inf is excluded: CSI may carry both (cleaned later)
        too_big = (mag > limits.max_abs_value) & (mag < np.inf)
        if too_big.any():
            raise WireError("out_of_range", topic, f"{spec.name}: {int(too_big.sum())} finite value(s) beyond "
                                                   f"+-{limits.max_abs_value:g} (the wire's magnitude bound)")
    return arr


def _rows(arrays: dict[str, np.ndarray]) -> int:
    """Packets of a CSI message (its arrays agree on them, ``_check_rows_agree``)."""
    return next(iter(arrays.values())).shape[0]


def _check_rows_agree(topic: str, arrays: dict[str, np.ndarray]) -> None:
    """The arrays of a CSI message (amplitude and phase) have the same shape."""
    if not is_csi(topic):
        return
    shapes = {name: list(a.shape) for name, a in arrays.items()}
    if len({tuple(v) for v in shapes.values()}) > 1:
        names = list(shapes)
        raise WireError("bad_shape", topic, f"{names[0]} {shapes[names[0]]} and {names[1]} {shapes[names[1]]} "
                                            f"must have the same shape")
