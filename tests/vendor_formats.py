"""Byte-exact recordings in the sensor vendors' own formats, built from their documented layouts
(no vendor library writes them here): an Ouster pcap with its metadata JSON, a TI mmWave
out-of-box demo UART dump, an Atheros CSI tool log. Used by the adapter tests."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Ouster: sensor metadata JSON + a pcap of RNG19_RFL8_SIG16_NIR16 lidar packets (FW 2.x/3.x layout:
# 32-byte packet header, per column a 12-byte header and 12 bytes per pixel, 32-byte footer)
# ---------------------------------------------------------------------------------------------
OUSTER_BEAMS = 32
OUSTER_COLUMNS = 512
OUSTER_COLS_PER_PACKET = 16
OUSTER_INIT_ID = 8247301
OUSTER_SN = 992146000760
OUSTER_BEAM_OFFSET_MM = 15.806
OUSTER_LIDAR_TO_SENSOR = [-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 36.18, 0, 0, 0, 1]


def ouster_metadata() -> dict:
    """The metadata an OS-1-32 in 512x10 mode reports (``/api/v1/sensor/metadata``)."""
    altitude = np.linspace(16.6, -16.6, OUSTER_BEAMS).round(3).tolist()   # top beam first
    azimuth = [(3.1, 1.0, -1.0, -3.1)[i % 4] for i in range(OUSTER_BEAMS)]
    return {
        "beam_intrinsics": {
            "beam_altitude_angles": altitude, "beam_azimuth_angles": azimuth,
            "beam_to_lidar_transform": [1, 0, 0, OUSTER_BEAM_OFFSET_MM, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
            "lidar_origin_to_beam_origin_mm": OUSTER_BEAM_OFFSET_MM,
        },
        "calibration_status": {"reflectivity": {"timestamp": "2024-01-01T00:00:00", "valid": True}},
        "config_params": {
            "azimuth_window": [0, 360000], "columns_per_packet": OUSTER_COLS_PER_PACKET,
            "lidar_mode": f"{OUSTER_COLUMNS}x10", "operating_mode": "NORMAL",
            "timestamp_mode": "TIME_FROM_INTERNAL_OSC", "udp_dest": "127.0.0.1",
            "udp_port_imu": 7503, "udp_port_lidar": 7502, "udp_profile_imu": "LEGACY",
            "udp_profile_lidar": "RNG19_RFL8_SIG16_NIR16",
        },
        "imu_intrinsics": {"imu_to_sensor_transform": [1, 0, 0, 6.253, 0, 1, 0, -11.775, 0, 0, 1, 7.645,
                                                       0, 0, 0, 1]},
        "lidar_data_format": {
            "column_window": [0, OUSTER_COLUMNS - 1], "columns_per_frame": OUSTER_COLUMNS,
            "columns_per_packet": OUSTER_COLS_PER_PACKET,
            "pixel_shift_by_row": [(12, 4, -4, -12)[i % 4] for i in range(OUSTER_BEAMS)],
            "pixels_per_column": OUSTER_BEAMS, "udp_profile_imu": "LEGACY",
            "udp_profile_lidar": "RNG19_RFL8_SIG16_NIR16",
        },
        "lidar_intrinsics": {"lidar_to_sensor_transform": OUSTER_LIDAR_TO_SENSOR},
        "sensor_info": {
            "build_date": "2023-03-18T18:28:26Z", "build_rev": "v2.5.0", "image_rev": "ousteros-image-prod-aries-v2.5.0",
            "initialization_id": OUSTER_INIT_ID, "prod_line": "OS-1-32-U0", "prod_pn": "840-102145-D",
            "prod_sn": str(OUSTER_SN), "status": "RUNNING",
        },
    }


def ouster_packet(frame_id: int, first_col: int, ranges_mm: np.ndarray, t0_ns: int) -> bytes:
    """One lidar packet: columns first_col .. first_col+15 of a frame; ranges_mm [32, 512] (row = beam)."""
    header = struct.pack("<HH", 1, frame_id & 0xFFFF) + OUSTER_INIT_ID.to_bytes(3, "little") \
        + OUSTER_SN.to_bytes(5, "little") + bytes(20)
    cols = []
    for c in range(first_col, first_col + OUSTER_COLS_PER_PACKET):
        col = bytearray(struct.pack("<QHH", ouster_column_time(t0_ns, c), c, 1))   # status bit 0: valid
        px = np.zeros((OUSTER_BEAMS, 12), np.uint8)
        px[:, 0:4] = (ranges_mm[:, c].astype("<u4") & 0x7FFFF).view(np.uint8).reshape(-1, 4)
        px[:, 4] = 50                                                               # reflectivity
        px[:, 6:8] = np.full(OUSTER_BEAMS, 300, "<u2").view(np.uint8).reshape(-1, 2)  # signal
        px[:, 8:10] = np.full(OUSTER_BEAMS, 900, "<u2").view(np.uint8).reshape(-1, 2)  # near-IR
        col += px.tobytes()
        cols.append(bytes(col))
    return header + b"".join(cols) + bytes(32)   # footer (CRC-64 on FW 3.x, not checked on read)


def ouster_column_time(t0_ns: int, col: int) -> int:
    return t0_ns + col * (100_000_000 // OUSTER_COLUMNS)


def udp_frame(payload: bytes, dst_port: int, src_port: int = 7502) -> bytes:
    """Ethernet II + IPv4 + UDP around ``payload`` (loopback addresses)."""
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    s = sum(struct.unpack("!10H", ip))
    s = (s & 0xFFFF) + (s >> 16)
    ip = ip[:10] + struct.pack("!H", ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF) + ip[12:]
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + udp


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """libpcap classic format (microsecond timestamps, LINKTYPE_ETHERNET)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, frame in packets:
            f.write(struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)) % 1_000_000, len(frame), len(frame)))
            f.write(frame)


@dataclass
class OusterRecording:
    pcap: Path
    meta: Path
    ranges_mm: np.ndarray      # [frames, 32, 512]
    t0_ns: list[int]           # first column time of each frame (sensor clock)


def ouster_recording(folder: Path, frames: int = 10, seed: int = 0) -> OusterRecording:
    """A person-sized blob 3 m ahead, a wall behind, no returns here and there."""
    rng = np.random.default_rng(seed)
    meta = ouster_metadata()
    ranges = rng.integers(2_500, 6_000, size=(frames, OUSTER_BEAMS, OUSTER_COLUMNS)).astype(np.uint32)
    ranges[rng.random(ranges.shape) < 0.1] = 0                       # no return
    packets, t0s = [], []
    for f in range(frames):
        t0 = 5_000_000_000 + f * 100_000_000                          # sensor clock: since boot
        t0s.append(t0)
        for first in range(0, OUSTER_COLUMNS, OUSTER_COLS_PER_PACKET):
            payload = ouster_packet(f + 1, first, ranges[f], t0)
            packets.append((1_767_225_600 + f * 0.1 + first * 1e-4, udp_frame(payload, 7502)))
    pcap, meta_path = folder / "os1.pcap", folder / "os1.json"
    write_pcap(pcap, packets)
    meta_path.write_text(json.dumps(meta, indent=1))
    return OusterRecording(pcap, meta_path, ranges, t0s)


def ouster_xyz(ranges_mm: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """The Ouster manual's range-to-XYZ formula, sensor frame, metres: [32, 512, 3]."""
    meta = meta or ouster_metadata()
    bi = meta["beam_intrinsics"]
    n = bi["lidar_origin_to_beam_origin_mm"]
    w = meta["lidar_data_format"]["columns_per_frame"]
    r = ranges_mm.astype(np.float64)
    enc = 2 * math.pi * (1 - np.arange(w) / w)[None, :]
    az = -np.radians(np.asarray(bi["beam_azimuth_angles"]))[:, None]
    alt = np.radians(np.asarray(bi["beam_altitude_angles"]))[:, None]
    x = (r - n) * np.cos(enc + az) * np.cos(alt) + n * np.cos(enc)
    y = (r - n) * np.sin(enc + az) * np.cos(alt) + n * np.sin(enc)
    z = (r - n) * np.sin(alt) + 0 * enc
    lidar = np.stack([x, y, z, np.ones_like(x)], axis=-1)
    sensor = lidar @ np.asarray(meta["lidar_intrinsics"]["lidar_to_sensor_transform"], float).reshape(4, 4).T
    return sensor[..., :3] / 1000.0


# ---------------------------------------------------------------------------------------------
# TI mmWave SDK 3.x out-of-box demo: UART frames of the data port
# ---------------------------------------------------------------------------------------------
TI_MAGIC = struct.pack("<4H", 0x0102, 0x0304, 0x0506, 0x0708)
TI_PLATFORM_IWR6843 = 0xA6843
TI_VERSION = 0x03050004          # SDK 3.5.0.4


def ti_frame(number: int, points: np.ndarray, snr_db: np.ndarray | None, noise_db: np.ndarray | None = None,
             extra_tlv: bytes = b"") -> bytes:
    """One frame: header, TLV 1 (x, y, z, doppler float32), TLV 7 (snr, noise int16 in 0.1 dB)
    unless snr_db is None, an optional extra TLV (e.g. a range profile), padded to 32 bytes."""
    points = np.asarray(points, "<f4").reshape(-1, 4)
    n = len(points)
    tlvs = [struct.pack("<2I", 1, points.nbytes) + points.tobytes()] if n else []
    if n and snr_db is not None:
        side = np.zeros((n, 2), "<i2")
        side[:, 0] = np.round(np.asarray(snr_db) * 10)
        side[:, 1] = np.round(np.asarray(noise_db if noise_db is not None else np.full(n, 12.3)) * 10)
        tlvs.append(struct.pack("<2I", 7, side.nbytes) + side.tobytes())
    if extra_tlv:
        tlvs.append(extra_tlv)
    body = b"".join(tlvs)
    total = 40 + len(body)
    total += -total % 32
    header = TI_MAGIC + struct.pack("<8I", TI_VERSION, total, TI_PLATFORM_IWR6843, number,
                                    number * 20_000_000 % 2**32, n, len(tlvs), 0)
    return (header + body).ljust(total, b"\x0f")


def ti_range_profile_tlv(bins: int = 64) -> bytes:
    profile = (np.arange(bins) * 37 % 1000).astype("<u2")       # TLV 2: log-magnitude range profile
    return struct.pack("<2I", 2, profile.nbytes) + profile.tobytes()


@dataclass
class RadarRecording:
    dump: Path
    sent: dict[int, np.ndarray]     # frame number -> [N, 5] x, y, z, snr_db, doppler (TI axes) that must arrive
    torn: list[int]                 # frame numbers cut short in the dump
    corrupt: list[int]              # frame numbers whose header/TLVs were damaged
    missing: list[int]              # frame numbers never in the dump (lost before the recording)


def radar_recording(folder: Path, frames: int = 40, seed: int = 0, damage: bool = True) -> RadarRecording:
    """A dump as a USB-UART gives it: starting mid-frame, with a torn frame, a frame whose TLV
    length is wrong, a garbage run, a frame never received, and a frame cut at the end."""
    rng = np.random.default_rng(seed)
    out = bytearray(ti_frame(0, rng.normal(size=(3, 4)), np.full(3, 10.0))[17:] if damage else b"")  # mid-frame start
    sent, torn, corrupt, missing = {}, [], [], []
    for k in range(1, frames + 1):
        n = int(rng.integers(0, 25))
        pts = np.zeros((n, 4), np.float32)
        pts[:, 0] = rng.uniform(-0.5, 0.5, n)        # x right
        pts[:, 1] = rng.uniform(2.8, 3.6, n)         # y boresight
        pts[:, 2] = rng.uniform(-1.0, 0.8, n)        # z up
        pts[:, 3] = rng.uniform(-2, 2, n)            # doppler
        snr = np.round(rng.uniform(5, 40, n), 1)
        frame = ti_frame(k, pts, snr, extra_tlv=ti_range_profile_tlv() if k % 5 == 0 else b"")
        if damage and k in (7, frames):              # torn: bytes lost / unplugged mid-frame
            out += frame[: len(frame) // 2 if k == 7 else 50]
            torn.append(k)
            continue
        if damage and k == 12:                       # a TLV length that overruns the frame
            out += frame[:44] + struct.pack("<I", 9999) + frame[48:]
            corrupt.append(k)
            continue
        if damage and k == 18:
            out += bytes(rng.integers(0, 256, 300, dtype=np.uint8))               # line noise
        if damage and k == 25:                       # never received
            missing.append(k)
            continue
        out += frame
        sent[k] = np.column_stack([pts[:, :3], snr.astype(np.float32), pts[:, 3]]).astype(np.float32)
    dump = folder / "iwr6843.dat"
    dump.write_bytes(bytes(out))
    return RadarRecording(dump, sent, torn, corrupt, missing)


# ---------------------------------------------------------------------------------------------
# Atheros CSI tool log (Xie et al.'s user-space tool): uint16 length + 25-byte status + CSI + payload
# ---------------------------------------------------------------------------------------------
def atheros_csi_bytes(h: np.ndarray) -> bytes:
    """Pack CSI ints [tones, nr, nc] (complex, parts in -512..511) as the hardware does: per
    subcarrier, per antenna pair, 10-bit imaginary then 10-bit real, LSB first, 16-bit LE words."""
    acc, pos = 0, 0
    for v in h.reshape(-1):
        acc |= (int(v.imag) & 0x3FF) << pos
        acc |= (int(v.real) & 0x3FF) << (pos + 10)
        pos += 20
    n = math.ceil(pos / 8)
    return acc.to_bytes(n, "little")


def atheros_record(t_us: int, h: np.ndarray, *, endian: str = ">", payload: bytes = b"\x88\x41" + bytes(8),
                   channel: int = 5180, rate: int = 0x8F, rssi=(45, 40, 41, 38), noise: int = 0) -> bytes:
    tones, nr, nc = h.shape
    csi = atheros_csi_bytes(h)
    status = struct.pack(endian + "QHHBBBBBBBBBBBH", t_us, len(csi), channel, 0, noise, rate, 1, tones, nr, nc,
                         *rssi, len(payload))
    body = status + csi + payload
    return struct.pack(endian + "H", len(body)) + body


@dataclass
class CsiRecording:
    log: Path
    t_us: list[int]                 # timestamps of the usable records, in order
    h: list[np.ndarray]             # their CSI [114, 3, 1] complex ints
    unusable: int                   # records with the wrong antenna/subcarrier count
    corrupt: int                    # damaged runs in the log


def csi_recording(folder: Path, packets: int = 200, seed: int = 0, endian: str = ">", damage: bool = True) -> CsiRecording:
    """~100 packets/s, 1 Tx x 3 Rx x 114 subcarriers as MM-Fi's routers; with a 2-antenna record,
    a garbage run, a zero subcarrier (amplitude -inf) and a record cut at the end."""
    rng = np.random.default_rng(seed)
    out, ts, hs, unusable, corrupt = bytearray(), [], [], 0, 0
    t = 7_000_000_123
    for k in range(packets):
        t += int(rng.normal(10_000, 300))
        h = (rng.integers(-300, 300, (114, 3, 1)) + 1j * rng.integers(-300, 300, (114, 3, 1)))
        if k == 3:
            h[10, 1, 0] = 0                                  # |H| = 0: -inf dB, repaired at the runtime
        if damage and k == 50:
            out += atheros_record(t, h[:, :2, :], endian=endian)   # only 2 receive chains
            unusable += 1
            continue
        if damage and k == packets - 20:
            out += bytes(rng.integers(0, 256, 77, dtype=np.uint8))  # garbage between records
            corrupt += 1
        out += atheros_record(t, h, endian=endian)
        ts.append(t)
        hs.append(h)
    if damage:
        out += atheros_record(t + 10_000, hs[-1], endian=endian)[:100]   # the router stopped mid-record
    log = folder / "csi.dat"
    log.write_bytes(bytes(out))
    return CsiRecording(log, ts, hs, unusable, corrupt)


# ---------------------------------------------------------------------------------------------
# Camera: no keypoint model ships with a package here, so a small heatmap model is built: the
# brightness of the letterboxed frame, pooled by 4 (a stride-4 heatmap), masked per keypoint to a
# window around where the scene puts that keypoint's marker.
# ---------------------------------------------------------------------------------------------
CAM_W, CAM_H = 1280, 720            # a 16:9 camera
MODEL_W, MODEL_H, STRIDE = 256, 192, 4
# Marker cells (column, row) of the 64x48 heatmap, in COCO-17 order, laid out as a person facing
# the camera (its left on the image's right); at least 3 cells apart so the windows do not overlap.
CAM_CELLS = [(32, 9), (35, 7), (29, 7), (38, 10), (26, 10), (38, 14), (26, 14), (41, 20), (23, 20),
             (44, 26), (20, 26), (36, 26), (28, 26), (36, 32), (28, 32), (36, 38), (28, 38)]


def cam_scale() -> tuple[float, float, float]:
    """Letterbox of a CAM_W x CAM_H frame into MODEL_W x MODEL_H: scale, pad x, pad y."""
    s = min(MODEL_W / CAM_W, MODEL_H / CAM_H)
    return s, (MODEL_W - round(CAM_W * s)) // 2, (MODEL_H - round(CAM_H * s)) // 2


def cam_marker_centres() -> np.ndarray:
    """[17, 2] frame pixels of the marker centres (each covers exactly one heatmap cell)."""
    s, px, py = cam_scale()
    return np.array([[((STRIDE * i + STRIDE / 2) - px) / s, ((STRIDE * j + STRIDE / 2) - py) / s]
                     for i, j in CAM_CELLS], np.float64)


def cam_frame(shift_px: int = 0) -> np.ndarray:
    """A BGR frame: dark grey, a white square per keypoint (``shift_px`` moves them all right)."""
    s, _, _ = cam_scale()
    half = STRIDE / s / 2
    img = np.full((CAM_H, CAM_W, 3), 30, np.uint8)
    for x, y in cam_marker_centres():
        x += shift_px
        img[int(round(y - half)):int(round(y + half)), int(round(x - half)):int(round(x + half))] = 255
    return img


def cam_keypoint_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    hm_w, hm_h = MODEL_W // STRIDE, MODEL_H // STRIDE
    masks = np.zeros((1, 17, hm_h, hm_w), np.float32)
    for k, (i, j) in enumerate(CAM_CELLS):
        masks[0, k, j - 1:j + 2, i - 1:i + 2] = 1.0
    assert masks.sum(axis=1).max() == 1.0               # windows do not overlap
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["bright"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["bright"], ["pooled"], kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE]),
        helper.make_node("Mul", ["pooled", "masks"], ["heatmaps"]),
    ]
    graph = helper.make_graph(
        nodes, "coco17_heatmap_test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, MODEL_H, MODEL_W])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1, 17, hm_h, hm_w])],
        [onnx.numpy_helper.from_array(masks, "masks")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cam_images(folder: Path, frames: int) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for f in range(frames):
        cv2.imwrite(str(folder / f"frame{f:04d}.png"), cam_frame())
    return folder
