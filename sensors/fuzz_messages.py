"""The messages ``sensors fuzz`` sends: valid ones of every topic (the background stream and the
bases of mutation), random ones, mutated ones and the boundary cases a careful client could mount
(see ``sensors.fuzz``). Pure: numpy, msgpack and the wire codec; the random generator is passed in.

The one sensor-side module that writes the attacks topic by topic (a fifth modality adds its own
cases here when it has any).
"""

from __future__ import annotations

import math
import time

import msgpack
import numpy as np

from sensors.core import schema, wire

FUZZ_TOPICS = ("rgb", "lidar", "mmwave", "wifi", "pose")   # valid gt messages are not exported as metrics
HOSTILE = [None, True, False, 0, 1, -1, 2 ** 31, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -(2 ** 63), 1.0, -0.0,
           math.nan, math.inf, -math.inf, 3e38, 1e308, "", "x" * 5000, "rgb", "<f4", "|u1", "<f8", ">f4", "O",
           b"\x00\xff", [], [1, 2], [[1]], ["points"], {"a": 1}, {"name": "kpts"}, [-1, 3], [2 ** 40, 3],
           [17, 2, 1], [0], [65537, 3], [10 ** 6, 3, 114]]



def valid_message(topic: str, rng: np.random.Generator, t_ns: int, seq: int, src: str = "fuzz-bg") -> list[bytes]:
    arrays = {
        "rgb": lambda: {"kpts": rng.uniform(0, 480, (17, 2))},
        "lidar": lambda: {"points": rng.normal(0, 1.0, (int(rng.integers(60, 400)), 3)) + [3.0, 0.0, 0.0]},
        "mmwave": lambda: {"points": rng.normal(0, 0.5, (int(rng.integers(0, 40)), 5))},
        "wifi": lambda: {"amp": rng.normal(40, 3, (1, 3, 114)), "phase": rng.uniform(-3, 3, (1, 3, 114))},
        "gt": lambda: {"joints": rng.normal(size=(17, 3))},
        "pose": lambda: {"joints": rng.normal(size=(17, 3)), "presence": np.ones(4), "shapley": np.zeros(4),
                         "degradation": np.zeros(4)},
    }[topic]()
    extra = {"wifi": {"period_ns": wire.WIFI_PERIOD_NS}, "pose": {"tick": seq, "latency_ns": 1}}.get(topic, {})
    return wire.encode(wire.Message(topic=topic, src=src, seq=seq, t_ns=t_ns, sent_ns=time.time_ns(),
                                    arrays=arrays, extra=extra))


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def random_message(rng: np.random.Generator) -> list[bytes]:
    frames = [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 7)))]
    if rng.random() < 0.5:
        frames[0] = _pick(rng, [*wire.TOPICS, "", "x" * 20, "RGB"]).encode()
    return frames


def mutated_message(rng: np.random.Generator, now_ns: int) -> list[bytes]:
    topic = _pick(rng, FUZZ_TOPICS)
    frames = valid_message(topic, rng, now_ns, int(rng.integers(0, 1000)), src=_pick(rng, ["fuzz-bg", "fuzz-x", "a"]))
    header = msgpack.unpackb(frames[1], raw=False)
    how = int(rng.integers(0, 8))
    if how == 0:      # a header value
        header[_pick(rng, [*wire.CORE_KEYS, "period_ns", "tick", "latency_ns", "station"])] = _pick(rng, HOSTILE)
    elif how == 1:    # an array entry's field
        header["arrays"][0][_pick(rng, ["name", "dtype", "shape"])] = _pick(rng, HOSTILE)
    elif how == 2:    # buffer bytes flipped
        buf = bytearray(frames[2])
        for _ in range(int(rng.integers(1, 16))):
            if buf:
                buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
        frames[2] = bytes(buf)
    elif how == 3:    # buffer truncated or extended
        frames[2] = frames[2][: int(rng.integers(0, len(frames[2]) + 1))] if rng.random() < 0.5 else \
            frames[2] + rng.bytes(int(rng.integers(1, 9)))
    elif how == 4:    # frames dropped or duplicated
        frames = frames[:-1] if rng.random() < 0.5 else [*frames, frames[-1]]
    elif how == 5:    # topic swapped
        frames[0] = _pick(rng, [*FUZZ_TOPICS, "depth", "gt "]).encode()
    elif how == 6:    # header key removed
        header.pop(_pick(rng, list(header)))
    else:             # header bytes flipped
        raw = bytearray(frames[1])
        raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        return [frames[0], bytes(raw), *frames[2:]]
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


def boundary_message(rng: np.random.Generator, now_ns: int) -> list[bytes]:
    case = int(rng.integers(0, 12))
    topic = {0: "wifi", 1: "lidar", 2: "lidar", 3: "rgb", 4: "mmwave", 5: "rgb", 6: "lidar", 7: "wifi",
             8: "pose", 9: "mmwave", 10: "rgb", 11: "lidar"}[case]
    frames = valid_message(topic, rng, now_ns, int(rng.integers(0, 1000)), src="fuzz-edge")
    header = msgpack.unpackb(frames[1], raw=False)
    if case == 0:
        header["period_ns"] = _pick(rng, [2 ** 63, 2 ** 64 - 1, 0, wire.MAX_PERIOD_NS + 1])
    elif case == 1:
        header["arrays"][0]["name"] = ["points"]
    elif case == 2:
        pts = np.frombuffer(frames[2], "<f4").copy()
        pts[int(rng.integers(pts.size))] = _pick(rng, [3e38, -3e38, 1.5e6])
        frames[2] = pts.tobytes()
    elif case == 3:
        header["seq"] = 2 ** 64 - 1
        header["src"] = "fuzz-bg"
    elif case == 4:
        header["t_ns"] = now_ns + int(_pick(rng, [10, 3600, 10 ** 6]) * 1e9)   # far in the future
    elif case == 5:
        header["v"] = 1.0
    elif case == 6:
        header["arrays"][0]["shape"] = [schema.MAX_LIDAR_POINTS + 1, 3]
    elif case == 7:
        p = 1000
        amp = np.zeros((p, 3, 114), "<f4").tobytes()
        header["arrays"] = [{"name": n, "dtype": "<f4", "shape": [p, 3, 114]} for n in ("amp", "phase")]
        header["period_ns"] = _pick(rng, [wire.MAX_PERIOD_NS, 2 ** 62])
        header["t_ns"] = _pick(rng, [now_ns, 5])
        frames = [frames[0], b"", amp, amp]
    elif case == 8:
        header["tick"] = _pick(rng, [2 ** 64 - 1, -1, 1.5])
    elif case == 9:
        header["t_ns"] = _pick(rng, [now_ns - int(3600e9), -1, 2 ** 63, math.nan])   # far in the past / invalid
    elif case == 10:
        header["station"] = {"nested": [1, 2]}
    else:
        header["arrays"][0]["dtype"] = _pick(rng, ["<f8", ">f4", "O", "<u1"])
    return [frames[0], msgpack.packb(header, use_bin_type=True), *frames[2:]]


def valid_frame(rng: np.random.Generator, now_ns: int, k: int) -> list[list[bytes]]:
    """The messages of valid frame ``k`` of all four modalities at ``now_ns`` (10 Hz frames,
    100 Hz CSI: ten one-packet messages over the 100 ms before it)."""
    out = [valid_message(topic, rng, now_ns, k) for topic in ("rgb", "lidar", "mmwave")]
    out += [valid_message("wifi", rng, now_ns - (9 - p) * wire.WIFI_PERIOD_NS, 10 * k + p) for p in range(10)]
    return out
