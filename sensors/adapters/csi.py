"""``sensors csi``: the Atheros CSI tool (TP-Link N750 routers, as MM-Fi) -> ``wifi``, through csiread.

The tool's log is a sequence of records: a uint16 length, then the kernel's status block (25
bytes: uint64 timestamp (µs, the card's TSF), uint16 csi_len, uint16 channel (MHz), uint8 phy
error, noise, rate, bandwidth, num_tones, nr, nc, rssi, rssi 0..2, uint16 payload_len), csi_len
bytes of CSI (10-bit signed imaginary and real parts packed in little-endian 16-bit words), then
payload_len bytes of payload; length = 25 + csi_len + payload_len. The integers are in the
router's byte order: big-endian on the MIPS routers the tool runs on (``--endian``).

``RecordFramer`` finds record boundaries and checks each record before csiread sees it (csiread
trusts its input: a wrong length would make it read or write past its buffers); a record that
does not add up is ``corrupt`` and the framer resynchronises on the next plausible one.
csiread (``Atheros.pmsg``) decodes the CSI. Sources: a log file (``--log``), a file the tool is
still writing (``--follow``, reopened when it is replaced), or a TCP stream of the same bytes
(``--tcp HOST:PORT``, e.g. ``nc`` on the router; reconnected when it drops).

Units as MM-Fi: amplitude 20·log10|H| (dB; |H| = 0 gives -inf, which the runtime repairs as the
official toolbox does), phase angle(H) in [-π, π]; receive antennas x 114 subcarriers of one
transmit antenna (``--tx``). Capture times come from the card's timestamps (``--log``: replayed
from now at their own spacing; live: anchored to the station clock, docs/sensors.md).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sensors.adapters.outlet import (
    AdapterError,
    DeviceClock,
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

MODALITY = modality_carrying(schema.CSI)   # the stream this adapter feeds

STATUS_LEN = 25
MAX_CSI_LEN = 4096
MAX_PAYLOAD_LEN = 4096
TONES = (56, 114)


def csi_bytes(num_tones: int, nr: int, nc: int) -> int:
    """Bytes the packed 10+10-bit CSI of a record needs at least."""
    return math.ceil(num_tones * nr * nc * 20 / 8)


@dataclass
class RecordFramer:
    """Log bytes in, whole checked records (status block onwards) out."""

    endian: str = "big"
    corrupt: int = 0            # resynchronisations: bytes that were not a valid record
    skipped_bytes: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _after_cut: bool = False    # a stream resumed after a cut starts with the rest of a torn record

    def __post_init__(self):
        if self.endian not in ("big", "little"):
            raise ValueError(f"endian must be 'big' or 'little', got {self.endian!r}")
        self._u16 = struct.Struct(">H" if self.endian == "big" else "<H")

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out, bad_run = [], False
        while len(self._buf) >= 2 + STATUS_LEN:
            verdict = self._check()
            if verdict == "wait":
                break
            if verdict == "bad":
                if not bad_run and not self._after_cut:
                    self.corrupt += 1
                bad_run = True
                self.skipped_bytes += 1
                del self._buf[:1]
                continue
            bad_run = self._after_cut = False
            n = self._u16.unpack_from(self._buf)[0]
            out.append(bytes(self._buf[2:2 + n]))
            del self._buf[:2 + n]
        return out

    def finish(self) -> int:
        """End of the stream: bytes of an unfinished record (returned) are dropped; a stream that
        resumes begins with the rest of it (skipped, not counted corrupt)."""
        left = len(self._buf)
        self._buf.clear()
        self._after_cut = left > 0
        return left

    def _check(self) -> str:
        b, u16 = self._buf, self._u16
        n = u16.unpack_from(b, 0)[0]
        csi_len, payload_len = u16.unpack_from(b, 2 + 8)[0], u16.unpack_from(b, 2 + 23)[0]
        tones, nr, nc = b[2 + 16], b[2 + 17], b[2 + 18]
        ok = (n == STATUS_LEN + csi_len + payload_len and tones in TONES and 1 <= nr <= 3 and 1 <= nc <= 3
              and csi_bytes(tones, nr, nc) <= csi_len <= MAX_CSI_LEN and payload_len <= MAX_PAYLOAD_LEN)
        if not ok:
            return "bad"
        return "wait" if len(b) < 2 + n else "ok"


@dataclass
class Packet:
    t_us: int                   # the card's timestamp (TSF), µs
    amp: np.ndarray             # float32 [3, 114] dB
    phase: np.ndarray           # float32 [3, 114] rad


class Decoder:
    """Checked records -> packets through csiread; records the model cannot use are refused."""

    def __init__(self, endian: str = "big", tx: int = 0):
        import csiread

        tones = schema.WIFI_SUBCARRIERS     # 40 MHz, as MM-Fi and the wire
        if not 0 <= tx < 3:
            raise ValueError(f"--tx must be 0, 1 or 2 (transmit antenna), got {tx}")
        self.endian, self.tones, self.tx = endian, tones, tx
        self._csi = csiread.Atheros(None, nrxnum=3, ntxnum=3, pl_size=0, tones=tones, if_report=False)

    def decode(self, record: bytes) -> Packet | str:
        """A packet, or why the record cannot be used."""
        tones, nr, nc = record[16], record[17], record[18]
        if tones != self.tones or nr != schema.WIFI_ANTENNAS or nc <= self.tx:
            return (f"{nr} receive x {nc} transmit antennas x {tones} subcarriers, expected "
                    f"{schema.WIFI_ANTENNAS} x >{self.tx} x {self.tones}")
        # csiread reads whole 16-bit words: two zero bytes keep it inside the buffer
        code = self._csi.pmsg(record + b"\x00\x00", endian=self.endian)
        if code != 0xFF00:
            return f"csiread refused the record (code {code:#x})"
        h = np.asarray(self._csi.csi[0, :, :, self.tx]).T            # [nr, tones] complex
        with np.errstate(divide="ignore"):
            amp = (20 * np.log10(np.abs(h))).astype(np.float32)
        return Packet(int(self._csi.timestamp[0]), amp, np.angle(h).astype(np.float32))


class _Batcher:
    """Packets -> wifi messages of ``burst`` packets (t_ns of the last, period_ns their spacing)."""

    def __init__(self, outlet: Outlet, burst: int):
        if not 1 <= burst <= schema.MAX_WIFI_PACKETS:
            raise ValueError(f"--burst must be 1..{schema.MAX_WIFI_PACKETS} packets per message, got {burst}")
        self.outlet, self.burst = outlet, burst
        self._amp, self._phase, self._t = [], [], []

    def add(self, packet: Packet, t_ns: int) -> None:
        self._amp.append(packet.amp)
        self._phase.append(packet.phase)
        self._t.append(t_ns)
        if len(self._t) >= self.burst:
            self.flush()

    def flush(self) -> None:
        if not self._t:
            return
        n = len(self._t)
        period = int(round((self._t[-1] - self._t[0]) / (n - 1))) if n > 1 else schema.FRAME_PERIOD_NS // 10
        period = min(max(period, 1), 1_000_000_000)
        self.outlet.send(self._t[-1], extra={"period_ns": period},
                         amp=np.stack(self._amp), phase=np.stack(self._phase))
        self._amp, self._phase, self._t = [], [], []


class _Stream:
    """Bytes -> framer -> decoder -> capture time -> batcher, with the accounting."""

    def __init__(self, outlet: Outlet, decoder: Decoder, framer: RecordFramer, burst: int, timing):
        self.outlet, self.decoder, self.framer, self.timing = outlet, decoder, framer, timing
        self.batcher = _Batcher(outlet, burst)
        self._corrupt_seen = 0
        self._warned: set[str] = set()

    def feed(self, data: bytes, received_ns: int) -> bool:
        """Process ``data``; False when stopped while pacing a recording."""
        for record in self.framer.feed(data):
            self._account_corrupt()
            packet = self.decoder.decode(record)
            if isinstance(packet, str):
                if packet not in self._warned:
                    log.warning("CSI record unusable: %s (counted as unusable)", packet)
                    self._warned.add(packet)
                self.outlet.lose(1, "unusable")
                continue
            t_ns = self.timing(packet.t_us * 1000, received_ns)
            if t_ns is None:
                return False
            self.batcher.add(packet, t_ns)
        self._account_corrupt()
        return True

    def _account_corrupt(self) -> None:
        n = self.framer.corrupt - self._corrupt_seen
        if n:
            self.outlet.lose(n, "corrupt")
            self._corrupt_seen = self.framer.corrupt

    def finish(self) -> None:
        self.batcher.flush()
        left = self.framer.finish()
        if left:
            self.outlet.lose(1, "torn")
        stats = self.outlet.stats
        stats.events.update(corrupt_runs=self.framer.corrupt, skipped_bytes=self.framer.skipped_bytes + left)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
def probe_log(path: Path, endian: str, limit: int = 1 << 20) -> None:
    """A recording must hold at least one valid record in its first MiB."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"CSI log {path} not found: pass a file written by the Atheros CSI tool (--log)")
    with open(path, "rb") as f:
        head = f.read(limit)
    if not RecordFramer(endian).feed(head):
        other = "little" if endian == "big" else "big"
        hint = (f"; it does read as {other}-endian: pass --endian {other}" if RecordFramer(other).feed(head)
                else ": is it a log of the Atheros CSI tool?")
        raise AdapterError(f"{path}: no Atheros CSI record ({endian}-endian) in its first {len(head)} bytes{hint}")


def play_log(outlet: Outlet, stop: Stop, path: Path, decoder: Decoder, *, endian: str, burst: int,
             rate: float, start_ns: int | None = None, chunk: int = 1 << 16) -> None:
    pacer = Pacer(rate, stop, start_ns)

    def timing(device_ns: int, _received: int) -> int | None:
        t = pacer.capture_ns(device_ns)
        return t if pacer.wait(t) else None

    stream = _Stream(outlet, decoder, RecordFramer(endian), burst, timing)
    with open(path, "rb") as f:
        while not stop and (data := f.read(chunk)):
            if not stream.feed(data, time.time_ns()):
                break
    stream.finish()
    outlet.stats.clock_resets = pacer.resets


def follow_log(outlet: Outlet, stop: Stop, path: Path, decoder: Decoder, *, endian: str, burst: int,
               clock: DeviceClock, from_start: bool = False, poll_s: float = 0.01, stall_s: float = 5.0) -> None:
    """A log the tool is still writing: read what is appended; reopen when the file is replaced."""
    path = Path(path)
    stream = _Stream(outlet, decoder, RecordFramer(endian), burst, clock.capture_ns)
    f, inode, waited, last_data = None, None, 0.0, time.monotonic()
    try:
        while not stop:
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    if waited == 0 or waited >= 10:
                        log.warning("waiting for the CSI log %s to appear", path)
                        waited = 0
                    waited += poll_s * 50
                    stop.wait(poll_s * 50)
                    continue
                inode = os.fstat(f.fileno()).st_ino
                if not from_start and stream.outlet.stats.sent == 0:
                    f.seek(0, os.SEEK_END)   # live: what is already there is history
                from_start = True            # a replaced file is read from its start
            data = f.read(1 << 16)
            if data:
                last_data = time.monotonic()
                stream.feed(data, time.time_ns())
                continue
            if _replaced(path, inode):
                log.info("CSI log %s was replaced: reading the new file", path)
                outlet.stats.reconnects += 1
                stream.framer.finish()
                f.close()
                f = None
                continue
            if time.monotonic() - last_data > stall_s:
                log.warning("no CSI record appended to %s for %g s: is the CSI tool running?", path, stall_s)
                last_data = time.monotonic()
            stop.wait(poll_s)
    finally:
        if f is not None:
            f.close()
        stream.finish()
        outlet.stats.clock_resets = clock.resets


def _replaced(path: Path, inode: int | None) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_ino != inode


def read_tcp(outlet: Outlet, stop: Stop, address: str, decoder: Decoder, *, endian: str, burst: int,
             clock: DeviceClock, reconnect_s: float = 1.0, stall_s: float = 5.0) -> None:
    """A TCP stream of the log's bytes; reconnect when it drops."""
    host, port = parse_address(address)
    stream = _Stream(outlet, decoder, RecordFramer(endian), burst, clock.capture_ns)
    attempts, connected_once = 0, False
    try:
        while not stop:
            try:
                sock = socket.create_connection((host, port), timeout=2.0)
            except OSError as err:
                if attempts % max(1, int(10 / reconnect_s)) == 0:
                    log.warning("CSI stream %s:%d unavailable (%s): retrying every %g s", host, port, err, reconnect_s)
                attempts += 1
                stop.wait(reconnect_s)
                continue
            if connected_once:
                outlet.stats.reconnects += 1
            log.info("CSI stream %s:%d connected", host, port)
            connected_once, attempts = True, 0
            with sock:
                _read_socket(sock, stream, stop, stall_s, f"{host}:{port}")
            if stream.framer.finish():
                outlet.lose(1, "torn")
    finally:
        stream.finish()
        outlet.stats.clock_resets = clock.resets


def _read_socket(sock: socket.socket, stream: _Stream, stop: Stop, stall_s: float, name: str) -> None:
    sock.settimeout(0.1)
    last_data = time.monotonic()
    while not stop:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            if time.monotonic() - last_data > stall_s:
                log.warning("no CSI bytes from %s for %g s: is the CSI tool running?", name, stall_s)
                last_data = time.monotonic()
            continue
        except OSError as err:
            log.warning("CSI stream %s dropped (%s): reconnecting", name, err)
            return
        if not data:
            log.warning("CSI stream %s closed by the router: reconnecting", name)
            return
        last_data = time.monotonic()
        stream.feed(data, time.time_ns())


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--tcp expects HOST:PORT (e.g. 192.168.1.1:5600), got {text!r}")
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", default=None, metavar="FILE", help="a recorded CSI tool log, replayed at its timing")
    src.add_argument("--follow", default=None, metavar="FILE",
                     help="a log the CSI tool is writing: new records as they are appended")
    src.add_argument("--tcp", default=None, metavar="HOST:PORT", help="a TCP stream of the log's bytes")
    p.add_argument("--from-start", action="store_true", help="--follow: also send what the file already holds")
    p.add_argument("--endian", choices=("big", "little"), default="big",
                   help="byte order of the log's integers: big as the routers write it (default), little "
                        "for a log written on an x86 PC")
    p.add_argument("--tx", type=int, default=0, help="transmit antenna whose CSI is sent (MM-Fi: one, 0)")
    p.add_argument("--burst", type=int, default=1,
                   help="CSI packets per wifi message (1 = each packet on its own, ~100 messages/s)")
    p.add_argument("--clock", choices=("anchor", "epoch"), default="anchor",
                   help="live: the card's timestamps are its own TSF (anchor, default) or UTC (epoch)")
    p.add_argument("--reconnect-s", type=float, default=1.0)
    p.add_argument("--stall-s", type=float, default=5.0, help="live: warn after this many seconds without records")
    add_rate_argument(p)
    add_outlet_arguments(p, MODALITY)


def run(args) -> int:
    try:
        decoder = Decoder(args.endian, tx=args.tx)  # imports csiread: a missing extra fails here, at once
        if not 1 <= args.burst <= schema.MAX_WIFI_PACKETS:
            raise ValueError(f"--burst must be 1..{schema.MAX_WIFI_PACKETS} packets per message, got {args.burst}")
        if args.tcp:
            parse_address(args.tcp)
    except ValueError as err:
        log.error("%s", err)
        return 2

    def loop(outlet: Outlet, stop: Stop) -> None:
        kw = {"endian": args.endian, "burst": args.burst}
        if args.log:
            play_log(outlet, stop, Path(args.log), decoder, rate=args.rate, start_ns=args.start_ns, **kw)
        elif args.follow:
            follow_log(outlet, stop, Path(args.follow), decoder, clock=DeviceClock(args.clock),
                       from_start=args.from_start, stall_s=args.stall_s, **kw)
        else:
            read_tcp(outlet, stop, args.tcp, decoder, clock=DeviceClock(args.clock), reconnect_s=args.reconnect_s,
                     stall_s=args.stall_s, **kw)

    return run_adapter(args, MODALITY, loop, recording=bool(args.log),
                       probe=(lambda: probe_log(Path(args.log), args.endian)) if args.log else None)
