"""``sensors ouster``: an Ouster spinning LiDAR (MM-Fi: 32 beams, 512 columns at 10 Hz) -> ``lidar``.

Everything Ouster-specific goes through ouster-sdk: a live sensor (its host name or IP) or a
recording (a pcap of its UDP packets plus the sensor's metadata JSON), ``open_source`` batching
packets into frames, ``XYZLut`` turning each (staggered) range image into points with the
sensor's own beam intrinsics. The points are in Ouster's *sensor frame*: x forward (away from
the connector), y left, z up, metres, origin at the sensor's base plate; that is MM-Fi's LiDAR
convention (``sensors.core.schema``), so no axis changes beyond an optional ``--yaw-deg`` for a
sensor that is not turned with its x axis at the subject. Then: points with no return dropped,
``--min-range``/``--max-range``, an azimuth window ``--fov-deg`` around +x (MM-Fi's clouds are a
window around the subject with the floor, ≈1,000–1,400 points), ``--max-points`` (uniform
thinning, ring order kept). Points are sent ring by ring, top beam first, as MM-Fi's.

Capture time: the median timestamp of the columns that gave points (the moment the window
around the subject was scanned). The sensor's timestamps are nanoseconds of its own clock:
``TIME_FROM_PTP_1588`` in the metadata means they are UTC/TAI (``--clock epoch``, with
``--clock-offset-s -37`` for a TAI grandmaster), otherwise they count from the sensor's boot and
are anchored to the station clock (live) or replayed from now (pcap). Gaps in the frame id are
frames that never arrived (counted, their sequence numbers consumed); frames with missing
packets are sent with the points they have (counted as ``incomplete_frames``).
"""

from __future__ import annotations

import logging
import math
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

MODALITY = modality_carrying(schema.POINTS, schema.LIDAR_COLUMNS)   # the stream this adapter feeds

FRAME_ID_MODULO = 1 << 16


def check_crop(min_range: float, max_range: float, fov_deg: float, max_points: int | None) -> None:
    if not 0 <= min_range < max_range:
        raise ValueError(f"need 0 <= --min-range < --max-range, got {min_range}, {max_range}")
    if not 0 < fov_deg <= 360:
        raise ValueError(f"--fov-deg must be in (0, 360], got {fov_deg}")
    if max_points is not None and not 0 < max_points <= schema.MAX_LIDAR_POINTS:
        raise ValueError(f"--max-points must be 1..{schema.MAX_LIDAR_POINTS}, got {max_points}")


class Cropper:
    """Range image -> the points MM-Fi would keep, and the columns they came from."""

    def __init__(self, info, *, min_range: float, max_range: float, fov_deg: float, yaw_deg: float,
                 max_points: int | None, seed: int = 0):
        from ouster.sdk import core

        check_crop(min_range, max_range, fov_deg, max_points)
        self.lut = core.XYZLut(info)
        self.min_range, self.max_range = min_range, max_range
        self.half_fov = math.radians(fov_deg) / 2
        yaw = math.radians(yaw_deg)
        self.rot = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        self.max_points = max_points or schema.MAX_LIDAR_POINTS
        self.rng = np.random.default_rng(seed)

    def points(self, range_mm: np.ndarray, column_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """range_mm [H, W] staggered -> (float32 [N, 3] ring by ring, the columns used [N])."""
        xyz = self.lut(range_mm) @ self.rot.T                    # [H, W, 3] metres, sensor frame
        dist = np.linalg.norm(xyz, axis=-1)
        azimuth = np.arctan2(xyz[..., 1], xyz[..., 0])
        keep = ((range_mm > 0) & column_valid[None, :] & (dist >= self.min_range) & (dist <= self.max_range)
                & (np.abs(azimuth) <= self.half_fov))
        rows, cols = np.nonzero(keep)                            # row-major: ring by ring, top beam first
        if len(rows) > self.max_points:
            pick = np.sort(self.rng.choice(len(rows), self.max_points, replace=False))
            rows, cols = rows[pick], cols[pick]
        return xyz[rows, cols].astype(np.float32), cols


def open_ouster(source: str, meta: str | None):
    """ouster-sdk's frame source for a pcap (+ metadata JSON) or a live sensor's host name."""
    from ouster.sdk import open_source

    is_file = Path(source).suffix.lower() in (".pcap", ".pcapng")
    if is_file:
        if not Path(source).is_file():
            raise AdapterError(f"pcap {source} not found")
        if meta is None:
            raise AdapterError("a pcap needs the sensor's metadata JSON (--meta FILE, saved with the recording)")
        if not Path(meta).is_file():
            raise AdapterError(f"metadata {meta} not found")
    try:
        kwargs = {"meta": [str(meta)]} if meta else {}
        return open_source(str(source), sensor_idx=0, **kwargs)
    except Exception as err:  # noqa: BLE001 - the SDK raises its own and RuntimeError types; one line for each
        detail = str(err).replace("\n", " ").strip()
        raise AdapterError(f"ouster-sdk cannot open {source}" + (f" with {meta}" if meta else "")
                           + f": {detail[:300]}") from None


def probe_pcap(pcap: str, meta: str | None) -> None:
    """A recording must open with its metadata and give at least one frame."""
    src = open_ouster(pcap, meta)
    try:
        first = next(iter(src), None)
    except (RuntimeError, OSError) as err:
        raise AdapterError(f"ouster-sdk cannot read {pcap}: {str(err).strip()[:300]}") from None
    finally:
        src.close()
    if first is None or first[0] is None:
        raise AdapterError(f"{pcap}: no LiDAR frame for the sensor of {meta} (udp_port_lidar, mode and profile "
                           f"must match the recording): are the pcap and the JSON from the same sensor?")


def _timestamp_mode(info) -> str:
    return str(getattr(info.config, "timestamp_mode", "") or "")


class _Sender:
    def __init__(self, outlet: Outlet, cropper: Cropper, timing):
        self.outlet, self.cropper, self.timing = outlet, cropper, timing
        self.last_id: int | None = None

    def frame(self, frame) -> bool:
        from ouster.sdk.core import ChanField

        fid = int(frame.frame_id)
        if self.last_id is not None:
            gap = (fid - self.last_id) % FRAME_ID_MODULO - 1
            if 0 < gap < FRAME_ID_MODULO // 2:
                self.outlet.lose(gap, "device_gap")
        self.last_id = fid
        if not frame.complete():
            self.outlet.stats.event("incomplete_frames")
        valid = (np.asarray(frame.status) & 1).astype(bool)
        pts, cols = self.cropper.points(np.asarray(frame.field(ChanField.RANGE)), valid)
        stamps = np.asarray(frame.timestamp)
        used = stamps[cols] if len(cols) else stamps[valid]
        if not len(used):
            self.outlet.lose(1, "read_error")
            return True
        t_ns = self.timing(int(np.median(used)))
        if t_ns is None:
            return False
        self.outlet.send(t_ns, points=pts)
        return True


def run_source(outlet: Outlet, stop: Stop, source: str, meta: str | None, cropper_kw: dict, *, recording: bool,
               rate: float, clock: str | None, clock_offset_s: float, reconnect_s: float,
               start_ns: int | None = None) -> None:
    while not stop:
        src = open_ouster(source, meta) if recording else _open_live(source, meta, stop, reconnect_s, outlet)
        if src is None:
            return
        info = src.sensor_info[0]
        mode = clock or ("epoch" if "PTP" in _timestamp_mode(info) else "anchor")
        log.info("ouster %s: %s %dx%d, %s, timestamps %s -> clock %s", source, info.prod_line, info.format.pixels_per_column,
                 info.format.columns_per_frame, info.format.udp_profile_lidar, _timestamp_mode(info), mode)
        sender = _Sender(outlet, Cropper(info, **cropper_kw), _timing(recording, rate, stop, mode, clock_offset_s, start_ns))
        try:
            for frames in src:
                frame = frames[0]
                if frame is not None and not sender.frame(frame):
                    break
                if stop:
                    break
        except (RuntimeError, OSError) as err:
            if recording:
                raise AdapterError(f"ouster-sdk failed reading {source}: {str(err).strip()[:300]}") from None
            log.warning("ouster %s went away (%s): reconnecting", source, str(err).strip()[:200])
        finally:
            src.close()
        if recording:
            return
        outlet.stats.reconnects += 1


def _timing(recording: bool, rate: float, stop: Stop, mode: str, offset_s: float, start_ns: int | None = None):
    import time

    if recording:
        pacer = Pacer(rate, stop, start_ns)

        def paced(device_ns: int) -> int | None:
            t = pacer.capture_ns(device_ns)
            return t if pacer.wait(t) else None
        return paced
    clock = DeviceClock(mode, offset_s=offset_s)
    return lambda device_ns: clock.capture_ns(device_ns, time.time_ns())


def _open_live(source: str, meta: str | None, stop: Stop, reconnect_s: float, outlet: Outlet):
    attempts = 0
    while not stop:
        try:
            return open_ouster(source, meta)
        except AdapterError as err:
            if attempts % max(1, int(10 / reconnect_s)) == 0:
                log.warning("%s; retrying every %g s", err, reconnect_s)
            attempts += 1
            stop.wait(reconnect_s)
    return None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sensor", default=None, metavar="HOST", help="live: the sensor's host name or IP")
    src.add_argument("--pcap", default=None, metavar="FILE", help="a recording: pcap of the sensor's UDP packets")
    p.add_argument("--meta", default=None, metavar="FILE",
                   help="the sensor's metadata JSON (required with --pcap; live: read from the sensor)")
    p.add_argument("--min-range", type=float, default=0.5, help="metres (default 0.5)")
    p.add_argument("--max-range", type=float, default=6.0, help="metres (default 6)")
    p.add_argument("--fov-deg", type=float, default=60.0,
                   help="azimuth window around +x kept, degrees (default 60: ±30°; 360 = the whole scan)")
    p.add_argument("--yaw-deg", type=float, default=0.0,
                   help="rotate the cloud about z (sensor mounted with its x axis not at the subject)")
    p.add_argument("--max-points", type=int, default=None, help="thin each cloud uniformly to at most N points")
    p.add_argument("--clock", choices=("anchor", "epoch"), default=None,
                   help="live: the sensor's timestamps are from boot (anchor) or UTC (epoch); default: epoch "
                        "when the metadata says TIME_FROM_PTP_1588")
    p.add_argument("--clock-offset-s", type=float, default=0.0, help="added to epoch timestamps (TAI: -37)")
    p.add_argument("--reconnect-s", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0, help="thinning seed")
    add_rate_argument(p)
    add_outlet_arguments(p, MODALITY)


def run(args) -> int:
    import ouster.sdk  # noqa: F401 - a missing extra fails here, before waiting for the runtime

    try:
        check_crop(args.min_range, args.max_range, args.fov_deg, args.max_points)
    except ValueError as err:
        log.error("%s", err)
        return 2
    cropper_kw = {"min_range": args.min_range, "max_range": args.max_range, "fov_deg": args.fov_deg,
                  "yaw_deg": args.yaw_deg, "max_points": args.max_points, "seed": args.seed}

    def loop(outlet: Outlet, stop: Stop) -> None:
        run_source(outlet, stop, args.pcap or args.sensor, args.meta, cropper_kw, recording=bool(args.pcap),
                   rate=args.rate, clock=args.clock, clock_offset_s=args.clock_offset_s,
                   reconnect_s=args.reconnect_s, start_ns=args.start_ns)

    return run_adapter(args, MODALITY, loop, recording=bool(args.pcap),
                       probe=(lambda: probe_pcap(args.pcap, args.meta)) if args.pcap else None)
