"""``sensors replay``: an MM-Fi-format dataset as four timed sensor streams over ZeroMQ.

Frame ``f`` of the replay (sequences back to back) has capture time ``start_ns + f * 100 ms``:

* ``rgb``, ``lidar``, ``mmwave``: one message per frame at that time. A 0-byte point file (no
  detections) is sent as an empty cloud (``points`` [0, C]); a frame file that does not exist sends
  nothing;
* ``wifi``: the frame's 10 CSI packets at ``t_f - 90 ms ... t_f`` (10 ms apart), ``wifi_burst``
  packets per message (default 1: 100 messages/s);
* ``gt``: the ground-truth joints of the frame at ``t_f`` (unless ``send_gt=False``).

``rate`` scales the wall-clock pacing (1 = real time, 0 = as fast as possible). Capture→send
jitter, random drops (a dropped message still consumes its sequence number, so the receiver
counts the gap; ``gt`` is never dropped) and faults (``sensors.faults``) are optional and
reproducible from ``seed``. ``ReplayStats`` says what was sent, so a receiver can check
sent = received + counted drops.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sensors import mmfi
from sensors.core import keys as keyfiles
from sensors.core import schema, wire
from sensors.core.cli_util import add_client_key_arguments, add_list_argument
from sensors.faults import Fault, FaultInjector, parse_fault
from sensors.publisher import SensorPublisher

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_SRC = "mmfi-replay"
PACKET_NS = wire.WIFI_PERIOD_NS


class ReplayError(RuntimeError):
    """The replay cannot start (no subscriber, nothing to replay)."""


@dataclass
class ReplayStats:
    sent: dict[str, int] = field(default_factory=dict)        # topic -> messages that were sent
    dropped: dict[str, int] = field(default_factory=dict)     # topic -> random drops (seq consumed)
    suppressed: dict[str, int] = field(default_factory=dict)  # topic -> not sent: stop fault (no seq)
    timeouts: dict[str, int] = field(default_factory=dict)    # topic -> receiver blocked: lost (seq consumed)
    faulted: dict[str, int] = field(default_factory=dict)     # "modality:kind" -> messages it acted on
    frames: int = 0
    sequences: list[str] = field(default_factory=list)
    capture_s: float = 0.0   # replayed capture time span (frames x 100 ms)
    wall_s: float = 0.0
    src: str = DEFAULT_SRC
    start_ns: int = 0

    def total_sent(self) -> int:
        return sum(self.sent.values())

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"replayed {self.frames} frames ({self.capture_s:.1f} s of capture) from "
                 f"{len(self.sequences)} sequence(s) in {self.wall_s:.1f} s wall time, src={self.src}"]
        for topic in (*schema.MODALITIES, schema.GT_TOPIC):
            if topic in self.sent or topic in self.dropped or topic in self.suppressed:
                lines.append(f"  {topic:7s} sent {self.sent.get(topic, 0):6d}  dropped {self.dropped.get(topic, 0):5d}"
                             f"  suppressed {self.suppressed.get(topic, 0):5d}  timed out {self.timeouts.get(topic, 0):3d}")
        lines += [f"  fault {label}: {n} messages" for label, n in sorted(self.faulted.items())]
        return "\n".join(lines)


@dataclass(order=True)
class _Event:
    send_ns: int
    order: int
    topic: str = field(compare=False)
    t_ns: int = field(compare=False)
    arrays: dict = field(compare=False)
    extra: dict = field(compare=False)


# ----------------------------------------------------------------------------------------------
# Reading the dataset into per-frame events
# ----------------------------------------------------------------------------------------------
def select_sequences(root: str | Path, protocol: str, split: str, subset: str,
                     sequences: list[str] | None = None, split_seed: int = 0) -> list[mmfi.SequenceKey]:
    """The sequences to replay: ``sequences`` ("E01/S01/A02" each) in that order, else every
    sequence of protocol/split/subset found under ``root``."""
    if sequences:
        keys = []
        for name in sequences:
            parts = name.strip().strip("/").split("/")
            if len(parts) != 3:
                raise ValueError(f"sequence {name!r}: expected ENV/SUBJECT/ACTION such as E01/S01/A02")
            key = mmfi.SequenceKey(*parts)
            if not key.path(root).is_dir():
                raise ReplayError(f"sequence folder {key.path(root)} not found; {mmfi.describe_root(root)}")
            keys.append(key)
        return keys
    return list(mmfi.MMFiDataset(root, protocol, split, subset, seed=split_seed).keys)


def _points(seq_dir: Path, modality: str, frame: int) -> np.ndarray | None:
    value, status = mmfi.read_frame_status(seq_dir, modality, frame)
    if status == "empty":
        return np.zeros((0, len(schema.MODALITY_SPECS[modality].columns)), np.float32)
    return value  # None when the file is missing: nothing is sent


def frame_messages(seq_dir: Path, frame: int, t_ns: int, joints: np.ndarray | None,
                   wifi_burst: int = 1, mmwave_columns: tuple[str, ...] = schema.MMWAVE_COLUMNS,
                   ) -> list[tuple[str, int, dict, dict]]:
    """(topic, capture t_ns, arrays, extra) of one frame, in capture-time order: the CSI packets of
    the frame first (in bursts of ``wifi_burst``, the last one at ``t_ns``), then the frame-based
    sensors, then the ground truth.

    mmwave_columns: the column order of the radar files on disk; the wire always carries
    ``schema.MMWAVE_COLUMNS`` order."""
    out: list[tuple[str, int, dict, dict]] = []
    for spec in sorted(schema.MODALITY_SPECS.values(), key=lambda s: s.kind != schema.CSI):
        names = [a.name for a in spec.wire]
        if spec.kind == schema.CSI:
            out += _csi_messages(spec, mmfi.read_frame_status(seq_dir, spec.name, frame), t_ns, wifi_burst)
        elif spec.kind == schema.KEYPOINTS:
            kpts = mmfi.read_frame(seq_dir, spec.name, frame)
            if kpts is not None:
                out.append((spec.name, t_ns, {names[0]: kpts}, {}))
        else:
            pts = _points(seq_dir, spec.name, frame)
            if pts is not None and spec.columns_key and tuple(mmwave_columns) != spec.columns:
                pts = pts[:, mmfi.mmwave_permutation(mmwave_columns)]
            if pts is not None:
                out.append((spec.name, t_ns, {names[0]: pts}, {}))
    if joints is not None:
        out.append((schema.GT_TOPIC, t_ns, {"joints": joints}, {}))
    return out


def _csi_messages(spec: schema.ModalitySpec, read: tuple, t_ns: int, burst: int) -> list[tuple[str, int, dict, dict]]:
    """The packets of one CSI frame (each array [antennas, subcarriers, packets] as stored) as
    messages of ``burst`` packets [P, antennas, subcarriers], the last packet at ``t_ns``."""
    frame, status = read
    if status != "ok":
        return []
    n = frame[0].shape[-1]
    out = []
    for first in range(0, n, burst):
        last = min(first + burst, n) - 1
        arrays = {a.name: np.moveaxis(v[:, :, first:last + 1], -1, 0) for a, v in zip(spec.wire, frame)}
        out.append((spec.name, t_ns - (n - 1 - last) * PACKET_NS, arrays, {"period_ns": PACKET_NS}))
    return out


def default_start_ns() -> int:
    """The first 100 ms grid point at least 100 ms from now (ticks of a 10 Hz runtime land on
    frames, and frame 0's first CSI packet, 90 ms earlier, is still in the future)."""
    period = schema.FRAME_PERIOD_NS
    return -(-(time.time_ns() + period) // period) * period


# ----------------------------------------------------------------------------------------------
# The replay loop
# ----------------------------------------------------------------------------------------------
class _Sender:
    """Jitter, drops and faults on the way out; pacing; statistics."""

    def __init__(self, pub: SensorPublisher, stats: ReplayStats, *, rate: float, jitter_ms: float,
                 drop_prob: float, injector: FaultInjector, rng: np.random.Generator, start_ns: int):
        self.pub, self.stats, self.rate = pub, stats, rate
        self.jitter_ns = jitter_ms * 1e6
        self.drop_prob, self.injector, self.rng, self.start_ns = drop_prob, injector, rng, start_ns
        self.heap: list[_Event] = []
        self.last_send: dict[str, int] = {}
        self.order = 0
        self.mono0: float | None = None  # monotonic time at which capture time start_ns is "now"

    def schedule(self, topic: str, t_ns: int, arrays: dict, extra: dict) -> None:
        if topic != schema.GT_TOPIC:
            injected = self.injector.apply(topic, (t_ns - self.start_ns) / 1e9, arrays)
            for label in injected.labels:
                self.stats.faulted[label] = self.stats.faulted.get(label, 0) + 1
            if injected.arrays is None:
                self.stats.suppressed[topic] = self.stats.suppressed.get(topic, 0) + 1
                return
            arrays = injected.arrays
            send_ns = t_ns + int(abs(self.rng.normal(0.0, self.jitter_ns))) if self.jitter_ns else t_ns
            t_ns += injected.t_shift_ns
        else:
            send_ns = t_ns
        send_ns = max(send_ns, self.last_send.get(topic, send_ns))  # one sensor sends in order
        self.last_send[topic] = send_ns
        heapq.heappush(self.heap, _Event(send_ns, self.order, topic, t_ns, arrays, extra))
        self.order += 1

    def flush(self, before_ns: float = math.inf) -> None:
        """Send every scheduled message due before ``before_ns`` (capture-time clock)."""
        while self.heap and self.heap[0].send_ns < before_ns:
            ev = heapq.heappop(self.heap)
            self._pace(ev.send_ns)
            if ev.topic != schema.GT_TOPIC and self.drop_prob and self.rng.random() < self.drop_prob:
                self.pub.skip(ev.topic)
                self.stats.dropped[ev.topic] = self.stats.dropped.get(ev.topic, 0) + 1
                continue
            before = self.pub.timeouts.get(ev.topic, 0)
            self.pub.send(ev.topic, ev.t_ns, extra=ev.extra, **ev.arrays)
            if self.pub.timeouts.get(ev.topic, 0) > before:
                self.stats.timeouts[ev.topic] = self.stats.timeouts.get(ev.topic, 0) + 1
                log.warning("%s message not taken by the receiver within the send timeout: lost", ev.topic)
            else:
                self.stats.sent[ev.topic] = self.stats.sent.get(ev.topic, 0) + 1

    def _pace(self, send_ns: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if self.mono0 is None:
            self.mono0 = now - (send_ns - self.start_ns) / 1e9 / self.rate
        wait = self.mono0 + (send_ns - self.start_ns) / 1e9 / self.rate - now
        if wait > 0:
            time.sleep(wait)


def replay(root: str | Path, endpoint: str = DEFAULT_ENDPOINT, *, bind: bool = False, protocol: str = "P1",
           split: str = "S1", subset: str = "test", rate: float = 1.0, jitter_ms: float = 0.0,
           drop_prob: float = 0.0, faults: list[Fault | str] | None = None, send_gt: bool = True,
           seed: int = 0, max_frames: int | None = None, sequences: list[str] | None = None,
           start_ns: int | None = None, progress: bool = False, src: str = DEFAULT_SRC,
           station: str | None = None, wifi_burst: int = 1, connect_timeout_s: float = 10.0,
           send_timeout_s: float = 10.0, mmwave_columns: tuple[str, ...] = schema.MMWAVE_COLUMNS,
           context=None, curve: keyfiles.CurveClient | None = None, force_plaintext: bool = False) -> ReplayStats:
    """Replay the sequences of ``root`` to ``endpoint`` and return what was sent."""
    _check_args(rate, jitter_ms, drop_prob, max_frames, wifi_burst)
    mmfi.mmwave_permutation(mmwave_columns)  # validates the order before anything is sent
    keys = select_sequences(root, protocol, split, subset, sequences)
    fault_list = [f if isinstance(f, Fault) else parse_fault(f) for f in (faults or [])]
    rng = np.random.default_rng(seed)
    n_frames = len(keys) * schema.FRAMES_PER_SEQUENCE
    n_frames = n_frames if max_frames is None else min(n_frames, max_frames)
    topics = [*schema.MODALITIES, *([schema.GT_TOPIC] if send_gt else [])]
    # nodrop: a receiver that falls behind slows the replay down (its own bounded queue then counts
    # queue_full) instead of ZeroMQ dropping messages silently at the sender.
    with SensorPublisher(endpoint, bind=bind, src=src, station=station, context=context,
                         sndhwm=10_000, nodrop=True, send_timeout_s=send_timeout_s, curve=curve,
                         force_plaintext=force_plaintext) as pub:
        if not pub.wait_connected(connect_timeout_s, topics=topics):
            raise ReplayError(f"no subscriber for {', '.join(topics)} at {pub.endpoint} after "
                              f"{connect_timeout_s:g} s: start the receiver first (`runtime serve` binds "
                              f"{DEFAULT_ENDPOINT}), or check --connect/--bind; a runtime with CurveZMQ "
                              f"takes only allow-listed keys (--keys DIR --key-name NAME)")
        # Capture times are "now" by default (chosen once connected), and at rate 1 each message
        # leaves at its capture time on the wall clock; a given start_ns is paced from the first send.
        wall_anchored = start_ns is None
        start_ns = default_start_ns() if start_ns is None else int(start_ns)
        stats = ReplayStats(src=src, start_ns=start_ns)
        sender = _Sender(pub, stats, rate=rate, jitter_ms=jitter_ms, drop_prob=drop_prob,
                         injector=FaultInjector(fault_list, rng), rng=rng, start_ns=start_ns)
        if wall_anchored and rate > 0:
            sender.mono0 = time.monotonic() + (start_ns - time.time_ns()) / 1e9
        wall0 = time.monotonic()
        bar = tqdm(total=n_frames, desc="replay", unit="frame", disable=not progress)
        f = 0
        for key in keys:
            if f >= n_frames:
                break
            stats.sequences.append(str(key))
            seq_dir = key.path(root)
            joints = mmfi.read_ground_truth(seq_dir) if send_gt else None
            for frame in range(min(schema.FRAMES_PER_SEQUENCE, n_frames - f)):
                t_ns = start_ns + f * schema.FRAME_PERIOD_NS
                gt = None if joints is None else joints[frame]
                for topic, t, arrays, extra in frame_messages(seq_dir, frame, t_ns, gt, wifi_burst,
                                                              mmwave_columns):
                    # the sequence's action and key tell the runtime the current exercise (docs/rehab.md)
                    sender.schedule(topic, t, arrays, {**extra, "exercise": key.action, "session": str(key)})
                # Nothing scheduled later can be sent before the next frame's first capture time.
                sender.flush(before_ns=t_ns + schema.FRAME_PERIOD_NS - (schema.WIFI_PACKETS - 1) * PACKET_NS)
                f += 1
                bar.update(1)
        sender.flush()
        bar.close()
        stats.frames = f
        stats.capture_s = f * schema.FRAME_PERIOD_NS / 1e9
        stats.wall_s = time.monotonic() - wall0
    return stats


def _check_args(rate, jitter_ms, drop_prob, max_frames, wifi_burst) -> None:
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be >= 0 (1 = real time, 0 = as fast as possible), got {rate}")
    if not jitter_ms >= 0:
        raise ValueError(f"jitter_ms must be >= 0, got {jitter_ms}")
    if not 0 <= drop_prob < 1:
        raise ValueError(f"drop probability must be in [0, 1), got {drop_prob}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if not 1 <= wifi_burst <= schema.WIFI_PACKETS:
        raise ValueError(f"wifi_burst must be 1..{schema.WIFI_PACKETS} packets per message, got {wifi_burst}")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--data", required=True, help="root of an MM-Fi-format dataset (holds E01..E04)")
    p.add_argument("--protocol", default="P1", choices=sorted(schema.PROTOCOLS))
    p.add_argument("--split", default="S1", choices=schema.SPLITS)
    p.add_argument("--subset", default="test", choices=("train", "test", "all"))
    p.add_argument("--sequences", default=None,
                   help="comma-separated ENV/SUBJECT/ACTION list (e.g. E01/S01/A02,E01/S02/A02); "
                        "overrides protocol/split/subset")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--connect", default=None, help=f"endpoint to connect to (default {DEFAULT_ENDPOINT})")
    where.add_argument("--bind", default=None, help="endpoint to bind instead (the receiver connects)")
    p.add_argument("--rate", type=float, default=1.0, help="1.0 = real time, 0 = as fast as possible")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="capture-to-send jitter, |N(0, s)| ms")
    p.add_argument("--drop", type=float, default=0.0, help="probability of dropping a sensor message")
    add_list_argument(p, "--fault", default=[], metavar="SPEC",
                      help="modality:kind@start_s[+duration_s][=param], kinds stop freeze noise nan skew, "
                           "e.g. lidar:stop@5,mmwave:freeze@3+4,lidar:skew@2=0.3")
    p.add_argument("--no-gt", action="store_true", help="do not send the ground-truth stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--start-ns", type=int, default=None, help="capture time of the first frame (ns)")
    p.add_argument("--src", default=DEFAULT_SRC, help="sensor id on the wire")
    p.add_argument("--station", default=None)
    p.add_argument("--wifi-burst", type=int, default=1, help="CSI packets per wifi message (1..10)")
    p.add_argument("--mmwave-columns", default=",".join(schema.MMWAVE_COLUMNS),
                   help="column order of the radar .bin files on disk (the wire carries "
                        f"{','.join(schema.MMWAVE_COLUMNS)})")
    add_client_key_arguments(p, "replay", "CurveZMQ: key directory (runtime keys init/add): "
                                                   "DIR/clients/NAME.key_secret and DIR/server.key")
    p.add_argument("--force-plaintext", action="store_true",
                   help="allow plaintext (no keys) to a non-loopback endpoint")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for a subscriber")
    p.add_argument("--report", "--stats-json", dest="stats_json", default=None, metavar="FILE",
                   help="also write the statistics as JSON to FILE")
    p.add_argument("--no-progress", action="store_true")


def client_keys(args) -> keyfiles.CurveClient | None:
    """The CurveZMQ client keys of ``--keys DIR --key-name NAME`` or ``--client-key/--server-key``."""
    if args.keys and (args.client_key or args.server_key):
        raise ValueError("give either --keys DIR (with --key-name) or --client-key and --server-key, not both")
    if args.keys:
        root = Path(args.keys)
        return keyfiles.CurveClient.load(root / keyfiles.CLIENTS_DIR / f"{args.key_name}.key_secret",
                                         root / f"{keyfiles.SERVER_NAME}.key")
    if bool(args.client_key) != bool(args.server_key):
        raise ValueError("--client-key and --server-key go together (the client's secret key file and the "
                         "runtime's public key file)")
    return keyfiles.CurveClient.load(args.client_key, args.server_key) if args.client_key else None


def run(args) -> int:
    try:
        faults = [parse_fault(s) for s in args.fault]
    except ValueError as err:
        log.error("%s", err)
        return 2
    bind = args.bind is not None
    endpoint = args.bind if bind else (args.connect or DEFAULT_ENDPOINT)
    sequences = [s for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    try:
        curve = client_keys(args)
        stats = replay(args.data, endpoint, bind=bind, protocol=args.protocol, split=args.split,
                       subset=args.subset, rate=args.rate, jitter_ms=args.jitter_ms, drop_prob=args.drop,
                       faults=faults, send_gt=not args.no_gt, seed=args.seed, max_frames=args.max_frames,
                       sequences=sequences, start_ns=args.start_ns, progress=not args.no_progress,
                       src=args.src, station=args.station, wifi_burst=args.wifi_burst,
                       connect_timeout_s=args.connect_timeout, curve=curve, force_plaintext=args.force_plaintext,
                       mmwave_columns=tuple(c.strip() for c in args.mmwave_columns.split(",")))
    except (ReplayError, mmfi.MMFiFormatError) as err:
        log.error("%s", err)
        return 1
    except ValueError as err:  # bad argument values (rate, drop, sequences, ...)
        log.error("%s", err)
        return 2
    print(stats.summary())
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats.to_dict(), indent=2, sort_keys=True) + "\n")
    return 0

