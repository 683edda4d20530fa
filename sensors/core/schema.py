"""The one place that names modalities, shapes, units, joints and the skeleton.

Nothing else in the code base spells a modality name, an array shape or a joint index by hand:
import it from here.

Conventions
-----------
* Modality order is ``MODALITIES`` = (rgb, lidar, mmwave, wifi). A presence mask is a length-4
  0/1 vector in that order; a Shapley coalition is the same mask, and its index is the bitmask
  ``sum(mask[i] << i)`` (see ``coalition_index``): 0 = empty set, 15 = all four.
* Poses are Human3.6M-17 joints, metres, camera frame (x right, y down, z depth).
* RGB keypoints are COCO-17, pixels of a 640x480 image.
* LiDAR points are metres in the LiDAR frame (x forward, y left, z up).
* mmWave points have five columns; the order of the last two is a named setting
  (``MMWAVE_COLUMNS``), most likely x, y, z, SNR (dB), radial velocity (m/s).
* WiFi CSI is amplitude and phase of 3 antennas x 114 subcarriers x 10 packets per 100 ms frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Modalities
# ----------------------------------------------------------------------------------------------
MODALITIES: tuple[str, ...] = ("rgb", "lidar", "mmwave", "wifi")
N_MODALITIES = len(MODALITIES)
MODALITY_INDEX = {m: i for i, m in enumerate(MODALITIES)}
GT_TOPIC = "gt"  # ground truth stream (replay only)
POSE_TOPIC = "pose"  # runtime output stream

FRAME_RATE_HZ = 10.0
FRAME_PERIOD_NS = int(1e9 / FRAME_RATE_HZ)
FRAMES_PER_SEQUENCE = 297  # MM-Fi's toolbox hard-codes this

# RGB keypoints: COCO-17 in pixels of a 640x480 image.
IMAGE_WIDTH = 640
IMAGE_HEIGHT = 480
N_KEYPOINTS = 17

# LiDAR: (N, 3) metres in the sensor frame.
LIDAR_COLUMNS = ("x", "y", "z")
# mmWave: (N, 5). The order of the last two columns is disputed in MM-Fi: keep it a setting.
MMWAVE_COLUMNS = ("x", "y", "z", "snr_db", "doppler_mps")
# WiFi CSI: antennas x subcarriers x packets per frame.
WIFI_ANTENNAS = 3
WIFI_SUBCARRIERS = 114
WIFI_PACKETS = 10
WIFI_PACKET_RATE_HZ = 100.0

# Why a sensor message was dropped or counted lost (the closed label set of the drop counter).
# Accounting: messages sent = awc_messages_received_total + awc_messages_dropped_total (all reasons).
DROP_REASONS: tuple[str, ...] = (
    "malformed",       # not a valid multipart/msgpack message
    "bad_version",     # wire version not supported
    "unknown_topic",   # topic not one of the input modalities
    "bad_dtype",       # dtype not allowed for that array
    "bad_shape",       # shape wrong, or shape and buffer length disagree
    "oversized",       # more points/packets than the limit
    "non_finite",      # NaN/inf where values must be finite (timestamps, points)
    "out_of_range",    # finite values beyond the wire's magnitude bound (e.g. a point at 3e38 m)
    "clock",           # capture time far ahead of / behind the station clock (a sensor clock fault)
    "sequence_gap",    # messages lost upstream, counted from per-source sequence gaps
    "queue_full",      # decoded but the bounded ingest queue was full (inference fell behind)
    "scope",           # the sending key may not send this topic or src (its allow-list scope)
)
# Messages whose topic is not a known modality are counted under this modality label.
UNKNOWN_MODALITY = "unknown"

# Hard limits applied to anything that comes off disk or the wire (hostile-input guard).
MAX_LIDAR_POINTS = 65_536
MAX_MMWAVE_POINTS = 4_096
MAX_WIFI_PACKETS = 1_000


# How a modality's frame is made into model inputs (sensors.core.preprocess), checked for health
# (runtime.health), read from and written to MM-Fi files (sensors.mmfi_files, sensors.simulate.writer)
# and encoded (training.model): code dispatches on the kind, never on a modality's name.
KEYPOINTS = "keypoints"   # [K, 2] per frame; the model sees a causal window of frames
POINTS = "points"         # [N, columns] point cloud; sampled/padded to a cap, with a mask
CSI = "csi"               # a stream of packets [P, antennas, subcarriers], amplitude and phase
KINDS: tuple[str, ...] = (KEYPOINTS, POINTS, CSI)


@dataclass(frozen=True)
class ArraySpec:
    """One array of a wire topic: the dtype on the wire and its shape (None = variable, with a limit)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    required: bool = True
    finite: bool = False  # NaN/inf make the message invalid (reason non_finite)


@dataclass(frozen=True)
class ModalitySpec:
    """One modality, as one row of the table every module iterates (``MODALITY_SPECS``).

    Frames come from the sensor as ``shape`` (before preprocessing); ``inputs`` are the model
    inputs they become. The health defaults (``value_ranges``, ``point_range``, ``roughness``,
    ``roughness_floor``) are those of the runtime config's ``health`` section (docs/runtime.md).
    """

    name: str
    kind: str                               # KEYPOINTS | POINTS | CSI
    shape: tuple[int | None, ...]           # one frame as the sensor gives it; None = variable length
    units: str                              # the values before normalisation (awc.units)
    preprocessing: str                      # how a frame becomes the model input (awc.preprocessing)
    wire: tuple[ArraySpec, ...]             # the arrays of its wire message (docs/wire.md)
    value_ranges: tuple[tuple[float, float], ...]   # plausible [low, high] per value column
    roughness: str                          # which roughness measure input health uses (runtime.health)
    roughness_floor: float                  # smallest roughness reference, in the measure's units
    mmfi_folder: str                        # MM-Fi folder of its frame files
    mmfi_suffix: str                        # and their suffix
    fault_noise: float                      # std of the injected ``noise`` fault (sensors.faults)
    columns: tuple[str, ...] = ()           # names of the last axis (keypoint u, v; point columns)
    max_points: int | None = None           # most rows on the wire and on disk (points; CSI packets)
    point_range: tuple[int, int] | None = None   # plausible points per frame (POINTS)
    typical_points: int | None = None       # points in a typical frame (POINTS; benchmarks' realistic frames)
    crop_key: str | None = None             # model setting: crop the points to the body (preprocess.crop_lidar)
    columns_key: str | None = None          # model setting: the column order the model takes (a disputed order)
    rehab_key: bool = False                 # a key modality of the rehabilitation trust (docs/rehab.md)

    @property
    def index(self) -> int:
        """Position in ``MODALITIES`` (presence, coalition bit, shares)."""
        return MODALITY_INDEX[self.name]

    @property
    def inputs(self) -> tuple[str, ...]:
        """Its model inputs (absent = all of them zero, presence 0)."""
        return (self.name, f"{self.name}_mask") if self.kind == POINTS else (self.name,)

    @property
    def size_key(self) -> str | None:
        """The model setting that sizes its input, a training config key and an ``awc.*`` metadata
        key: ``<name>_window`` (keypoints: frames in the causal window), ``<name>_cap`` (points:
        the cap); None for CSI (fixed size)."""
        return {KEYPOINTS: f"{self.name}_window", POINTS: f"{self.name}_cap"}.get(self.kind)


_PX = ((-640.0, 1280.0), (-480.0, 960.0))   # pixels: generous margin around the 640x480 image (detectors
#                                             extrapolate off-image joints)
_M100 = (-100.0, 100.0)
_M30 = (-30.0, 30.0)
MODALITY_SPECS: dict[str, ModalitySpec] = {s.name: s for s in (
    ModalitySpec(
        "rgb", KEYPOINTS, (N_KEYPOINTS, 2),
        units="pixels of a 640x480 image before normalisation, COCO-17 order",
        preprocessing="sensors.core.preprocess.rgb_window(frames, rgb_window): causal window of the last R "
                      "frames (last = now), missing frames edge-padded, each normalised by normalize_keypoints "
                      "(u / 640 * 2 - 1, v / 640 * 2 - 480 / 640)",
        wire=(ArraySpec("kpts", "<f4", (N_KEYPOINTS, 2), finite=True),
              ArraySpec("score", "<f4", (N_KEYPOINTS,), required=False, finite=True)),
        value_ranges=_PX, roughness="displacement", roughness_floor=0.5,
        mmfi_folder="rgb", mmfi_suffix=".npy", fault_noise=60.0, columns=("u", "v"), rehab_key=True),
    ModalitySpec(
        "lidar", POINTS, (None, len(LIDAR_COLUMNS)),
        units="metres, LiDAR frame (x forward, y left, z up)",
        preprocessing="sensors.core.preprocess.point_input('lidar', points, lidar_cap): non-finite rows dropped; "
                      "crop_lidar (floor slab, range box, radius around the median; LIDAR_CROP) keeps the body "
                      "(lidar_crop false: the raw scan is kept); "
                      "then sensors.core.preprocess.sample_points: more than the cap -> evenly spaced rows "
                      "(np.linspace, order kept); fewer -> zero padding; lidar_mask True on real points",
        wire=(ArraySpec("points", "<f4", (None, len(LIDAR_COLUMNS)), finite=True),),
        value_ranges=(_M100,) * 3, roughness="ring_step", roughness_floor=0.005,   # metres, sensor frame
        mmfi_folder="lidar", mmfi_suffix=".bin", fault_noise=0.3, columns=LIDAR_COLUMNS,
        max_points=MAX_LIDAR_POINTS, point_range=(50, MAX_LIDAR_POINTS), typical_points=1200, crop_key="lidar_crop",
        rehab_key=True),
    ModalitySpec(
        "mmwave", POINTS, (None, len(MMWAVE_COLUMNS)),
        units="metres, metres, metres, then the two columns named by awc.mmwave_columns (dB, m/s)",
        preprocessing="sensors.core.preprocess.point_input('mmwave', points, mmwave_cap): sample_points as "
                      "lidar, no crop; empty frames give an all-False mask",
        wire=(ArraySpec("points", "<f4", (None, len(MMWAVE_COLUMNS)), finite=True),),
        # metres x3, then SNR (dB) / radial velocity (m/s), either order
        value_ranges=(_M30, _M30, _M30, _M100, _M100), roughness="spread", roughness_floor=0.01,
        mmfi_folder="mmwave", mmfi_suffix=".bin", fault_noise=0.5, columns=MMWAVE_COLUMNS,
        max_points=MAX_MMWAVE_POINTS, point_range=(0, 512), typical_points=20, columns_key="mmwave_columns"),
    ModalitySpec(
        "wifi", CSI, (WIFI_ANTENNAS, WIFI_SUBCARRIERS, WIFI_PACKETS),
        units="CSI amplitude (dB-like) and phase (rad) before normalisation",
        preprocessing="sensors.core.preprocess.resample_packets(packets [P,3,114]) -> [3,114,10] for amplitude "
                      "and phase, then sensors.core.preprocess.wifi_input(amp, phase): "
                      "sensors.core.preprocess.clean_csi (inf -> NaN -> mean of the finite values of the same "
                      "packet slice), sensors.core.preprocess.minmax per frame to [0, 1], amplitude (packets "
                      "0..9) then phase (10..19)",
        # NaN/inf in CSI are allowed: the official cleaning (sensors.core.preprocess.clean_csi) repairs them.
        wire=(ArraySpec("amp", "<f4", (None, WIFI_ANTENNAS, WIFI_SUBCARRIERS)),
              ArraySpec("phase", "<f4", (None, WIFI_ANTENNAS, WIFI_SUBCARRIERS))),
        # CSI amplitude (dB-like units) and phase (radians, wrapped; generous for unwrapped phase)
        value_ranges=((-100.0, 150.0), (-20.0, 20.0)), roughness="subcarrier_step", roughness_floor=0.05,
        mmfi_folder="wifi-csi", mmfi_suffix=".mat", fault_noise=8.0,
        max_points=MAX_WIFI_PACKETS),
)}
assert tuple(MODALITY_SPECS) == MODALITIES, "the table lists the modalities in MODALITIES order"
POINT_MODALITIES: tuple[str, ...] = tuple(m for m, s in MODALITY_SPECS.items() if s.kind == POINTS)
# Frame-based sensors (one message per frame), as opposed to packet streams (CSI).
FRAME_MODALITIES: tuple[str, ...] = tuple(m for m, s in MODALITY_SPECS.items() if s.kind != CSI)
# The modalities a repetition's trust depends on (rehab.key_modalities' default).
REHAB_KEY_MODALITIES: tuple[str, ...] = tuple(m for m, s in MODALITY_SPECS.items() if s.rehab_key)


def of_kind(kind: str) -> tuple[ModalitySpec, ...]:
    """The modalities of one kind, in table order."""
    return tuple(s for s in MODALITY_SPECS.values() if s.kind == kind)


def spec_of(topic: str) -> ModalitySpec | None:
    """The table row of an input topic, None for any other topic (gt, pose, unknown)."""
    return MODALITY_SPECS.get(topic)


# ----------------------------------------------------------------------------------------------
# Model inputs (after preprocessing, see sensors.core.preprocess). B = batch.
# ----------------------------------------------------------------------------------------------
# rgb         float32 [B, R, 17, 2]    normalised keypoints, causal window of R frames (last = now)
# lidar       float32 [B, Cl, 3]       points sampled/padded to the cap Cl
# lidar_mask  bool    [B, Cl]          True = real point
# mmwave      float32 [B, Cm, 5]
# mmwave_mask bool    [B, Cm]
# wifi        float32 [B, 3, 114, 20]  cleaned, min-max normalised amplitude (packets 0..9) then
#                                      phase (packets 10..19), as the official toolbox concatenates
# presence    float32 [B, 4]           1 = modality present (also the Shapley coalition)
MODEL_INPUTS: tuple[str, ...] = (*(i for s in MODALITY_SPECS.values() for i in s.inputs), "presence")
MODEL_OUTPUTS: tuple[str, ...] = ("pose", "coalition_poses")  # [B,17,3] and [B,16,17,3]
WIFI_INPUT_SHAPE = (WIFI_ANTENNAS, WIFI_SUBCARRIERS, 2 * WIFI_PACKETS)
# The model settings that size the inputs (config keys and awc.* metadata keys): ModalitySpec.size_key.
SIZE_KEYS: tuple[str, ...] = tuple(s.size_key for s in MODALITY_SPECS.values() if s.size_key)
# The model inputs of each modality (absent = all of them zero, presence 0).
MODALITY_INPUTS: dict[str, tuple[str, ...]] = {m: s.inputs for m, s in MODALITY_SPECS.items()}
BATCH_AXIS = "batch"          # name of the dynamic batch axis in exported shapes
META_PREFIX = "awc."          # prefix of the model's self-description keys in the ONNX metadata
MODEL_DTYPES: dict[str, str] = {n: "bool" if n.endswith("_mask") else "float32"
                                for n in (*MODEL_INPUTS, *MODEL_OUTPUTS)}

# Defaults; a trained model's metadata carries its own values.
DEFAULT_RGB_WINDOW = 9
DEFAULT_LIDAR_CAP = 256
DEFAULT_MMWAVE_CAP = 32


def input_shapes(spec: ModalitySpec, size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Shapes (without the batch axis) of the model inputs of one modality: keypoints [size, K, 2]
    (a causal window of ``size`` frames), points [size, columns] and mask [size] (``size`` = the
    cap), CSI [antennas, subcarriers, 2 x packets] (amplitude then phase, fixed size)."""
    if spec.kind == KEYPOINTS:
        return {spec.name: (size, *spec.shape)}
    if spec.kind == POINTS:
        return {spec.name: (size, len(spec.columns)), f"{spec.name}_mask": (size,)}
    return {spec.name: (*spec.shape[:-1], 2 * spec.shape[-1])}


def model_shapes(sizes: Mapping[str, int], batch: int | str | None = BATCH_AXIS) -> dict[str, tuple]:
    """Shape of every model input and output (MODEL_INPUTS then MODEL_OUTPUTS order) for a model
    with these ``sizes`` (``SIZE_KEYS`` -> value: the RGB window, the point caps); ``batch`` fills
    the batch axis (a size, the axis name, or None for "any"). The one place these shapes are written."""
    shapes: dict[str, tuple] = {}
    for spec in MODALITY_SPECS.values():
        size = sizes[spec.size_key] if spec.size_key else None
        shapes.update({k: (batch, *v) for k, v in input_shapes(spec, size).items()})
    shapes["presence"] = (batch, N_MODALITIES)
    shapes["pose"] = (batch, N_JOINTS, 3)
    shapes["coalition_poses"] = (batch, 2 ** N_MODALITIES, N_JOINTS, 3)
    return shapes


# ----------------------------------------------------------------------------------------------
# Coalitions
# ----------------------------------------------------------------------------------------------
N_COALITIONS = 2 ** N_MODALITIES  # 16
FULL_COALITION = N_COALITIONS - 1


def coalition_index(mask) -> int:
    """Bitmask index of a presence mask (iterable of 4 truthy values): bit i = MODALITIES[i]."""
    mask = list(mask)
    if len(mask) != N_MODALITIES:
        raise ValueError(f"presence mask needs {N_MODALITIES} entries ({', '.join(MODALITIES)}), got {len(mask)}")
    return sum(1 << i for i, present in enumerate(mask) if present)


def coalition_mask(index: int) -> np.ndarray:
    """Presence mask (float32 [4]) of coalition ``index`` in 0..15."""
    if not 0 <= index < N_COALITIONS:
        raise ValueError(f"coalition index must be in 0..{N_COALITIONS - 1}, got {index}")
    return np.array([(index >> i) & 1 for i in range(N_MODALITIES)], dtype=np.float32)


COALITION_MASKS = np.stack([coalition_mask(c) for c in range(N_COALITIONS)])  # [16, 4]

# ----------------------------------------------------------------------------------------------
# Skeleton: Human3.6M-17 (3D ground truth and model output)
# ----------------------------------------------------------------------------------------------
H36M_JOINTS: tuple[str, ...] = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "neck_nose", "head",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)
N_JOINTS = len(H36M_JOINTS)
JOINT_INDEX = {j: i for i, j in enumerate(H36M_JOINTS)}
SKELETON_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10),
    (8, 11), (11, 12), (12, 13), (8, 14), (14, 15), (15, 16),
)
# Bone lengths (metres) read off a real MM-Fi ground-truth frame (E01/S01/A02 frame 0).
REFERENCE_BONE_LENGTHS: dict[str, float] = {
    "hip": 0.11, "thigh": 0.41, "shank": 0.39, "pelvis_spine": 0.29, "spine_thorax": 0.29,
    "thorax_nose": 0.13, "nose_head": 0.07, "thorax_shoulder": 0.17, "upper_arm": 0.25, "forearm": 0.25,
}
EDGE_BONE: dict[tuple[int, int], str] = {
    (0, 1): "hip", (1, 2): "thigh", (2, 3): "shank", (0, 4): "hip", (4, 5): "thigh", (5, 6): "shank",
    (0, 7): "pelvis_spine", (7, 8): "spine_thorax", (8, 9): "thorax_nose", (9, 10): "nose_head",
    (8, 11): "thorax_shoulder", (11, 12): "upper_arm", (12, 13): "forearm",
    (8, 14): "thorax_shoulder", (14, 15): "upper_arm", (15, 16): "forearm",
}

# COCO-17 (2D keypoints from the RGB detector).
COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO keypoint -> H36M joint it sits on (face points take the nose/head joints plus an offset).
COCO_FROM_H36M: tuple[int, ...] = (
    JOINT_INDEX["neck_nose"], JOINT_INDEX["head"], JOINT_INDEX["head"], JOINT_INDEX["head"],
    JOINT_INDEX["head"], JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"],
    JOINT_INDEX["left_elbow"], JOINT_INDEX["right_elbow"], JOINT_INDEX["left_wrist"],
    JOINT_INDEX["right_wrist"], JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"],
    JOINT_INDEX["left_knee"], JOINT_INDEX["right_knee"], JOINT_INDEX["left_ankle"],
    JOINT_INDEX["right_ankle"],
)
# Left/right partner of each COCO keypoint (for detector swap errors).
COCO_FLIP: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# ----------------------------------------------------------------------------------------------
# MM-Fi layout, protocols, actions
# ----------------------------------------------------------------------------------------------
ENVIRONMENTS: tuple[str, ...] = ("E01", "E02", "E03", "E04")
SUBJECTS: tuple[str, ...] = tuple(f"S{i:02d}" for i in range(1, 41))
ACTIONS: tuple[str, ...] = tuple(f"A{i:02d}" for i in range(1, 28))
SUBJECTS_PER_ENVIRONMENT = 10


def environment_of(subject: str) -> str:
    """E01 = S01-S10, E02 = S11-S20, E03 = S21-S30, E04 = S31-S40."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}: expected S01..S40")
    return ENVIRONMENTS[(int(subject[1:]) - 1) // SUBJECTS_PER_ENVIRONMENT]


ACTION_NAMES: dict[str, str] = {
    "A01": "stretching", "A02": "chest expansion (horizontal)", "A03": "chest expansion (vertical)",
    "A04": "twist (left)", "A05": "twist (right)", "A06": "mark time", "A07": "limb extension (left)",
    "A08": "limb extension (right)", "A09": "lunge (left-front)", "A10": "lunge (right-front)",
    "A11": "limb extension (both)", "A12": "squat", "A13": "raise hand (left)",
    "A14": "raise hand (right)", "A15": "lunge (left side)", "A16": "lunge (right side)",
    "A17": "wave (left)", "A18": "wave (right)", "A19": "pick up", "A20": "throw (left)",
    "A21": "throw (right)", "A22": "kick (left)", "A23": "kick (right)", "A24": "body extension (left)",
    "A25": "body extension (right)", "A26": "jump", "A27": "bow",
}
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "P1": ("A02", "A03", "A04", "A05", "A13", "A14", "A17", "A18", "A19", "A20", "A21", "A22", "A23", "A27"),
    "P2": ("A01", "A06", "A07", "A08", "A09", "A10", "A11", "A12", "A15", "A16", "A24", "A25", "A26"),
    "P3": ACTIONS,
}
SPLITS: tuple[str, ...] = ("S1", "S2", "S3")

# On-disk modality folders and file suffixes of MM-Fi.
MMFI_FOLDERS: dict[str, str] = {m: s.mmfi_folder for m, s in MODALITY_SPECS.items()}
MMFI_SUFFIX: dict[str, str] = {m: s.mmfi_suffix for m, s in MODALITY_SPECS.items()}
MMFI_GT_FILE = "ground_truth.npy"


def frame_file_name(modality: str, frame: int) -> str:
    """MM-Fi file name of 0-based frame index ``frame``: frame001.npy ... frame297.npy."""
    return f"frame{frame + 1:03d}{MMFI_SUFFIX[modality]}"


# Joint angles of the rehabilitation outputs (runtime.rehab.angles defines them; docs/rehab.md): names,
# sides, and the (angle, side) channels in the order of every angle array and of the metric labels.
ANGLE_NAMES: tuple[str, ...] = ("knee_flexion", "hip_flexion", "hip_abduction", "elbow_flexion",
                                "shoulder_flexion", "shoulder_abduction", "trunk_lean_sagittal",
                                "trunk_lean_frontal")
LIMB_ANGLES: tuple[str, ...] = ANGLE_NAMES[:6]
TRUNK_ANGLES: tuple[str, ...] = ANGLE_NAMES[6:]
ANGLE_SIDES: tuple[str, ...] = ("left", "right")
NO_SIDE = "none"
ANGLE_CHANNELS: tuple[tuple[str, str], ...] = (tuple((a, s) for a in LIMB_ANGLES for s in ANGLE_SIDES)
                                               + tuple((a, NO_SIDE) for a in TRUNK_ANGLES))
REPETITION_SIDES: tuple[str, ...] = ("left", "right", "both", NO_SIDE)   # side a repetition is counted on
