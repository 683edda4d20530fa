"""The synthetic MM-Fi generator: exact layout and formats, determinism, and realism of each sensor
against the real MM-Fi artefacts (``mmfi_sample_dir``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from sensors.core import schema
from sensors.simulate import GeneratorConfig, generate_sequence, kinematics, mmwave, simulate
from sensors.simulate.body import bone_lengths, make_subject
from sensors.simulate.cli import check_output
from sensors.simulate.environment import ENVIRONMENTS, get_environment
from sensors.simulate.presets import PRESETS, check_preset
from sensors.simulate.truth import TRUTH_FILE

TINY = PRESETS["tiny"]
FRAMES = schema.FRAMES_PER_SEQUENCE


def _seq_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("E*/S*/A*/ground_truth.npy"))


def _gt(root: Path) -> dict[Path, np.ndarray]:
    return {d: np.load(d / schema.MMFI_GT_FILE) for d in _seq_dirs(root)}


def _csi(root: Path, env: str, step: int = 3) -> np.ndarray:
    """CSIamp of every ``step``-th frame of the tiny sequences of ``env``: [F,3,114,10]."""
    out = []
    for d in _seq_dirs(root):
        if d.parts[-3] == env:
            out += [scipy.io.loadmat(d / "wifi-csi" / schema.frame_file_name("wifi", t))["CSIamp"]
                    for t in range(0, FRAMES, step)]
    return np.asarray(out)


# ----------------------------------------------------------------------------------------------
# Layout and formats
# ----------------------------------------------------------------------------------------------
def test_layout_is_exactly_mmfi(tiny_dataset):
    expected = {tiny_dataset / schema.environment_of(s) / s / a for s in TINY.subjects for a in TINY.actions}
    assert set(_seq_dirs(tiny_dataset)) == expected
    assert sorted(p.name for p in tiny_dataset.iterdir()) == ["E01", "E04"]  # nothing stray in the root
    names = {m: [schema.frame_file_name(m, t) for t in range(FRAMES)] for m in schema.MODALITIES}
    for seq in expected:
        assert sorted(p.name for p in seq.iterdir()) == sorted(
            [schema.MMFI_GT_FILE, TRUTH_FILE] + [schema.MMFI_FOLDERS[m] for m in schema.MODALITIES])
        for m in schema.MODALITIES:
            assert sorted(p.name for p in (seq / schema.MMFI_FOLDERS[m]).iterdir()) == names[m]
    assert names["rgb"][0] == "frame001.npy" and names["wifi"][-1] == "frame297.mat"


def test_file_formats(tiny_dataset):
    seq = tiny_dataset / "E04" / "S32" / "A03"
    gt = np.load(seq / schema.MMFI_GT_FILE)
    assert gt.dtype == np.float32 and gt.shape == (FRAMES, 17, 3)
    kp = np.load(seq / "rgb" / "frame001.npy")
    assert kp.dtype == np.float64 and kp.shape == (17, 2)
    sizes = {m: [(seq / schema.MMFI_FOLDERS[m] / schema.frame_file_name(m, t)).stat().st_size
                 for t in range(FRAMES)] for m in ("lidar", "mmwave")}
    assert all(s > 0 and s % (8 * 3) == 0 for s in sizes["lidar"])
    assert all(s % (8 * 5) == 0 for s in sizes["mmwave"]) and 0 in sizes["mmwave"]  # 0-byte = none
    cloud = np.fromfile(seq / "lidar" / "frame100.bin", dtype=np.float64).reshape(-1, 3)
    assert np.isfinite(cloud).all()
    mat_path = seq / "wifi-csi" / "frame001.mat"
    assert mat_path.read_bytes()[:19] == b"MATLAB 5.0 MAT-file"
    mat = scipy.io.loadmat(mat_path)
    assert sorted(k for k in mat if not k.startswith("__")) == ["CSIamp", "CSIphase"]
    for key in ("CSIamp", "CSIphase"):
        assert mat[key].dtype == np.float64 and mat[key].shape == (3, 114, 10)


def test_same_format_as_the_real_csi_frame(mmfi_sample_dir, tiny_dataset):
    real = scipy.io.loadmat(mmfi_sample_dir / "frame001.mat")
    ours = scipy.io.loadmat(tiny_dataset / "E01" / "S02" / "A02" / "wifi-csi" / "frame001.mat")
    for key in ("CSIamp", "CSIphase"):
        assert ours[key].dtype == real[key].dtype and ours[key].shape == real[key].shape
    assert (mmfi_sample_dir / "frame001.mat").read_bytes()[:10] == (
        tiny_dataset / "E01" / "S02" / "A02" / "wifi-csi" / "frame001.mat").read_bytes()[:10]


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------
def test_byte_identical_for_a_seed_with_any_number_of_workers(tiny_dataset, tmp_path):
    simulate(tmp_path, preset="tiny", seed=0, subjects=["S02", "S32"], actions=["A03"], workers=2,
             progress=False)
    for subject in ("S02", "S32"):
        ours = tmp_path / schema.environment_of(subject) / subject / "A03"
        ref = tiny_dataset / schema.environment_of(subject) / subject / "A03"
        files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
        assert len(files) == 4 * FRAMES + 2   # + ground truth and the rehab truth side file
        for rel in files:
            assert (ours / rel).read_bytes() == (ref / rel).read_bytes(), rel


def test_another_seed_gives_another_dataset(tiny_dataset):
    other = generate_sequence("S02", "A02", seed=1)
    ref = np.load(tiny_dataset / "E01" / "S02" / "A02" / schema.MMFI_GT_FILE)
    assert other.ground_truth.shape == ref.shape and not np.allclose(other.ground_truth, ref)


# ----------------------------------------------------------------------------------------------
# Ground truth and kinematics
# ----------------------------------------------------------------------------------------------
def test_bone_lengths_constant_per_subject_and_near_the_real_frame(tiny_dataset, mmfi_sample_dir):
    import json

    real = np.asarray(json.loads((mmfi_sample_dir / "gt_E01_S01_A02_frame000_from_notebook.json").read_text())
                      ["frame0_17x3"])
    real_bones = bone_lengths(real)
    by_subject: dict[str, list[np.ndarray]] = {}
    for seq, gt in _gt(tiny_dataset).items():
        by_subject.setdefault(seq.parts[-2], []).append(bone_lengths(gt.astype(np.float64)))
    for subject, seqs in by_subject.items():
        bones = np.concatenate(seqs)                                  # all frames of all actions
        assert bones.std(0).max() < 1e-5, subject                     # float32 rounding only
        rel = bones.mean(0) / real_bones
        assert np.all(np.abs(rel - 1) < 0.2), (subject, rel.round(2))


def test_ground_truth_in_the_camera_frame(tiny_dataset, mmfi_sample_dir):
    import json

    real = np.asarray(json.loads((mmfi_sample_dir / "gt_E01_S01_A02_frame000_from_notebook.json").read_text())
                      ["frame0_17x3"])
    J = schema.JOINT_INDEX
    for seq, gt in _gt(tiny_dataset).items():
        pelvis = gt[:, J["pelvis"]]
        assert np.all((pelvis[:, 2] > 3.0) & (pelvis[:, 2] < 3.45)), seq
        assert np.all(np.abs(pelvis[:, 0]) < 0.3), seq
        assert np.all((gt[..., 2] > 2.4) & (gt[..., 2] < 3.9)), seq
        assert np.all(gt[:, J["head"], 1] < pelvis[:, 1] - 0.4)       # y down: head above the pelvis
        # right hip at negative x while facing the camera, like the real frame
        assert np.mean(gt[:, J["right_hip"], 0] < gt[:, J["left_hip"], 0]) > 0.95
        assert real[J["right_hip"], 0] < real[J["left_hip"], 0]
        # the lower ankle stays on the floor level (no drift)
        low = gt[:, [J["left_ankle"], J["right_ankle"]], 1].max(1)
        assert low.max() - np.median(low) < 0.03


@pytest.mark.parametrize("action", schema.ACTIONS)
def test_every_action_is_smooth_with_exact_bones(action):
    env = get_environment("E02")
    subject = make_subject("S11", np.random.default_rng(3), env)
    joints = kinematics.sequence_pose(action, subject, env.camera_height_m, np.random.default_rng(4))
    assert joints.shape == (FRAMES, 17, 3)
    bones = bone_lengths(joints)
    assert np.allclose(bones, bones[0], atol=1e-9)
    assert joints[..., 2].max() - joints[..., 2].min() < 1.2
    speed = np.linalg.norm(np.diff(joints, axis=0), axis=-1) * schema.FRAME_RATE_HZ
    assert speed.max() < 4.0, speed.max()                             # m/s
    motion = joints - joints.mean(0)
    spectrum = np.abs(np.fft.rfft(motion, axis=0)) ** 2
    freqs = np.fft.rfftfreq(FRAMES, 1 / schema.FRAME_RATE_HZ)
    assert spectrum[freqs > 3.0].sum() < 0.02 * spectrum.sum()        # <= 2-3 Hz
    assert motion.std(0).max() > 0.05                                 # it moves


# ----------------------------------------------------------------------------------------------
# Sensors
# ----------------------------------------------------------------------------------------------
def test_lidar_counts_and_sensor_frame_geometry(tiny_dataset):
    counts = []
    for seq in _seq_dirs(tiny_dataset):
        env = get_environment(seq.parts[-3])
        mount = env.camera_height_m - env.lidar_offset_m[1]
        for t in range(0, FRAMES, 5):
            pts = np.fromfile(seq / "lidar" / schema.frame_file_name("lidar", t), dtype=np.float64).reshape(-1, 3)
            counts.append(len(pts))
            body = pts[(pts[:, 0] < 4.0) & (pts[:, 2] > -mount + 0.2)]
            assert np.median(pts[:, 0]) > 1.0 and len(body) > 100   # in front: x forward
            floor = pts[pts[:, 2] < -mount + 0.1, 2]
            assert len(floor) > 100 and abs(np.median(floor) + mount) < 0.03
            elevation = np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1]))
            n = len(pts) // 10                                        # ring order, top beam first
            assert np.median(elevation[:n]) > np.median(elevation[-n:])
    assert 1000 <= np.median(counts) <= 1400 and min(counts) >= 900 and max(counts) <= 1600


def test_mmwave_sparse_with_empty_frames_when_still(tiny_dataset):
    counts, still_counts = [], []
    for seq in _seq_dirs(tiny_dataset):
        gt = np.load(seq / schema.MMFI_GT_FILE).astype(np.float64)
        speed = np.linalg.norm(np.gradient(gt, axis=0), axis=-1).max(-1) * schema.FRAME_RATE_HZ
        for t in range(FRAMES):
            n = (seq / "mmwave" / schema.frame_file_name("mmwave", t)).stat().st_size // 40
            counts.append(n)
            if speed[t] < 0.05:
                still_counts.append(n)
    counts = np.asarray(counts)
    assert counts.max() <= 30
    assert 0.05 < np.mean(counts == 0) < 0.8
    assert np.median(counts[counts > 0]) >= 3
    # a still subject is removed with the static clutter: empty, or the capture's residual clutter
    assert still_counts and np.mean(np.asarray(still_counts) == 0) > 0.8
    assert max(still_counts) <= mmwave.MmwaveConfig().clutter_sources[1]


def test_mmwave_column_order_is_a_setting():
    env = get_environment("E01")
    subject = make_subject("S01", np.random.default_rng(0), env)
    joints = kinematics.sequence_pose("A13", subject, env.camera_height_m, np.random.default_rng(0))
    swapped = ("x", "y", "z", "doppler_mps", "snr_db")
    a = mmwave.sequence(joints, env, np.random.default_rng(5))
    b = mmwave.sequence(joints, env, np.random.default_rng(5), mmwave.MmwaveConfig(columns=swapped))
    full = [i for i, x in enumerate(a) if len(x)]
    assert full
    for i in full:
        np.testing.assert_array_equal(a[i][:, [0, 1, 2, 4, 3]], b[i])
    snr = np.concatenate([a[i][:, 3] for i in full])
    assert snr.min() >= 0 and snr.max() <= 40
    with pytest.raises(ValueError, match="columns"):
        mmwave.MmwaveConfig(columns=("x", "y", "z", "snr", "v"))


def test_csi_level_and_spread_match_the_real_profile(tiny_dataset, mmfi_sample_dir):
    real = np.loadtxt(mmfi_sample_dir / "derived_csi_stats" / "E01_profile.csv", delimiter=",", skiprows=1)
    amp = _csi(tiny_dataset, "E01")
    amp = np.where(np.isfinite(amp), amp, np.nan)
    mean_profile = np.nanmean(amp, axis=(0, 1, 3))
    std_profile = np.nanstd(amp, axis=(0, 1, 3))
    assert abs(np.nanmean(amp) - real[:, 1].mean()) < 3.0               # dB
    assert 2.5 < std_profile.mean() < 8.0 and 2.5 < real[:, 2].mean() < 8.0
    # band edges lower than the centre, as in the real profile
    assert mean_profile[:5].mean() < mean_profile[40:70].mean() - 1.0
    assert real[:5, 1].mean() < real[40:70, 1].mean() - 1.0


def test_csi_frame_like_the_real_frame(tiny_dataset, mmfi_sample_dir):
    real = scipy.io.loadmat(mmfi_sample_dir / "frame001.mat")

    def phase_diff_sd(phase):                     # antenna 0 vs 1, over packets, per subcarrier
        d = np.angle(np.exp(1j * (phase[0] - phase[1])))
        return float(np.angle(np.exp(1j * (d - d.mean(-1, keepdims=True)))).std())

    assert phase_diff_sd(real["CSIphase"]) < 0.1
    spreads, still_sd = [], []
    for seq in _seq_dirs(tiny_dataset):
        for t in range(0, FRAMES, 10):
            mat = scipy.io.loadmat(seq / "wifi-csi" / schema.frame_file_name("wifi", t))
            amp, phase = mat["CSIamp"], mat["CSIphase"]
            if not (np.isfinite(amp).all() and np.isfinite(phase).all()):
                continue
            assert np.abs(phase).max() <= np.pi + 1e-9
            assert 30 < amp.mean() < 50
            spreads.append(amp.max() - amp.min())
            if t == 0:                            # the subject stands still at the start
                still_sd.append(phase_diff_sd(phase))
    assert np.median(still_sd) < 0.1              # real frame001: 0.04 rad
    real_spread = real["CSIamp"].max() - real["CSIamp"].min()          # 19.6 dB
    assert 0.5 * real_spread < np.median(spreads) < 2.0 * real_spread


def test_csi_nonfinite_values_at_a_low_rate(tiny_dataset):
    bad_frames, bad_values, frames = 0, 0, 0
    for seq in _seq_dirs(tiny_dataset):
        for t in range(FRAMES):
            mat = scipy.io.loadmat(seq / "wifi-csi" / schema.frame_file_name("wifi", t))
            bad = (~np.isfinite(mat["CSIamp"])).sum() + (~np.isfinite(mat["CSIphase"])).sum()
            bad_frames += bad > 0
            bad_values += bad
            frames += 1
    assert 0.001 <= bad_frames / frames <= 0.05                         # frames with NaN/inf
    assert bad_values / (frames * 2 * 3 * 114 * 10) < 1e-3


def test_keypoints_in_the_image_with_a_plausible_person_height(tiny_dataset):
    heights = []
    for seq in _seq_dirs(tiny_dataset):
        kp = np.stack([np.load(seq / "rgb" / schema.frame_file_name("rgb", t)) for t in range(0, FRAMES, 3)])
        assert kp[..., 0].min() >= 0 and kp[..., 0].max() < schema.IMAGE_WIDTH
        assert kp[..., 1].min() >= 0 and kp[..., 1].max() < schema.IMAGE_HEIGHT
        heights.append(np.median(kp[:, 15:17, 1].mean(-1) - kp[:, 0, 1]))  # nose to ankles
        # detector noise: keypoints are not an exact projection (jitter, misses, swaps)
        assert np.abs(np.diff(kp, axis=0)).max() > 20
    assert 150 < np.median(heights) < 350


# ----------------------------------------------------------------------------------------------
# Presets, settings and CLI
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_give_every_split_train_and_test_subjects(name):
    preset = PRESETS[name]
    assert check_preset(preset) == []
    assert any(schema.environment_of(s) == "E04" for s in preset.subjects)
    assert any(int(s[1:]) % 5 == 0 for s in preset.subjects)


def test_preset_sizes():
    assert PRESETS["tiny"].n_sequences <= 12
    assert 6 <= len(PRESETS["small"].subjects) <= 8 and 4 <= len(PRESETS["small"].actions) <= 6
    bench = PRESETS["bench"]
    assert set(bench.actions) == set(schema.PROTOCOLS["P1"])
    assert {schema.environment_of(s) for s in bench.subjects} == set(schema.ENVIRONMENTS)


def test_settings_validate_themselves():
    with pytest.raises(ValueError, match="focal_px"):
        GeneratorConfig().rgb.__class__(focal_px=50.0)
    with pytest.raises(ValueError, match="subject_depth_m"):
        ENVIRONMENTS["E01"].__class__("E01", subject_depth_m=(3.5, 3.0))
    with pytest.raises(ValueError, match="unknown preset"):
        simulate("unused", preset="huge")


def test_cli_refuses_a_foreign_non_empty_directory(tmp_path, tiny_dataset):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="--overwrite"):
        check_output(tmp_path, overwrite=False)
    check_output(tmp_path, overwrite=True)
    check_output(tiny_dataset, overwrite=False)          # a previous generated dataset is fine
    check_output(tmp_path / "new", overwrite=False)


def test_cli_arguments():
    from sensors.simulate import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--preset", "small", "--subjects", "S01,S05", "--workers", "2"])
    assert args.preset == "small" and args.workers == 2
    assert cli._names(args.subjects, schema.SUBJECTS, "subjects") == ["S01", "S05"]
    with pytest.raises(SystemExit, match="S01..S40"):
        cli._names("S01,S99", schema.SUBJECTS, "subjects")


def test_lidar_back_wall_is_optional():
    from dataclasses import replace

    from sensors.simulate import lidar

    env = get_environment("E01")
    subject = make_subject("S01", np.random.default_rng(0), env)
    joints = kinematics.sequence_pose("A02", subject, env.camera_height_m, np.random.default_rng(0))[:5]
    walled = lidar.sequence(joints, env, np.random.default_rng(1))
    open_room = lidar.sequence(joints, replace(env, back_wall_m=None), np.random.default_rng(1))
    wall_x = env.back_wall_m - env.lidar_offset_m[2]
    assert all(np.sum(np.abs(c[:, 0] - wall_x) < 0.05) > 100 for c in walled)
    assert all(len(o) < len(w) for o, w in zip(open_room, walled, strict=True))  # no returns above the horizon
    assert all(np.all(o[:, 2] < 1.0) for o in open_room)


# ----------------------------------------------------------------------------------------------
# Per-sequence recordings (no subject-identity shortcut) and the real CSI statistics
# ----------------------------------------------------------------------------------------------
def test_standing_spot_and_facing_drawn_per_sequence_body_per_subject():
    from sensors.simulate.body import place

    env = get_environment("E01")
    body = make_subject("S03", np.random.default_rng(1), env)
    spots = [place(body, np.random.default_rng(k), env) for k in range(40)]
    assert all(s.bones == body.bones and s.tempo == body.tempo for s in spots)   # the person stays
    depth = np.array([s.depth_m for s in spots])
    x = np.array([s.x_m for s in spots])
    lo, hi = env.subject_depth_m
    assert np.all((depth >= lo) & (depth <= hi)) and depth.std() > 0.05          # spread over the area
    assert np.all((x >= env.subject_x_m[0]) & (x <= env.subject_x_m[1])) and x.std() > 0.05
    assert len({s.facing_rad for s in spots}) == len(spots)
    again = place(body, np.random.default_rng(7), env)
    assert again == spots[7]                                                      # deterministic


def test_a_subjects_sequences_differ_in_spot_and_channel(tiny_dataset):
    seqs = [d for d in _seq_dirs(tiny_dataset) if d.parts[-2] == "S02"]
    assert len(seqs) == 3
    pelvis = np.array([np.load(d / schema.MMFI_GT_FILE)[:10, 0].mean(0) for d in seqs])
    assert np.max(np.ptp(pelvis[:, [0, 2]], axis=0)) > 0.03                      # standing spots
    # the still start's packet-averaged CSI profile: different channel state per sequence
    prof = [scipy.io.loadmat(d / "wifi-csi" / schema.frame_file_name("wifi", 0))["CSIamp"].mean(-1).reshape(-1)
            for d in seqs]
    corr = np.corrcoef(prof)[np.triu_indices(3, 1)]
    assert np.all(corr < 0.95), corr


def test_wifi_session_is_per_sequence_and_deterministic():
    from sensors.simulate import wifi

    env = get_environment("E02")
    a, b = wifi.session(np.random.default_rng(3), env), wifi.session(np.random.default_rng(3), env)
    c = wifi.session(np.random.default_rng(4), env)
    np.testing.assert_array_equal(a.path_factor, b.path_factor)
    assert a.gain_db == b.gain_db and not np.allclose(a.path_factor, c.path_factor)
    assert np.isreal(a.path_factor[0]) and a.path_shift_m[0] == 0.0             # direct path: geometry
    assert np.linalg.norm(a.tx_m - np.asarray(env.wifi_tx_m)) < 0.2
    with pytest.raises(ValueError, match="csi_snr_db"):
        wifi.WifiConfig(csi_snr_db=5.0)


def test_csi_amplitude_distribution_inside_the_real_range(tiny_dataset, mmfi_sample_dir):
    """5th-95th percentiles inside the real ~25-50 dB, per-subcarrier s.d. 3-7 dB (real 3.7-6.2)."""
    real = np.loadtxt(mmfi_sample_dir / "derived_csi_stats" / "E01_profile.csv", delimiter=",", skiprows=1)
    amp = _csi(tiny_dataset, "E01")
    finite = amp[np.isfinite(amp)]
    p5, p95 = np.percentile(finite, [5, 95])
    assert 25.0 <= p5 and p95 <= 50.0, (p5, p95)
    real_lo = real[:, 1] - 1.645 * real[:, 2]                  # the real profile's 5th-95th band
    real_hi = real[:, 1] + 1.645 * real[:, 2]
    assert real_lo.mean() - 4 < p5 and p95 < real_hi.mean() + 4
    sd = np.nanstd(np.where(np.isfinite(amp), amp, np.nan).transpose(0, 1, 3, 2).reshape(-1, 114), 0)
    assert 3.0 <= np.median(sd) <= 7.0 and sd.min() > 2.0 and sd.max() < 9.0, (sd.min(), sd.max())


def test_csi_packet_to_packet_and_antenna_statistics(tiny_dataset, mmfi_sample_dir):
    real = scipy.io.loadmat(mmfi_sample_dir / "frame001.mat")["CSIamp"]
    amp = _csi(tiny_dataset, "E01", step=5)
    amp = amp[np.isfinite(amp).all(axis=(1, 2, 3))]
    packet_sd = amp.std(-1).mean()
    assert abs(packet_sd - real.std(-1).mean()) < 0.5                         # real: 1.26 dB
    corr = np.mean([np.corrcoef(a.mean(-1))[[0, 0, 1], [1, 2, 2]] for a in amp], 0)
    assert np.all(corr < 0.7), corr                     # real E01-E03: -0.12..0.31, frame001 up to 0.69
    frame_min = amp.reshape(len(amp), -1).min(1) - amp.reshape(len(amp), -1).mean(1)
    assert -20 < np.median(frame_min) < -6                                    # real frame001: -12.3 dB


def test_mmwave_torso_hides_what_is_behind_it():
    env = get_environment("E01")
    subject = make_subject("S01", np.random.default_rng(0), env)
    joints = kinematics.sequence_pose("A02", subject, env.camera_height_m, np.random.default_rng(0))[0]
    radar = np.asarray(env.radar_offset_m)
    J = schema.JOINT_INDEX
    chest = joints[J["spine"]]
    front = chest + np.array([0.0, 0.0, -0.4])        # between the radar and the body
    behind = chest + np.array([0.0, 0.0, 0.4])        # on the far side of the torso
    surface = chest + np.array([0.0, 0.0, -0.17])     # the torso's own surface facing the radar
    hidden = mmwave.hidden_by_torso(np.stack([front, behind, surface]), joints, radar)
    assert hidden.tolist() == [False, True, False]


def test_mmwave_session_is_per_capture():
    cfg = mmwave.MmwaveConfig(clutter_sources=(2, 2), clutter_rate=1.0)
    a, b = mmwave.session(np.random.default_rng(1), cfg), mmwave.session(np.random.default_rng(1), cfg)
    c = mmwave.session(np.random.default_rng(2), cfg)
    np.testing.assert_array_equal(a.clutter_xyz, b.clutter_xyz)
    assert a.snr_offset_db == b.snr_offset_db and not np.allclose(a.clutter_xyz, c.clutter_xyz)
    lo, hi = cfg.detect_prob
    assert lo <= a.detect_prob <= hi and 1.15 <= a.reflector_range_factor <= 1.6
    # a still subject: only the capture's residual clutter is detected, where the session put it
    env = get_environment("E01")
    subject = make_subject("S01", np.random.default_rng(0), env)
    joints = kinematics.sequence_pose("A02", subject, env.camera_height_m, np.random.default_rng(0))[:1]
    frames = mmwave.sequence(np.repeat(joints, 3, 0), env, np.random.default_rng(0), cfg, a)
    expected = mmwave._apply_extrinsic(a.clutter_xyz, a.extrinsic)
    for pts in frames:
        assert pts.shape == (2, 5)
        assert np.min(np.linalg.norm(pts[:, None, :3] - expected[None], axis=-1), axis=1).max() < 0.2
    with pytest.raises(ValueError, match="detect_prob"):
        mmwave.MmwaveConfig(detect_prob=(0.9, 0.5))
