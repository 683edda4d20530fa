"""``sensors iwr6843``: a TI IWR6843 radar running the mmWave SDK out-of-box demo -> ``mmwave``.

Live: the chirp configuration (a ``.cfg`` file of CLI commands, as TI's tools write them) goes to
the CLI port (115200 baud) line by line, each acknowledged ``Done``; frames arrive on the data
port (921600 baud) through pyserial. Recording: a dump of the data port's bytes (``--dump``).

Frame layout (mmWave SDK 3.x out-of-box demo, little-endian): the magic word 0x0102 0x0304
0x0506 0x0708 (as four uint16), then uint32 version, totalPacketLen, platform, frameNumber,
timeCpuCycles, numDetectedObj, numTLVs, subFrameNumber (40 bytes in all), then numTLVs TLVs of
uint32 type, uint32 length (of the payload, header excluded) and the payload; the frame is
padded to totalPacketLen (a multiple of 32). TLV 1 (detected points): numDetectedObj x float32
x, y, z (m), doppler (m/s); TLV 7 (side info): numDetectedObj x int16 snr, noise in 0.1 dB.
Other TLVs (range profile, heat maps, statistics) are skipped.

Parsing is numpy on a byte buffer (``FrameParser``): a frame cut short by the next magic word is
``torn``, one whose header or TLVs do not add up is ``corrupt``; both are dropped and the parser
resynchronises on the next magic word. Gaps in frameNumber are frames the adapter never got:
their sequence numbers are consumed so the runtime counts them.

Axes: TI's x points right (seen from the radar), y along boresight, z up; MM-Fi's radar points are
x forward, y left, z up (``sensors.core.schema``), so ``--axes mmfi`` (default) sends (y, -x, z). The
wire's columns are x, y, z, SNR (dB), radial velocity (m/s).
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensors.adapters.outlet import (
    AdapterError,
    Outlet,
    Pacer,
    Stop,
    add_outlet_arguments,
    add_rate_argument,
    modality_carrying,
    run_adapter,
)
from sensors.core import schema

log = logging.getLogger(__name__)

MODALITY = modality_carrying(schema.POINTS, schema.MMWAVE_COLUMNS)   # the stream this adapter feeds

MAGIC = struct.pack("<4H", 0x0102, 0x0304, 0x0506, 0x0708)
HEADER = struct.Struct("<8s8I")         # magic, version, totalPacketLen, platform, frameNumber,
HEADER_LEN = HEADER.size                # timeCpuCycles, numDetectedObj, numTLVs, subFrameNumber
TLV_HEADER = struct.Struct("<2I")
TLV_DETECTED_POINTS = 1
TLV_SIDE_INFO = 7
POINT = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("doppler", "<f4")])
SIDE_INFO = np.dtype([("snr", "<i2"), ("noise", "<i2")])
MAX_FRAME_BYTES = 1 << 16               # the demo's UART frames are a few kB; more is a corrupt length
MAX_POINTS = 4096                       # the wire's limit (schema.MAX_MMWAVE_POINTS)
MAX_TLVS = 32
CLI_BAUD, DATA_BAUD = 115_200, 921_600
DEFAULT_FRAME_PERIOD_MS = 100.0


@dataclass
class RadarFrame:
    number: int                 # frameNumber (counts from 1 after sensorStart)
    subframe: int
    cpu_cycles: int             # timeCpuCycles (the radar's CPU clock; wraps every ~21 s)
    points: np.ndarray          # float32 [N, 5]: x, y, z (m, TI axes), snr (dB), doppler (m/s)
    side_info: bool             # False: no TLV 7 in the frame, SNR is 0
    size: int = 0               # totalPacketLen (bytes on the link)
    refused: tuple[int, int] = (0, 0)   # the parser's (torn, corrupt) counts when this frame came out


@dataclass
class FrameParser:
    """Bytes of the data port in, complete frames out; counts what it had to throw away."""

    torn: int = 0               # frames cut short by the next magic word (bytes lost on the link)
    corrupt: int = 0            # headers or TLVs that do not add up
    skipped_bytes: int = 0      # bytes outside any frame (before the first magic word, garbage)
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[RadarFrame]:
        self._buf += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def finish(self) -> None:
        """End of the stream: a partial frame left in the buffer is torn."""
        if self._buf.startswith(MAGIC):
            self.torn += 1
        elif self._buf:
            self.skipped_bytes += len(self._buf)
        self._buf.clear()

    def _resync(self, start: int) -> bool:
        """Drop the bytes before the next magic word at or after ``start``; False if none yet (a
        tail that may begin one is kept)."""
        i = self._buf.find(MAGIC, start)
        found = i >= 0
        if not found:
            i = max(start, len(self._buf) - len(MAGIC) + 1)
        self.skipped_bytes += i
        del self._buf[:i]
        return found

    def _next(self) -> RadarFrame | None:
        """The next complete frame, or None when more bytes are needed (what cannot be a frame is
        counted and dropped on the way)."""
        while self._buf.startswith(MAGIC) or self._resync(0):
            if len(self._buf) < HEADER_LEN:
                return None
            _, _, total, _, number, cycles, n_obj, n_tlv, sub = HEADER.unpack_from(self._buf)
            if not (HEADER_LEN <= total <= MAX_FRAME_BYTES and n_obj <= MAX_POINTS and n_tlv <= MAX_TLVS):
                self.corrupt += 1
                self._resync(1)
                continue
            cut = self._buf.find(MAGIC, len(MAGIC), total)
            if cut >= 0:               # the next frame starts inside this one: bytes were lost
                self.torn += 1
                del self._buf[:cut]
                continue
            if len(self._buf) < total:
                return None
            body = bytes(self._buf[:total])
            del self._buf[:total]
            try:
                points, side = _parse_tlvs(body, n_obj, n_tlv)
            except ValueError as err:
                self.corrupt += 1
                log.debug("radar frame %d corrupt: %s", number, err)
                continue
            return RadarFrame(number, sub, cycles, points, side, total, (self.torn, self.corrupt))
        return None


def _parse_tlvs(body: bytes, n_obj: int, n_tlv: int) -> tuple[np.ndarray, bool]:
    pts = side = None
    off = HEADER_LEN
    for _ in range(n_tlv):
        if off + TLV_HEADER.size > len(body):
            raise ValueError(f"TLV header at {off} beyond the frame's {len(body)} bytes")
        kind, length = TLV_HEADER.unpack_from(body, off)
        off += TLV_HEADER.size
        if off + length > len(body):
            raise ValueError(f"TLV type {kind} of {length} bytes overruns the frame")
        if kind == TLV_DETECTED_POINTS:
            if length != n_obj * POINT.itemsize:
                raise ValueError(f"detected points TLV has {length} bytes for {n_obj} points")
            pts = np.frombuffer(body, POINT, n_obj, off)
        elif kind == TLV_SIDE_INFO:
            if length != n_obj * SIDE_INFO.itemsize:
                raise ValueError(f"side info TLV has {length} bytes for {n_obj} points")
            side = np.frombuffer(body, SIDE_INFO, n_obj, off)
        off += length
    if pts is None and n_obj:
        raise ValueError(f"{n_obj} detected objects but no detected points TLV")
    out = np.zeros((n_obj, 5), np.float32)
    if n_obj:
        out[:, 0], out[:, 1], out[:, 2], out[:, 4] = pts["x"], pts["y"], pts["z"], pts["doppler"]
        if side is not None:
            out[:, 3] = side["snr"].astype(np.float32) / 10.0
    if not np.isfinite(out).all():
        raise ValueError("NaN/inf in the detected points")
    return out, side is not None or n_obj == 0


def to_wire_axes(points: np.ndarray, axes: str) -> np.ndarray:
    """TI (x right, y boresight, z up) -> MM-Fi (x forward, y left, z up), or kept as TI's."""
    if axes == "ti":
        return points
    out = points.copy()
    out[:, 0], out[:, 1] = points[:, 1], -points[:, 0]
    return out


def frame_period_from_cfg(cfg: Path) -> float | None:
    """``frameCfg <start> <end> <loops> <frames> <periodicity ms> ...`` -> the periodicity (ms)."""
    for line in read_cfg(cfg):
        parts = line.split()
        if parts[0] == "frameCfg" and len(parts) >= 6:
            return float(parts[5])
    return None


def read_cfg(cfg: Path) -> list[str]:
    path = Path(cfg)
    if not path.is_file():
        raise AdapterError(f"chirp configuration {path} not found: pass a .cfg file of the out-of-box demo's "
                           f"CLI commands (e.g. exported by TI's mmWave visualizer)")
    return [ln.strip() for ln in path.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.strip().startswith("%")]


# ---------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------
class _Publisher:
    """Frames -> messages. Every frame the radar made has one outcome: sent (or counted by the
    outlet), ``torn``/``corrupt`` (reached the parser, thrown away) or ``device_gap`` (never
    arrived), read off the frameNumber gap before the next good frame."""

    def __init__(self, outlet: Outlet, parser: FrameParser, axes: str):
        self.outlet, self.parser, self.axes = outlet, parser, axes
        self.last_number: int | None = None
        self._seen = (0, 0)          # parser (torn, corrupt) already accounted
        self._warned_side = False

    def _refused(self, upto: tuple[int, int]) -> tuple[int, int]:
        """Frames the parser threw away since the last call, up to its counts ``upto``."""
        torn, corrupt = upto[0] - self._seen[0], upto[1] - self._seen[1]
        self._seen = upto
        return torn, corrupt

    def publish(self, frame: RadarFrame, t_ns: int) -> None:
        torn, corrupt = self._refused(frame.refused)
        if self.last_number is not None and frame.number > self.last_number:
            gap = frame.number - self.last_number - 1      # frames missing before this one
            torn = min(torn, gap)
            corrupt = min(corrupt, gap - torn)              # more refusals than missing frames:
            self.outlet.lose(gap - torn - corrupt, "device_gap")   # garbage, not frames
        self.outlet.lose(torn, "torn")
        self.outlet.lose(corrupt, "corrupt")
        self.last_number = frame.number
        if not frame.side_info and not self._warned_side:
            log.warning("radar frames carry no side info (TLV 7): SNR is sent as 0 dB; enable it in the chirp "
                        "configuration (guiMonitor -1 1 0 0 0 0 1)")
            self._warned_side = True
        self.outlet.send(t_ns, points=to_wire_axes(frame.points, self.axes))

    def finish(self) -> None:
        self.parser.finish()
        torn, corrupt = self._refused((self.parser.torn, self.parser.corrupt))
        self.outlet.lose(torn, "torn")
        self.outlet.lose(corrupt, "corrupt")
        stats = self.outlet.stats
        stats.events.update(torn_frames=self.parser.torn, corrupt_frames=self.parser.corrupt,
                            skipped_bytes=self.parser.skipped_bytes)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
def play_dump(outlet: Outlet, stop: Stop, path: Path, *, rate: float, period_ms: float, axes: str,
              start_ns: int | None = None,
              chunk: int = 4096) -> None:
    """A recorded dump of the data port: frame ``n`` is captured ``n x period`` after the first."""
    parser = FrameParser()
    pub = _Publisher(outlet, parser, axes)
    pacer = Pacer(rate, stop, start_ns, gap_ns=int(period_ms * 1e6))
    with open(path, "rb") as f:
        while not stop and (data := f.read(chunk)):
            for frame in parser.feed(data):
                t_ns = pacer.capture_ns(int(frame.number * period_ms * 1e6))
                if not pacer.wait(t_ns):
                    break
                pub.publish(frame, t_ns)
    pub.finish()
    outlet.stats.clock_resets = pacer.resets


def probe_dump(path: Path, limit: int = 1 << 20) -> None:
    """A recording must hold at least one out-of-box demo frame in its first MiB."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"UART dump {path} not found: pass a file of raw data-port bytes (--dump)")
    with open(path, "rb") as f:
        head = f.read(limit)
    if not FrameParser().feed(head):
        raise AdapterError(f"{path}: no out-of-box demo frame in its first {len(head)} bytes (magic word "
                           f"02 01 04 03 06 05 08 07, header, TLVs): is it a dump of the radar's data port?")


def configure(cli_port: str, lines: list[str], *, baud: int = CLI_BAUD, timeout_s: float = 3.0) -> None:
    """Send the chirp configuration to the CLI port, one command at a time, each answered Done."""
    import serial

    try:
        cli = serial.Serial(cli_port, baud, timeout=0.05)
    except (serial.SerialException, OSError) as err:
        raise AdapterError(f"cannot open the radar's CLI port {cli_port}: {err}") from None
    with cli:
        cli.reset_input_buffer()
        for line in lines:
            cli.write((line + "\n").encode("ascii", errors="replace"))
            reply = _reply(cli, timeout_s)
            if "Error" in reply or "not recognized" in reply:
                last = [ln for ln in reply.splitlines() if ln.strip()][-1]
                raise AdapterError(f"the radar refused {line!r}: {last.strip()} (check the .cfg against the "
                                   f"demo's SDK version)")
            if "Done" not in reply:
                raise AdapterError(f"the radar did not acknowledge {line!r} within {timeout_s:g} s on {cli_port}: "
                                   f"is it the CLI port (the first of the two, 115200 baud) and is the "
                                   f"out-of-box demo flashed?")
    log.info("radar configured: %d commands sent to %s", len(lines), cli_port)


def _reply(cli, timeout_s: float) -> str:
    got, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += cli.read(256)
        text = got.decode("ascii", errors="replace")
        if "Done" in text or "Error" in text or "not recognized" in text:
            return text
    return got.decode("ascii", errors="replace")


def run_live(outlet: Outlet, stop: Stop, *, data_port: str, cli_port: str | None, cfg: list[str] | None,
             axes: str, data_baud: int = DATA_BAUD, reconnect_s: float = 1.0, stall_s: float = 5.0) -> None:
    """Read the data port until stopped; reopen (and reconfigure) after the radar goes away."""
    import serial

    parser = FrameParser()
    pub = _Publisher(outlet, parser, axes)
    attempts = 0
    while not stop:
        try:
            port = serial.Serial(data_port, data_baud, timeout=0.1)
        except (serial.SerialException, OSError) as err:
            if attempts % max(1, int(10 / reconnect_s)) == 0:
                log.warning("radar data port %s unavailable (%s): retrying every %g s", data_port, err, reconnect_s)
            attempts += 1
            stop.wait(reconnect_s)
            continue
        if attempts or pub.last_number is not None:
            outlet.stats.reconnects += 1
            log.info("radar data port %s open again", data_port)
        attempts = 0
        parser.finish()                # a frame cut by the disconnection is torn
        with port:
            if cfg:
                configure(cli_port, cfg)
            _read_port(port, parser, pub, stop, data_baud, stall_s, data_port)
    pub.finish()


def _read_port(port, parser: FrameParser, pub: _Publisher, stop: Stop, baud: int, stall_s: float, name: str) -> None:
    import serial

    last_data, warned = time.monotonic(), False
    while not stop:
        try:
            data = port.read(max(1, port.in_waiting))
        except (serial.SerialException, OSError) as err:
            log.warning("radar data port %s went away (%s): reopening", name, err)
            return
        now = time.monotonic()
        if not data:
            if now - last_data > stall_s and not warned:
                log.warning("no bytes from the radar on %s for %g s: is it started (sensorStart in the .cfg, "
                            "--cfg with --cli-port) and is this the data port (921600 baud)?", name, stall_s)
                warned = True
            continue
        last_data, warned = now, False
        received = time.time_ns()
        for frame in parser.feed(data):
            # the frame left the radar when its first byte did: 10 bits a byte on the UART
            pub.publish(frame, received - int(frame.size * 10 / baud * 1e9))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-port", default=None, metavar="DEV",
                     help="live: the radar's data port, e.g. /dev/ttyUSB1 (921600 baud)")
    src.add_argument("--dump", default=None, metavar="FILE", help="a recording: raw bytes of the data port")
    p.add_argument("--cli-port", default=None, metavar="DEV",
                   help="live: the CLI port for --cfg, e.g. /dev/ttyUSB0 (115200 baud)")
    p.add_argument("--cfg", default=None, metavar="FILE",
                   help="chirp configuration (.cfg of CLI commands) sent before reading; its frameCfg also "
                        "gives a dump's frame period")
    p.add_argument("--data-baud", type=int, default=DATA_BAUD)
    p.add_argument("--frame-period-ms", type=float, default=None,
                   help=f"--dump: ms between frames (default: frameCfg of --cfg, else {DEFAULT_FRAME_PERIOD_MS:g})")
    p.add_argument("--axes", choices=("mmfi", "ti"), default="mmfi",
                   help="mmfi: x forward, y left, z up (TI's y, -x, z; default); ti: TI's x right, y forward, z up")
    p.add_argument("--reconnect-s", type=float, default=1.0, help="live: seconds between attempts to reopen the port")
    p.add_argument("--stall-s", type=float, default=5.0, help="live: warn after this many seconds without bytes")
    add_rate_argument(p)
    add_outlet_arguments(p, MODALITY)


def run(args) -> int:
    if args.data_port:
        import serial  # noqa: F401 - a missing extra fails here, before waiting for the runtime

    if args.cfg and args.data_port and not args.cli_port:
        log.error("--cfg needs --cli-port (the radar's configuration port) for a live radar")
        return 2
    if args.frame_period_ms is not None and not args.frame_period_ms > 0:
        log.error("--frame-period-ms must be > 0, got %s", args.frame_period_ms)
        return 2

    def loop(outlet: Outlet, stop: Stop) -> None:
        if args.dump:
            period = args.frame_period_ms or (frame_period_from_cfg(args.cfg) if args.cfg else None)
            play_dump(outlet, stop, Path(args.dump), rate=args.rate, axes=args.axes, start_ns=args.start_ns,
                      period_ms=period or DEFAULT_FRAME_PERIOD_MS)
        else:
            run_live(outlet, stop, data_port=args.data_port, cli_port=args.cli_port,
                     cfg=read_cfg(args.cfg) if args.cfg else None, axes=args.axes, data_baud=args.data_baud,
                     reconnect_s=args.reconnect_s, stall_s=args.stall_s)

    return run_adapter(args, MODALITY, loop, recording=bool(args.dump),
                       probe=(lambda: probe_dump(Path(args.dump))) if args.dump else None)
