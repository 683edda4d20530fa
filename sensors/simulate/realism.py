"""``sensors realism``: realism figures of an MM-Fi-format dataset (generated or real).

Reads the dataset back from disk and reports: bone lengths and their per-subject constancy, the
ground-truth camera-frame ranges, LiDAR and mmWave point counts (mmWave empty frames overall and
for still vs moving frames), CSI amplitude statistics and NaN/inf rates beside the real MM-Fi
figures (``REAL_CSI``), RGB keypoints inside the image and person height, a *linear probe* of how
much pose each modality carries and a *subject-identity probe* (which subject, from one frame of
one modality, on sequences held out from the fit).

The probe is not the project's model: it is a ridge regression from simple per-frame features of
one modality (flattened keypoints; LiDAR / mmWave voxel occupancy; packet-averaged CSI amplitude
profile) to the 51 ground-truth coordinates, fitted on some subjects and scored (MPJPE, mm) on
the others, beside a mean-pose predictor. It checks the ordering of the modalities cheaply.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sensors import mmfi
from sensors.core import posemath, preprocess, schema
from sensors.core.cli_util import add_report_arguments, emit_report
from sensors.simulate.body import bone_lengths
from sensors.simulate.presets import s1_test_subjects

STILL_SPEED_MPS = 0.05   # max joint speed below which a frame counts as still
MOVING_SPEED_MPS = 0.3   # ... and above which it counts as moving
LIDAR_BOX = ((1.8, 4.2), (-1.2, 1.2), (-1.3, 1.0))   # x, y, z metres (sensor frame) of the body crop
LIDAR_BINS = (4, 8, 12)
LIDAR_SLICES = 16
MMWAVE_BOX = ((1.5, 4.5), (-1.5, 1.5), (-1.5, 1.5))
MMWAVE_BINS = (3, 6, 6)
PROBE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
PROBE_NEIGHBOURS = 20
# The four MM-Fi sensors measured here against their real counterparts (a modality added to the
# schema without real figures to compare with is left out of the report).
MEASURED: tuple[str, ...] = ("rgb", "lidar", "mmwave", "wifi")
FUSION_PROBES = {"rgb+lidar": ("rgb", "lidar"), "all_four": MEASURED}
IDENTITY_MAX_TRAIN_FRAMES = 6000   # the identity probe's fit subsample (keeps it to seconds)
CSI_HIST_EDGES = np.arange(-60.0, 100.05, 0.1)   # dB bins of the CSI amplitude histogram

# Real MM-Fi CSI amplitude figures (derived from public MM-Fi artefacts: one real wifi-csi frame,
# and per-environment statistics over actions A01, A08, A12, A27 of every subject of E01-E03 —
# per-subcarrier mean and s.d., antenna-pair amplitude correlations, position of the deepest fade;
# docs/generator.md names the source).
REAL_CSI = {
    "frame_percentiles_db": {"p1": 33.9, "p5": 36.2, "p50": 42.1, "p95": 45.9, "p99": 47.3},
    "frame_packet_sd_db": 1.26,
    "profiles": {
        "E01": {"mean_db": 39.6, "subcarrier_sd_db": (4.28, 6.03), "edge5_db": -5.6,
                "antenna_corr": (0.31, 0.21, 0.06), "fade_subcarrier": (26.0, 39.4)},
        "E02": {"mean_db": 40.4, "subcarrier_sd_db": (4.11, 5.87), "edge5_db": -3.9,
                "antenna_corr": (0.03, 0.09, 0.08), "fade_subcarrier": (38.8, 45.2)},
        "E03": {"mean_db": 40.3, "subcarrier_sd_db": (3.74, 6.17), "edge5_db": -2.7,
                "antenna_corr": (0.02, 0.18, -0.12), "fade_subcarrier": (43.8, 48.3)},
    },
}


# --------------------------------------------------------------------------------------------
# Reading (through the MM-Fi reader, sensors.mmfi)
# --------------------------------------------------------------------------------------------
def sequences(root: Path) -> list[Path]:
    """All sequence folders ROOT/Exx/Syy/Azz, sorted."""
    return [key.path(root) for key in mmfi.discover_sequences(root)]


def read_frame(seq_dir: Path, modality: str, frame: int):
    """One frame as stored; a 0-byte point cloud (no detections) -> an empty [0, columns] array,
    wifi -> (amp, phase). A missing file is an error here: the report is about complete data."""
    value = mmfi.read_frame(seq_dir, modality, frame, missing="error")
    if value is None:
        return np.zeros((0, len(schema.MODALITY_SPECS[modality].columns)))
    if schema.MODALITY_SPECS[modality].kind == schema.CSI:
        return value.amp, value.phase
    return np.asarray(value, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Per-modality probe features (pure)
# --------------------------------------------------------------------------------------------
def _occupancy(points: np.ndarray, box, bins) -> np.ndarray:
    if points.shape[0] == 0:
        return np.zeros(int(np.prod(bins)))
    h, _ = np.histogramdd(points[:, :3], bins=bins, range=box)
    return (h / max(points.shape[0], 1)).reshape(-1)


def _rgb_features(kpts: np.ndarray) -> np.ndarray:
    """Keypoints relative to the image centre divided by the person's height in pixels (X ~ u Z / f),
    the inverse height (~ depth) and the plain normalised keypoints."""
    y = kpts[:, 1]
    height = max(float(np.percentile(y, 90) - np.percentile(y, 10)), 20.0)
    centred = (kpts - np.array([schema.IMAGE_WIDTH / 2, schema.IMAGE_HEIGHT / 2])) / height
    return np.concatenate([centred.reshape(-1), [100.0 / height],
                           preprocess.normalize_keypoints(kpts).reshape(-1)])


def _lidar_features(points: np.ndarray) -> np.ndarray:
    """Body points (above the floor, in front of the background) in height slices: share, mean and
    extent across (y) and mean range (x) per slice, plus a coarse occupancy grid."""
    (x0, x1), (y0, y1), (z0, z1) = LIDAR_BOX
    floor = np.percentile(points[:, 2], 2) if points.shape[0] else z0
    keep = ((points[:, 0] > x0) & (points[:, 0] < x1) & (np.abs(points[:, 1]) < y1)
            & (points[:, 2] > floor + 0.1) & (points[:, 2] < z1))
    body = points[keep]
    edges = np.linspace(z0, z1, LIDAR_SLICES + 1)
    slot = np.digitize(body[:, 2], edges) - 1
    out = np.zeros((LIDAR_SLICES, 5))
    for k in range(LIDAR_SLICES):
        sl = body[slot == k]
        if sl.shape[0]:
            out[k] = (sl.shape[0] / max(body.shape[0], 1), sl[:, 1].mean(), sl[:, 1].min(), sl[:, 1].max(),
                      sl[:, 0].mean())
    return np.concatenate([out.reshape(-1), _occupancy(body, LIDAR_BOX, LIDAR_BINS)])


def _mmwave_features(points: np.ndarray) -> np.ndarray:
    """Occupancy weighted by the count, the count and the point statistics (0 when empty)."""
    n = points.shape[0]
    occ = _occupancy(points, MMWAVE_BOX, MMWAVE_BINS) * n
    stats = (np.concatenate([points[:, :3].mean(0), points[:, :3].min(0), points[:, :3].max(0)])
             if n else np.zeros(9))
    return np.concatenate([occ, [n], stats])


def _wifi_features(amp_phase) -> np.ndarray:
    """Packet-averaged amplitude profile (19 subcarrier groups per antenna), per-antenna level and
    the packet-to-packet spread (motion)."""
    amp = preprocess.clean_csi(amp_phase[0]).astype(np.float64)    # [3,114,10]
    prof = amp.mean(-1).reshape(3, 19, 6).mean(-1)
    motion = amp.std(-1).reshape(3, 19, 6).mean(-1)
    return np.concatenate([prof.reshape(-1), amp.mean((1, 2)), motion.reshape(-1)])


FEATURES = {"rgb": _rgb_features, "lidar": _lidar_features, "mmwave": _mmwave_features, "wifi": _wifi_features}


def features(modality: str, value) -> np.ndarray:
    """Probe feature vector of one frame (wifi: value = (amp, phase))."""
    return FEATURES[modality](value)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()), "mean": float(v.mean())}


def _speed(gt: np.ndarray) -> np.ndarray:
    """Max joint speed per frame (m/s) of a [T,17,3] sequence."""
    return np.linalg.norm(np.gradient(gt, 1.0 / schema.FRAME_RATE_HZ, axis=0), axis=-1).max(-1)


def collect(root: Path, frame_step: int = 1) -> dict:
    """Read every ``frame_step``-th frame of every sequence: features and raw statistics."""
    out = {k: [] for k in ("subject", "action", "gt", "speed", "lidar_n", "mmwave_n", "kpts", "csi", "csi_bad",
                           "f_rgb", "f_lidar", "f_mmwave", "f_wifi", "bones", "seq_subject", "csi_env",
                           "csi_corr", "csi_fade", "csi_packet_sd")}
    out["csi_hist"] = np.zeros(CSI_HIST_EDGES.size - 1, dtype=np.int64)
    out["csi_sc"] = {}      # env -> [count, sum, sum of squares] per subcarrier
    for seq in sequences(root):
        subject = seq.parent.name
        gt = mmfi.read_ground_truth(seq)
        out["bones"].append(bone_lengths(gt.astype(np.float64)))
        out["seq_subject"].append(subject)
        speed = _speed(gt.astype(np.float64))
        for t in range(0, gt.shape[0], frame_step):
            kp, cloud, radar, (amp, phase) = (read_frame(seq, m, t) for m in MEASURED)
            out["subject"].append(subject)
            out["action"].append(seq.name)
            out["gt"].append(gt[t].reshape(-1))
            out["speed"].append(speed[t])
            out["lidar_n"].append(cloud.shape[0])
            out["mmwave_n"].append(radar.shape[0])
            out["kpts"].append(kp)
            finite = amp[np.isfinite(amp)]
            out["csi"].append((finite.min(), finite.max(), finite.mean()) if finite.size else (np.nan,) * 3)
            out["csi_bad"].append((int((~np.isfinite(amp)).sum() + (~np.isfinite(phase)).sum()), amp.size * 2))
            _csi_frame_stats(out, seq.parent.parent.name, amp)
            for m, v in zip(MEASURED, (kp, cloud, radar, (amp, phase)), strict=True):
                out[f"f_{m}"].append(features(m, v))
    if not out["gt"]:
        raise FileNotFoundError(f"no sequences (E*/S*/A*/{schema.MMFI_GT_FILE}) under {root}: expected an "
                                "MM-Fi-format dataset, e.g. one written by `sensors simulate --out DIR`")
    return out


def _csi_frame_stats(out: dict, env: str, amp: np.ndarray) -> None:
    """Accumulate one frame's CSI amplitude statistics (histogram, per-subcarrier moments per room,
    antenna-pair correlation of the packet-averaged profiles, deepest fade, packet-to-packet s.d.)."""
    finite = np.isfinite(amp)
    out["csi_hist"] += np.histogram(amp[finite], bins=CSI_HIST_EDGES)[0]
    acc = out["csi_sc"].setdefault(env, np.zeros((3, schema.WIFI_SUBCARRIERS)))
    a = np.where(finite, amp, 0.0)
    acc += np.stack([finite.sum((0, 2)), a.sum((0, 2)), (a * a).sum((0, 2))])
    if finite.all():
        prof = amp.mean(-1)                                        # [3,114]
        out["csi_env"].append(env)
        out["csi_corr"].append(np.corrcoef(prof)[[0, 0, 1], [1, 2, 2]])
        out["csi_fade"].append(int(np.argmin(prof.mean(0))))
        out["csi_packet_sd"].append(float(amp.std(-1).mean()))


def _percentile_from_hist(hist: np.ndarray, q: float) -> float:
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    return float(CSI_HIST_EDGES[min(int(np.searchsorted(cdf, q / 100.0)) + 1, CSI_HIST_EDGES.size - 1)])


def csi_report(data: dict) -> dict:
    """CSI amplitude figures beside the real ones (``REAL_CSI``): percentiles over all values, and
    per room the per-subcarrier mean / s.d., band edge, antenna correlations and deepest fade."""
    hist = data["csi_hist"]
    out = {"percentiles_db": {f"p{q}": round(_percentile_from_hist(hist, q), 1) for q in (1, 5, 50, 95, 99)},
           "packet_sd_db": round(float(np.mean(data["csi_packet_sd"])), 2) if data["csi_packet_sd"] else None,
           "rooms": {}}
    envs, corr, fade = np.asarray(data["csi_env"]), np.asarray(data["csi_corr"]), np.asarray(data["csi_fade"])
    for env, (n, s1, s2) in sorted(data["csi_sc"].items()):
        mean = s1 / np.maximum(n, 1)
        sd = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean ** 2, 0))
        mine = envs == env
        out["rooms"][env] = {
            "mean_db": round(float(mean.mean()), 2),
            "subcarrier_sd_db": (round(float(sd.min()), 2), round(float(sd.max()), 2)),
            "edge5_db": round(float(mean[:5].mean() - mean[40:74].mean()), 2),
            "antenna_corr": tuple(round(float(c), 2) for c in corr[mine].mean(0)) if mine.any() else None,
            "fade_subcarrier": (round(float(fade[mine].mean()), 1), round(float(fade[mine].std()), 1))
            if mine.any() else None,
        }
    out["real"] = REAL_CSI
    return out


def identity_probe(data: dict, seed: int = 0) -> dict:
    """Which subject, from one frame of one modality: a logistic regression on the probe features,
    fitted on some sequences of every subject and scored on its other sequences (other actions),
    so a feature that names the subject only through a recording shared by a subject's sequences
    does not help. Accuracy per modality beside chance (1 / subjects) and the accuracy of knowing
    the room and guessing among its subjects (``chance_given_room``): a room's fixed static
    channel legitimately tells the room."""
    from sklearn.linear_model import LogisticRegression

    subjects, actions = np.array(data["subject"]), np.array(data["action"])
    names = sorted(set(subjects))
    held = np.zeros(subjects.size, dtype=bool)
    for name in names:
        own = sorted(set(actions[subjects == name]))
        held |= (subjects == name) & np.isin(actions, own[1::2])
    if len(names) < 2 or not held.any() or held.all():
        return {"error": "the identity probe needs at least two subjects with two sequences each"}
    train = np.nonzero(~held)[0]
    if train.size > IDENTITY_MAX_TRAIN_FRAMES:
        train = np.sort(np.random.default_rng(seed).choice(train, IDENTITY_MAX_TRAIN_FRAMES, replace=False))
    per_room = {env: sum(schema.environment_of(n) == env for n in names) for env in schema.ENVIRONMENTS}
    given_room = float(np.mean([1.0 / per_room[schema.environment_of(n)] for n in subjects[held]]))
    result = {"subjects": len(names), "chance": round(1.0 / len(names), 4),
              "chance_given_room": round(given_room, 4),
              "train_frames": int(train.size), "test_frames": int(held.sum())}
    for m in MEASURED:
        x = np.asarray(data[f"f_{m}"], dtype=np.float64)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=300))
        model.fit(x[train], subjects[train])
        result[f"{m}_accuracy"] = round(float((model.predict(x[held]) == subjects[held]).mean()), 4)
    return result


def _probes() -> dict:
    return {"ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=PROBE_ALPHAS)),
            "knn": make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=PROBE_NEIGHBOURS))}


def _mpjpe_mm(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(posemath.mpjpe(pred.reshape(-1, schema.N_JOINTS, 3), gt.reshape(-1, schema.N_JOINTS, 3)).mean())


def _fit_best(x: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """Ridge or k-NN, whichever scores better on every 4th training sequence held out (the test
    frames play no part in the choice); refitted on all training frames."""
    names = sorted(set(groups))
    val = np.isin(groups, names[::4]) if len(names) >= 2 else np.arange(len(y)) >= int(0.75 * len(y))
    scores = {name: _mpjpe_mm(p.fit(x[~val], y[~val]).predict(x[val]), y[val]) for name, p in _probes().items()}
    best = min(scores, key=scores.get)
    return _probes()[best].fit(x, y), best


def s1_test_mask(subjects: np.ndarray, actions: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Test frames of split S1 (the paper's setting): for the k-th action of the protocol that holds
    all the actions (P1, else P2, else P3), the official ``permutation(40)`` with seed ``seed + k``."""
    present = set(actions)
    protocol = next(p for p in ("P1", "P2", "P3") if present <= set(schema.PROTOCOLS[p]))
    order = schema.PROTOCOLS[protocol]
    test = {a: s1_test_subjects(order.index(a), seed) for a in present}
    return np.array([s in test[a] for s, a in zip(subjects, actions, strict=True)]), protocol


def probe(data: dict, split: str = "S1") -> dict:
    """Per-modality probe MPJPE (mm) on held-out frames, beside the mean pose, and the same probe
    on concatenated features (naive fusion): RGB + LiDAR and all four.

    split "S1": the paper's random split (per action, held-out subjects; their other actions may be
    in training); "S2": cross-subject, test S05, S10, ... (else the last subject)."""
    subjects, actions = np.array(data["subject"]), np.array(data["action"])
    names = sorted(set(subjects))
    if len(names) < 3:
        return {"error": "the probe needs at least three subjects (fit, choose, score on different ones)"}
    if split == "S1":
        test, protocol = s1_test_mask(subjects, actions)
        where = f"{protocol}/S1"
    else:
        held = {s for s in names if int(s[1:]) % 5 == 0}
        if not held or len(set(names) - held) < 2:
            held = {names[-1]}
        test, where = np.isin(subjects, sorted(held)), f"S2 ({', '.join(sorted(held))})"
    if test.all() or not test.any():
        return {"error": f"split {where} leaves no train or no test frames in this dataset"}
    y = np.asarray(data["gt"], dtype=np.float64)
    groups = np.char.add(subjects, actions)
    result = {"split": where, "train_frames": int((~test).sum()), "test_frames": int(test.sum()),
              "mean_pose_mm": _mpjpe_mm(np.broadcast_to(y[~test].mean(0), y[test].shape), y[test])}
    for m in MEASURED:
        x = np.asarray(data[f"f_{m}"], dtype=np.float64)
        model, kind = _fit_best(x[~test], y[~test], groups[~test])
        result[f"{m}_mm"] = _mpjpe_mm(model.predict(x[test]), y[test])
        result[f"{m}_probe"] = kind
    result["ratio_to_rgb"] = {m: round(result[f"{m}_mm"] / result["rgb_mm"], 2) for m in MEASURED}
    for name, mods in FUSION_PROBES.items():             # naive fusion: features concatenated
        x = np.concatenate([np.asarray(data[f"f_{m}"], dtype=np.float64) for m in mods], axis=1)
        model, _ = _fit_best(x[~test], y[~test], groups[~test])
        result[f"{name}_mm"] = _mpjpe_mm(model.predict(x[test]), y[test])
    return result


def realism_report(root, frame_step: int = 1, with_probe: bool = True, split: str = "S1") -> dict:
    """Realism figures of the dataset under ``root`` (see the module docstring)."""
    d = collect(Path(root), frame_step)
    gt = np.asarray(d["gt"]).reshape(-1, schema.N_JOINTS, 3)
    bones = np.concatenate(d["bones"])                                      # [frames,16]
    seq_subject = np.repeat(d["seq_subject"], [b.shape[0] for b in d["bones"]])
    names = [schema.EDGE_BONE[e] for e in schema.SKELETON_EDGES]
    per_subject_sd = max(float(bones[seq_subject == s].std(0).max()) for s in set(d["seq_subject"]))
    mean_bone = {n: float(bones[:, [i for i, m in enumerate(names) if m == n]].mean()) for n in dict.fromkeys(names)}
    speed, mm_n = np.asarray(d["speed"]), np.asarray(d["mmwave_n"])
    kp = np.asarray(d["kpts"])
    inside = (kp[..., 0] >= 0) & (kp[..., 0] < schema.IMAGE_WIDTH) & (kp[..., 1] >= 0) & (kp[..., 1] < schema.IMAGE_HEIGHT)
    csi = np.asarray(d["csi"], dtype=np.float64)
    bad = np.asarray(d["csi_bad"])
    still, moving = speed < STILL_SPEED_MPS, speed > MOVING_SPEED_MPS
    report = {
        "root": str(root), "sequences": len(d["bones"]), "frames_read": int(gt.shape[0]), "frame_step": frame_step,
        "bones_m": {n: round(v, 4) for n, v in mean_bone.items()},
        "bones_reference_m": dict(schema.REFERENCE_BONE_LENGTHS),
        "bone_max_rel_error": round(max(abs(v / schema.REFERENCE_BONE_LENGTHS[n] - 1) for n, v in mean_bone.items()), 4),
        "bone_max_sd_within_subject_m": round(per_subject_sd, 6),
        "gt_depth_z_m": _stats(gt[:, 0, 2]), "gt_x_m": _stats(gt[:, 0, 0]),
        "gt_y_m": {"min": float(gt[..., 1].min()), "max": float(gt[..., 1].max())},
        "lidar_points": _stats(d["lidar_n"]),
        "mmwave_points": _stats(mm_n),
        "mmwave_empty_rate": float((mm_n == 0).mean()),
        "mmwave_empty_rate_still": float((mm_n[still] == 0).mean()) if still.any() else None,
        "mmwave_empty_rate_moving": float((mm_n[moving] == 0).mean()) if moving.any() else None,
        "csi_amp_min": float(np.nanmin(csi[:, 0])), "csi_amp_max": float(np.nanmax(csi[:, 1])),
        "csi_amp_mean": float(np.nanmean(csi[:, 2])),
        "csi_nonfinite_value_rate": float(bad[:, 0].sum() / bad[:, 1].sum()),
        "csi_nonfinite_frame_rate": float((bad[:, 0] > 0).mean()),
        "csi_amplitude": csi_report(d),
        "rgb_inside_image_rate": float(inside.mean()),
        "rgb_person_height_px": _stats(np.percentile(kp[..., 1], 95, axis=-1) - np.percentile(kp[..., 1], 5, axis=-1)),
    }
    if with_probe:
        report["probe_mpjpe_mm"] = probe(d, split)
        report["identity_probe"] = identity_probe(d)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="root of an MM-Fi-format dataset")
    parser.add_argument("--frame-step", type=int, default=1, help="read every n-th frame (faster on big sets)")
    parser.add_argument("--no-probe", action="store_true", help="skip the pose and identity probes")
    parser.add_argument("--split", default="S1", choices=("S1", "S2"),
                        help="probe split: S1 random per action (the paper's), S2 cross-subject")
    add_report_arguments(parser)   # the report is JSON either way


def run(args: argparse.Namespace) -> int:
    if args.frame_step < 1:
        raise SystemExit(f"--frame-step must be >= 1, got {args.frame_step}")
    report = realism_report(args.data, args.frame_step, not args.no_probe, args.split)
    emit_report(args, report, json.dumps(report, indent=2))
    return 0
