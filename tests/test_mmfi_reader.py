"""MM-Fi reader: discovery, raw readers, policies for empty/missing/corrupt files, the dataset."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from sensors import inspect as mmfi_inspect
from sensors import mmfi
from sensors.core import preprocess, schema
from sensors.core.contract import ModelContract, ModelError
from sensors.mmfi import MMFiDataset, MMFiFormatError, SequenceKey

T = schema.FRAMES_PER_SEQUENCE
EMPTY_LIDAR = {5}            # 0-byte lidar frames of every fixture sequence
EMPTY_MMWAVE = {3, 4, 100}   # 0-byte mmwave frames
NAN_CSI_FRAME = 7            # a CSI frame with NaN and inf


# ----------------------------------------------------------------------------------------------
# A hand-made MM-Fi tree (no generator): deterministic contents so values can be checked.
# ----------------------------------------------------------------------------------------------
def keypoints(seed: int, t: int) -> np.ndarray:
    base = np.random.default_rng(seed).uniform([100, 50], [500, 400], size=(17, 2))
    return (base + t).astype(np.float32)


def lidar_points(seed: int, t: int) -> np.ndarray:
    return np.random.default_rng(seed * 1000 + t).normal(size=(300 + t % 7, 3))


def mmwave_points(seed: int, t: int) -> np.ndarray:
    return np.random.default_rng(seed * 2000 + t).normal(size=(1 + t % 20, 5))


def csi(seed: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed * 3000 + t)
    amp = rng.uniform(29.0, 49.0, size=(3, 114, 10))
    phase = rng.uniform(-np.pi, np.pi, size=(3, 114, 10))
    if t == NAN_CSI_FRAME:
        amp[0, 0, 0], amp[1, 2, 0], phase[2, 5, 3] = np.nan, np.inf, -np.inf
    return amp, phase


def ground_truth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(scale=0.3, size=(T, 17, 3)) + [0, 0, 3.3]).astype(np.float32)


def write_sequence(root: Path, subject: str, action: str, seed: int = 0) -> Path:
    seq = SequenceKey.of(subject, action).path(root)
    folders = {m: seq / schema.MMFI_FOLDERS[m] for m in schema.MODALITIES}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for t in range(T):
        np.save(folders["rgb"] / schema.frame_file_name("rgb", t), keypoints(seed, t))
        lidar = np.zeros((0, 3)) if t in EMPTY_LIDAR else lidar_points(seed, t)
        lidar.astype("<f8").tofile(folders["lidar"] / schema.frame_file_name("lidar", t))
        mmwave = np.zeros((0, 5)) if t in EMPTY_MMWAVE else mmwave_points(seed, t)
        mmwave.astype("<f8").tofile(folders["mmwave"] / schema.frame_file_name("mmwave", t))
        amp, phase = csi(seed, t)
        scipy.io.savemat(folders["wifi"] / schema.frame_file_name("wifi", t),
                         {"CSIamp": amp, "CSIphase": phase}, format="5")
    np.save(seq / schema.MMFI_GT_FILE, ground_truth(seed))
    return seq


# P1/S1 seed 0: A02's test subjects are S01 S04 S07 S10 S20 S22 S24 S39, so S01/A02 is test and
# S31/A02 train; A01 is a P2 action.
SEQUENCES = (("S01", "A02", 1), ("S31", "A02", 2), ("S12", "A01", 3))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mmfi")
    for subject, action, seed in SEQUENCES:
        write_sequence(root, subject, action, seed)
    # strays the official toolbox trips over: all must be ignored
    (root / "README.txt").write_text("notes")
    (root / "scratch").mkdir()
    (root / "E01" / ".DS_Store").write_bytes(b"\0")
    (root / "E01" / "S01" / "old_runs").mkdir()
    (root / "E01" / "S01" / "A02" / "infra1").mkdir()
    (root / "E01" / "S01" / "A02" / "rgb" / "frame298.npy").write_bytes(b"junk")
    return root


@pytest.fixture
def one_seq(tmp_path) -> Path:
    """A fresh single-sequence tree (E04/S31/A02, P1/S1 train) that a test may damage."""
    return write_sequence(tmp_path, "S31", "A02", seed=2)


# ----------------------------------------------------------------------------------------------
# Discovery and raw readers
# ----------------------------------------------------------------------------------------------
def test_discovery_ignores_strays(tree):
    keys = mmfi.discover_sequences(tree)
    assert keys == sorted(SequenceKey.of(s, a) for s, a, _ in SEQUENCES)
    assert str(keys[0]) == "E01/S01/A02"
    assert keys[0].path(tree) == tree / "E01" / "S01" / "A02"


def test_subject_under_wrong_environment_is_an_error(tmp_path):
    bad = tmp_path / "E02" / "S03" / "A01"
    bad.mkdir(parents=True)
    with pytest.raises(mmfi.MMFiLayoutError, match="E01") as err:
        mmfi.discover_sequences(tmp_path)
    assert str(tmp_path / "E02" / "S03") in str(err.value)


def test_round_trip_every_modality(tree):
    seq = tree / "E02" / "S12" / "A01"
    t = 42
    rgb = mmfi.read_frame(seq, "rgb", t)
    assert rgb.dtype == np.float32 and rgb.shape == (17, 2)
    np.testing.assert_array_equal(rgb, keypoints(3, t))
    lidar = mmfi.read_frame(seq, "lidar", t)
    assert lidar.dtype == np.float64 and lidar.shape == (300 + t % 7, 3)
    np.testing.assert_array_equal(lidar, lidar_points(3, t))
    mmwave = mmfi.read_frame(seq, "mmwave", t)
    assert mmwave.shape == (1 + t % 20, 5)
    np.testing.assert_array_equal(mmwave, mmwave_points(3, t))
    wifi = mmfi.read_frame(seq, "wifi", t)
    assert isinstance(wifi, mmfi.CSIFrame) and wifi.amp.dtype == np.float64
    np.testing.assert_array_equal(wifi.amp, csi(3, t)[0])
    np.testing.assert_array_equal(wifi.phase, csi(3, t)[1])
    gt = mmfi.read_ground_truth(seq)
    assert gt.dtype == np.float32 and gt.shape == (T, 17, 3)
    np.testing.assert_array_equal(gt, ground_truth(3))
    assert mmfi.read_frame(seq, "rgb", T - 1) is not None
    with pytest.raises(IndexError):
        mmfi.read_frame(seq, "rgb", T)


def test_zero_byte_bins_are_absent_not_errors(tree):
    seq = tree / "E02" / "S12" / "A01"
    assert mmfi.read_frame(seq, "mmwave", 3) is None
    assert mmfi.read_frame(seq, "lidar", 5) is None
    assert mmfi.read_frame_status(seq, "mmwave", 3)[1] == "empty"
    ds = MMFiDataset(tree, "P2", "S1", "all")
    for t, absent in ((3, "mmwave"), (5, "lidar")):
        sample = ds[t]
        i = schema.MODALITY_INDEX[absent]
        assert sample["presence"][i] == 0
        assert sample["presence"].sum() == 3
        assert not sample[f"{absent}_mask"].any() and not sample[absent].any()
    assert ds[6]["presence"].tolist() == [1, 1, 1, 1]
    assert sum(ds.missing.values()) == 0  # empty is not missing


def test_nan_inf_csi_gives_the_official_cleaning(tree):
    ds = MMFiDataset(tree, "P1", "S1", "train")  # E04/S31/A02, seed 2
    wifi = ds[NAN_CSI_FRAME]["wifi"]
    assert wifi.shape == (3, 114, 20) and np.isfinite(wifi).all()
    amp, phase = csi(2, NAN_CSI_FRAME)
    # by hand: inf -> NaN; NaN -> mean of the finite values of packet slice 0; min-max to [0, 1]
    fill = np.nanmean(np.where(np.isfinite(amp[..., 0]), amp[..., 0], np.nan))
    repaired = amp.copy()
    repaired[0, 0, 0] = repaired[1, 2, 0] = fill
    lo, hi = repaired.min(), repaired.max()
    assert wifi[0, 0, 0] == pytest.approx((fill - lo) / (hi - lo), abs=1e-6)
    assert wifi[1, 2, 0] == pytest.approx((fill - lo) / (hi - lo), abs=1e-6)
    assert wifi[0, 0, 1] == pytest.approx((amp[0, 0, 1] - lo) / (hi - lo), abs=1e-6)
    pfill = np.mean(phase[..., 3][np.isfinite(phase[..., 3])])
    p = phase.copy()
    p[2, 5, 3] = pfill
    assert wifi[2, 5, 10 + 3] == pytest.approx((pfill - p.min()) / (p.max() - p.min()), abs=1e-6)


def test_hand_computed_csi_repair_value():
    """Packet 0: 340 finite values (339 ones and one 3) -> NaN/inf become 342/340; packets p hold 1+p."""
    amp = np.ones((3, 114, 10)) + np.arange(10)
    amp[0, 0, 0], amp[1, 0, 0], amp[0, 1, 0] = np.inf, np.nan, 3.0
    out = preprocess.wifi_input(amp, np.zeros_like(amp))
    assert out[0, 0, 0] == pytest.approx((342 / 340 - 1) / 9, abs=1e-7)
    assert out[1, 0, 0] == out[0, 0, 0]
    assert out[2, 0, 9] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# Policies: missing frames, missing folders, malformed files
# ----------------------------------------------------------------------------------------------
def test_missing_frame_is_absent_counted_and_logged_once(one_seq, caplog):
    (one_seq / "lidar" / "frame011.bin").unlink()
    (one_seq / "lidar" / "frame012.bin").unlink()
    ds = MMFiDataset(one_seq.parents[2], "P1", "S1", "train")
    with caplog.at_level(logging.WARNING, logger="sensors.mmfi"):
        a, b = ds[10], ds[11]
    assert a["presence"][schema.MODALITY_INDEX["lidar"]] == 0 and not a["lidar_mask"].any()
    assert b["presence"].tolist() == [1, 0, 1, 1]
    assert ds.missing["lidar"] == 2
    warnings = [r for r in caplog.records if "frame011.bin" in r.getMessage() or "frame012.bin" in r.getMessage()]
    assert len(warnings) == 1
    strict = MMFiDataset(one_seq.parents[2], "P1", "S1", "train", missing="error")
    with pytest.raises(mmfi.MMFiMissingFileError, match="frame011.bin"):
        strict[10]
    with pytest.raises(mmfi.MMFiMissingFileError):
        mmfi.read_frame(one_seq, "lidar", 10, missing="error")


def test_missing_rgb_frame_zeroes_the_window(one_seq):
    (one_seq / "rgb" / "frame021.npy").unlink()
    ds = MMFiDataset(one_seq.parents[2], "P1", "S1", "train")
    assert ds[20]["presence"][0] == 0 and not ds[20]["rgb"].any()
    window = ds[22]["rgb"]  # frames 14..22, frame 20 missing: filled from the next known frame
    np.testing.assert_allclose(window[6], preprocess.normalize_keypoints(keypoints(2, 21)))
    assert ds[22]["presence"][0] == 1


def test_missing_modality_folder(one_seq):
    shutil.rmtree(one_seq / "mmwave")
    root = one_seq.parents[2]
    with pytest.raises(mmfi.MMFiLayoutError, match="mmwave") as err:
        MMFiDataset(root, "P1", "S1", "train")
    assert str(one_seq / "mmwave") in str(err.value)
    ds = MMFiDataset(root, "P1", "S1", "train", modalities=("rgb", "lidar", "wifi"))
    sample = ds[0]
    assert sample["presence"].tolist() == [1, 1, 0, 1]
    assert not sample["mmwave"].any()


def _write_bad(seq: Path, what: str) -> Path:
    if what == "bin_size":
        path = seq / "mmwave" / "frame001.bin"
        path.write_bytes(b"\0" * 41)
    elif what == "too_many_points":
        path = seq / "lidar" / "frame001.bin"
        np.zeros((schema.MAX_LIDAR_POINTS + 1, 3)).tofile(path)
    elif what == "mat_keys":
        path = seq / "wifi-csi" / "frame001.mat"
        scipy.io.savemat(path, {"CSIamp": np.ones((3, 114, 10))}, format="5")
    elif what == "mat_shape":
        path = seq / "wifi-csi" / "frame001.mat"
        scipy.io.savemat(path, {"CSIamp": np.ones((3, 30, 10)), "CSIphase": np.ones((3, 30, 10))}, format="5")
    elif what == "mat_garbage":
        path = seq / "wifi-csi" / "frame001.mat"
        path.write_bytes(b"this is not a mat file at all" * 10)
    elif what == "npy_shape":
        path = seq / "rgb" / "frame001.npy"
        np.save(path, np.zeros((17, 3)))
    else:
        path = seq / schema.MMFI_GT_FILE
        np.save(path, np.zeros((296, 17, 3), np.float32))
    return path


@pytest.mark.parametrize("what", ["bin_size", "too_many_points", "mat_keys", "mat_shape", "mat_garbage",
                                  "npy_shape", "gt_shape"])
def test_malformed_files_raise_naming_the_path(one_seq, what):
    path = _write_bad(one_seq, what)
    ds = MMFiDataset(one_seq.parents[2], "P1", "S1", "train")  # lazy: construction reads nothing
    with pytest.raises(MMFiFormatError) as err:
        ds[0]
    assert str(path) in str(err.value)
    assert "expected" in str(err.value)


# ----------------------------------------------------------------------------------------------
# Real MM-Fi artefacts
# ----------------------------------------------------------------------------------------------
def test_real_csi_frame_reads_through_the_mat_path(mmfi_sample_dir):
    frame = mmfi.read_csi(mmfi_sample_dir / "frame001.mat")
    assert frame.amp.shape == frame.phase.shape == (3, 114, 10)
    assert frame.amp.dtype == np.float64
    assert frame.amp.min() == pytest.approx(29.27, abs=0.01)
    assert frame.amp.max() == pytest.approx(48.84, abs=0.01)
    assert np.abs(frame.phase).max() <= np.pi + 1e-12
    x = preprocess.wifi_input(frame.amp, frame.phase)
    assert x.shape == schema.WIFI_INPUT_SHAPE and x.min() == 0.0 and x.max() == 1.0


def test_real_ground_truth_frame_matches_the_schema_skeleton(mmfi_sample_dir):
    (path,) = sorted(mmfi_sample_dir.glob("gt_*.json"))
    joints = np.asarray(json.loads(path.read_text())["frame0_17x3"], dtype=np.float64)
    assert joints.shape == (schema.N_JOINTS, 3)
    for (a, b), bone in schema.EDGE_BONE.items():
        length = np.linalg.norm(joints[a] - joints[b])
        assert length == pytest.approx(schema.REFERENCE_BONE_LENGTHS[bone], abs=0.015), (a, b, bone)
    # camera frame: y down (head above pelvis means smaller y), z depth about 3.3 m
    assert joints[schema.JOINT_INDEX["head"], 1] < joints[schema.JOINT_INDEX["pelvis"], 1]
    assert 3.0 < joints[:, 2].mean() < 3.6


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
def test_subsets_follow_the_split(tree):
    def keys(*args, **kw):
        return [str(k) for k in MMFiDataset(tree, *args, **kw).keys]

    assert keys("P1", "S1", "train") == ["E04/S31/A02"]
    assert keys("P1", "S1", "test") == ["E01/S01/A02"]
    assert keys("P1", "S1", "all") == ["E01/S01/A02", "E04/S31/A02"]
    assert keys("P3", "S3", "test") == ["E04/S31/A02"]
    assert keys("P3", "S3", "train") == ["E01/S01/A02", "E02/S12/A01"]
    assert keys("P2", "S2", "train") == ["E02/S12/A01"]
    with pytest.raises(mmfi.MMFiLayoutError, match="P2, split S2, subset 'test'") as err:
        MMFiDataset(tree, "P2", "S2", "test")
    assert "S01, S12, S31" in str(err.value)
    with pytest.raises(mmfi.MMFiLayoutError, match="E01..E04"):
        MMFiDataset(tree / "scratch")
    with pytest.raises(mmfi.MMFiLayoutError, match="E01 is a level inside MM-Fi"):
        MMFiDataset(tree / "E01")


def test_sample_shapes_dtypes_and_values(tree):
    ds = MMFiDataset(tree, "P1", "S1", "test", contract=ModelContract(rgb_window=5, lidar_cap=64, mmwave_cap=8))
    assert len(ds) == T
    s = ds[50]
    expected = {"rgb": ((5, 17, 2), np.float32), "lidar": ((64, 3), np.float32), "lidar_mask": ((64,), bool),
                "mmwave": ((8, 5), np.float32), "mmwave_mask": ((8,), bool), "wifi": ((3, 114, 20), np.float32),
                "presence": ((4,), np.float32), "joints": ((17, 3), np.float32)}
    for name, (shape, dtype) in expected.items():
        assert s[name].shape == shape and s[name].dtype == dtype, name
    assert (s["env"], s["subject"], s["action"], s["frame"]) == ("E01", "S01", "A02", 50)
    np.testing.assert_array_equal(s["joints"], ground_truth(1)[50])
    # causal window: frames 46..50, last = now
    for j, t in enumerate(range(46, 51)):
        np.testing.assert_allclose(s["rgb"][j], preprocess.normalize_keypoints(keypoints(1, t)))
    # sequence start: edge padded with frame 0
    first = ds[0]["rgb"]
    np.testing.assert_allclose(first, np.broadcast_to(preprocess.normalize_keypoints(keypoints(1, 0)), (5, 17, 2)))
    # 70 mmwave points > cap 8: evenly sampled, all real
    assert s["mmwave_mask"].all()
    pts, mask = preprocess.sample_points(mmwave_points(1, 50), 8, 5)
    np.testing.assert_array_equal(s["mmwave"], pts)
    assert ds[-1]["frame"] == T - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_mmwave_column_order_is_a_setting(tree):
    disk = ("x", "y", "z", "doppler_mps", "snr_db")
    ds = MMFiDataset(tree, "P1", "S1", "test", mmwave_columns=disk, contract=ModelContract(mmwave_cap=64))
    raw = mmwave_points(1, 12)
    got = ds[12]["mmwave"][: raw.shape[0]]
    np.testing.assert_allclose(got, raw[:, [0, 1, 2, 4, 3]].astype(np.float32))
    with pytest.raises(ValueError, match="ordering"):
        MMFiDataset(tree, mmwave_columns=("x", "y", "z", "snr_db", "rcs"))


def test_load_arrays_equals_getitem(tree):
    ds = MMFiDataset(tree, "P3", "S3", "train", contract=ModelContract(rgb_window=4))
    arrays = ds.load_arrays(progress=False)
    assert arrays["rgb"].shape == (2 * T, 4, 17, 2) and arrays["subject"].shape == (2 * T,)
    for i in (0, 2, 3, 5, 7, 100, T, T + 3, 2 * T - 1):
        sample = ds[i]
        for name, value in sample.items():
            np.testing.assert_array_equal(arrays[name][i], value, err_msg=f"{name} at {i}")
    assert arrays["presence"][:, schema.MODALITY_INDEX["mmwave"]].sum() == 2 * (T - len(EMPTY_MMWAVE))
    assert arrays["subject"].dtype.kind == "U" and set(arrays["action"]) == {"A01", "A02"}


def test_sequence_frames_are_raw_and_in_order(tree):
    ds = MMFiDataset(tree, "P1", "S1", "test")
    key = ds.keys[0]
    frames = list(ds.sequence_frames(key))
    assert [f["frame"] for f in frames] == list(range(T))
    f3 = frames[3]
    assert f3["mmwave"] is None and f3["lidar"].shape == lidar_points(1, 3).shape
    np.testing.assert_array_equal(frames[9]["rgb"], keypoints(1, 9))
    np.testing.assert_array_equal(frames[9]["wifi"].amp, csi(1, 9)[0])
    np.testing.assert_array_equal(frames[9]["joints"], ground_truth(1)[9])


def test_bad_dataset_settings_are_rejected(tree):
    for kw, match in (({"modalities": ("rgb", "depth")}, "modalities"),
                      ({"missing": "skip"}, "absent, error"), ({"subset": "val"}, "train, test, all")):
        with pytest.raises(ValueError, match=match):
            MMFiDataset(tree, **kw)
    with pytest.raises(ModelError, match="rgb_window must be an integer >= 1"):
        MMFiDataset(tree, contract=ModelContract(rgb_window=0))


def test_generated_tiny_dataset_reads_through_the_reader(request):
    try:
        from sensors.simulate import simulate  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the synthetic generator (sensors.simulate) is not importable yet: {err}")
    root = request.getfixturevalue("tiny_dataset")
    train = MMFiDataset(root, "P1", "S1", "train")
    test = MMFiDataset(root, "P1", "S1", "test")
    assert len(train) > 0 and len(test) > 0
    assert not {k for k in train.keys} & {k for k in test.keys}
    for ds in (train, test):
        s = ds[len(ds) // 2]
        assert np.isfinite(s["wifi"]).all() and s["joints"].shape == (17, 3)
        assert 2.0 < s["joints"][:, 2].mean() < 5.0  # camera frame, metres


# ----------------------------------------------------------------------------------------------
# sensors inspect
# ----------------------------------------------------------------------------------------------
def test_dataset_summary(tree):
    summary = mmfi_inspect.dataset_summary(tree, protocol="P1", split="S1")
    assert summary["sequences"] == 3 and summary["frames"] == 3 * T
    assert summary["environments"] == ["E01", "E02", "E04"]
    assert summary["subjects"] == ["S01", "S12", "S31"] and summary["actions"] == ["A01", "A02"]
    assert summary["modalities"]["mmwave"]["empty_rate"] == pytest.approx(len(EMPTY_MMWAVE) / T)
    assert summary["modalities"]["lidar"]["empty_rate"] == pytest.approx(len(EMPTY_LIDAR) / T)
    assert summary["modalities"]["rgb"]["missing"] == 0
    lidar = summary["lidar_points"]
    assert (lidar["min"], lidar["max"]) == (300, 306)
    assert summary["mmwave_points"]["max"] == 20
    csi_stats = summary["csi"]
    assert csi_stats["frames_with_nonfinite"] == 3
    assert csi_stats["nonfinite_rate"] == pytest.approx(9 / (3 * T * 2 * 3 * 114 * 10))
    assert 29.0 <= csi_stats["amp_min"] < csi_stats["amp_max"] <= 49.0
    assert summary["split"]["train_sequences"] == 1 and summary["split"]["test_sequences"] == 1
    assert summary["split"]["train_frames"] == T
    text = mmfi_inspect.format_summary(summary)
    assert "P1" in text and "mmwave" in text and "E04" in text


def test_inspect_cli_prints_summary(tree, capsys):
    from sensors import cli

    assert cli.main(["inspect", "--data", str(tree), "--protocol", "P3", "--split", "S3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"]["test_sequences"] == 1 and out["split"]["train_sequences"] == 2
    assert cli.main(["inspect", "--data", str(tree / "scratch")]) == 1
    assert "E01..E04" in capsys.readouterr().err
