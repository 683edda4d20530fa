"""The LiDAR floor/background crop: what it keeps, and that training and the ONNX runtime apply it alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.export_models import export_tiny

from sensors import mmfi
from sensors.core import preprocess, schema
from sensors.simulate.environment import ENVIRONMENTS
from sensors.simulate.lidar import LidarConfig, camera_to_sensor, scan

torch.set_num_threads(1)


def _scene(seed: int = 0):
    """One simulated scan of a standing person (floor, back wall, body) and the joints, sensor frame."""
    env = ENVIRONMENTS[0] if not isinstance(ENVIRONMENTS, dict) else ENVIRONMENTS["E01"]
    joints = np.zeros((17, 3))
    joints[:, 1] = np.linspace(-0.9, 0.8, 17)  # camera frame: y down, head to feet
    joints[:, 0] = np.linspace(-0.2, 0.2, 17)
    joints[:, 2] = 3.25
    cloud = scan(joints, env, np.random.default_rng(seed), LidarConfig())
    return cloud.astype(np.float32), camera_to_sensor(joints[None], env.lidar_offset_m)[0]


def test_crop_removes_floor_and_wall_and_keeps_the_body():
    cloud, joints = _scene()
    kept = preprocess.crop_lidar(cloud)
    floor_z = np.percentile(cloud[:, 2], 5)
    assert np.mean(np.abs(cloud[:, 2] - floor_z) < 0.03) > 0.2  # the raw scan is mostly floor/wall
    assert kept.shape[0] > 50
    assert kept[:, 2].min() > floor_z + preprocess.LIDAR_CROP.floor_margin
    assert kept[:, 0].max() <= preprocess.LIDAR_CROP.x_range[1]
    body = np.linalg.norm(cloud[:, None] - joints[None], axis=-1).min(axis=1) < 0.3
    kept_body = np.linalg.norm(kept[:, None] - joints[None], axis=-1).min(axis=1) < 0.3
    assert kept_body.mean() > 0.9  # what is kept is the body ...
    assert kept_body.sum() > 0.7 * body.sum()  # ... and most of the body is kept
    # Ring order is preserved (rows keep their relative order).
    idx = [int(np.flatnonzero((cloud == row).all(axis=1))[0]) for row in kept]
    assert idx == sorted(idx)


def test_crop_edge_cases():
    assert preprocess.crop_lidar(np.zeros((0, 3))).shape == (0, 3)
    far = np.array([[6.0, 0.0, 0.0], [3.0, 4.0, 0.0]], np.float32)  # beyond the box: nothing is the body
    pts, mask = preprocess.point_input("lidar", far, 8)
    assert not mask.any() and not pts.any()
    bad = np.array([[3.0, 0.0, np.nan], [3.0, 0.1, 0.2]], np.float32)  # non-finite rows dropped first
    pts, mask = preprocess.point_input("lidar", bad, 4)
    assert mask.sum() == 1 and np.allclose(pts[0], [3.0, 0.1, 0.2])
    radar = np.random.default_rng(0).normal(0, 3, (20, 5)).astype(np.float32)  # mmWave is never cropped
    np.testing.assert_array_equal(preprocess.point_input("mmwave", radar, 32)[0],
                                  preprocess.sample_points(radar, 32, 5)[0])


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from runtime.inference import OnnxPoseModel

    torch_model, cfg, path = export_tiny(tmp_path_factory.mktemp("crop") / "m.onnx", calibrate=False)
    return torch_model, cfg, OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1)


def test_training_inputs_and_onnx_runtime_inputs_agree_on_a_raw_scan(onnx_model, tmp_path):
    """The training reader (an MM-Fi .bin file, float64) and the runtime (runtime.features, the
    float32 wire array) crop and sample the same raw scan identically, and the exported model
    served on the runtime's inputs gives the torch model's pose on the training inputs."""
    from runtime.features import FeatureBuilder
    from runtime.sync import SyncedSample, TickInputs

    torch_model, cfg, served_model = onnx_model
    meta = served_model.metadata
    cloud, _ = _scene(1)
    seq = tmp_path / "E01" / "S01" / "A02"
    (seq / schema.MMFI_FOLDERS["lidar"]).mkdir(parents=True)
    cloud.astype("<f8").tofile(mmfi.frame_path(seq, "lidar", 0))
    raw = mmfi.read_frame(seq, "lidar", 0)
    train = preprocess.frame_inputs({"lidar": raw}, meta)
    sample = SyncedSample(arrays={"points": cloud.astype("<f4")}, t_ns=0, skew_s=0.0, src="t", seq=0)
    tick = TickInputs(tick_ns=0, index=0, samples={"lidar": sample}, wifi_packets=schema.WIFI_PACKETS)
    served = FeatureBuilder.from_metadata(meta).build(tick).inputs
    np.testing.assert_array_equal(served["lidar"][0], train["lidar"])
    np.testing.assert_array_equal(served["lidar_mask"][0], train["lidar_mask"])
    assert served["presence"][0][schema.MODALITY_INDEX["lidar"]] == 1.0
    # The crop really acted: fewer real points than a plain sample of the raw scan would give.
    assert train["lidar_mask"].sum() <= meta.lidar_cap
    assert not np.array_equal(train["lidar"], preprocess.sample_points(cloud, meta.lidar_cap, 3)[0])
    pose_onnx = served_model.run(served)[0]
    with torch.no_grad():
        pose_torch = torch_model(*[torch.from_numpy(np.asarray(train[k])[None]) for k in schema.MODEL_INPUTS])
    np.testing.assert_allclose(pose_onnx, pose_torch.numpy(), atol=1e-4)


def test_a_raw_scan_model_is_served_on_the_raw_scan(tmp_path):
    """``model.lidar_crop=false`` (the official toolbox's pipeline: the raw scan, floor and walls,
    sampled to the cap) is recorded in the export, and the runtime then samples the raw scan exactly
    as the training reader does; a file from before the key existed reads as cropped."""
    import onnx
    from fixtures.export_models import tiny_model

    from runtime.features import FeatureBuilder
    from runtime.inference import OnnxPoseModel
    from runtime.metadata import ModelError, ModelMetadata
    from runtime.sync import SyncedSample, TickInputs
    from training.export import export_onnx

    model, cfg = tiny_model()
    cfg.model.lidar_crop = False
    path = export_onnx(model, cfg, tmp_path / "raw.onnx", calibration=None, metrics={"mpjpe_mm": 1.0})
    meta = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1).metadata
    assert meta.lidar_crop is False and meta.summary()["lidar_crop"] is False
    cloud, _ = _scene(2)
    seq = tmp_path / "E01" / "S01" / "A02"
    (seq / schema.MMFI_FOLDERS["lidar"]).mkdir(parents=True)
    cloud.astype("<f8").tofile(mmfi.frame_path(seq, "lidar", 0))
    train = preprocess.frame_inputs({"lidar": mmfi.read_frame(seq, "lidar", 0)}, meta)
    assert meta.lidar_crop is False
    sample = SyncedSample(arrays={"points": cloud.astype("<f4")}, t_ns=0, skew_s=0.0, src="t", seq=0)
    tick = TickInputs(tick_ns=0, index=0, samples={"lidar": sample}, wifi_packets=schema.WIFI_PACKETS)
    served = FeatureBuilder.from_metadata(meta).build(tick).inputs
    np.testing.assert_array_equal(served["lidar"][0], train["lidar"])
    # Not cropped: the plain sample of the whole scan, floor included.
    np.testing.assert_array_equal(train["lidar"], preprocess.sample_points(cloud, meta.lidar_cap, 3)[0])
    floor_z = np.percentile(cloud[:, 2], 5)
    assert np.mean(np.abs(train["lidar"][:, 2] - floor_z) < 0.03) > 0.1
    # An export from before the key existed is read as cropped; a bad value is refused by name.
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    del props[schema.META_PREFIX + "lidar_crop"]
    assert ModelMetadata.from_props(props, source="old").lidar_crop is True
    props[schema.META_PREFIX + "lidar_crop"] = "maybe"
    with pytest.raises(ModelError, match="lidar_crop"):
        ModelMetadata.from_props(props, source="bad")


def test_lidar_crop_setting_reaches_the_cache_key_and_old_configs_read_as_cropped():
    from training import config as config_mod
    from training.data import _cache_key

    cropped = config_mod.resolve(flags={"data": {"root": "."}})
    raw = config_mod.resolve(flags={"data": {"root": "."}, "model": {"lidar_crop": False}})
    assert _cache_key(cropped, "train") != _cache_key(raw, "train")
    saved = cropped.to_dict()
    del saved["model"]["lidar_crop"]   # a run recorded before the setting existed
    assert config_mod.from_dict(saved).model.lidar_crop is True
