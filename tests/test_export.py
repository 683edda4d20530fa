"""ONNX export: torch/onnxruntime parity for every fusion, pinned versions, metadata, baseline."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from fixtures.export_models import export_tiny, random_calibration, tiny_config, tiny_model

from runtime.inference import OnnxPoseModel
from sensors.core import posemath, schema
from training import export
from training.config import FUSIONS, config_hash, model_contract

torch.set_num_threads(1)
ATOL_M = 1e-4  # 0.1 mm: onnxruntime vs torch eager, float32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fusion -> (torch model, config, path of its exported ONNX file with a baseline)."""
    out = tmp_path_factory.mktemp("export")
    return {f: export_tiny(out / f"{f}.onnx", fusion=f) for f in FUSIONS}


def parity_inputs(dims: export.ModelContract, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Full, partial and empty presence; empty point clouds (all-False masks) included."""
    x = export.example_inputs(dims, batch=batch, seed=seed)
    x["presence"][0] = 1.0
    if batch > 1:
        x["presence"][1] = 1.0
        x["lidar_mask"][1] = False  # present but empty clouds
        x["mmwave_mask"][1] = False
    if batch > 2:
        x["presence"][2] = [1.0, 0.0, 1.0, 0.0]
    if batch > 3:
        x["presence"][3] = 0.0
    return x


def torch_reference(model, x: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """pose by the model's own forward, coalition poses by its fuse_coalitions: independent of the
    export wrapper."""
    args = export.to_torch(x)
    with torch.no_grad():
        pose = model(*args)
        feats = model.encode(*args[:-1])
        masks = torch.from_numpy(schema.COALITION_MASKS)[None] * args[-1][:, None, :]
        coalitions = model.fuse_coalitions(feats, masks)
    return pose.numpy(), coalitions.numpy()


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch_for_every_fusion(exported, fusion, batch):
    model, cfg, path = exported[fusion]
    runtime = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1)
    x = parity_inputs(model_contract(cfg), batch, seed=batch)
    pose, coalitions = runtime.run(x)
    ref_pose, ref_coalitions = torch_reference(model, x)
    assert pose.shape == (batch, 17, 3) and coalitions.shape == (batch, 16, 17, 3)
    assert np.isfinite(pose).all() and np.isfinite(coalitions).all()
    np.testing.assert_allclose(pose, ref_pose, rtol=0, atol=ATOL_M)
    np.testing.assert_allclose(coalitions, ref_coalitions, rtol=0, atol=ATOL_M)
    # The full coalition under the presence mask is the pose; the empty coalition ignores inputs.
    np.testing.assert_allclose(coalitions[:, schema.FULL_COALITION], pose, atol=ATOL_M)
    np.testing.assert_allclose(coalitions[:, 0], np.broadcast_to(coalitions[:1, 0], coalitions[:, 0].shape),
                               atol=ATOL_M)


def test_absent_modality_changes_no_coalition(exported):
    """Coalition c uses COALITION_MASKS[c] * presence: with lidar absent, coalitions that differ
    only by the lidar bit predict the same pose."""
    model, cfg, path = exported["attention"]
    runtime = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1)
    x = parity_inputs(model_contract(cfg), 2, seed=7)
    x["presence"][:] = [1.0, 0.0, 1.0, 1.0]
    _, coalitions = runtime.run(x)
    lidar_bit = 1 << schema.MODALITY_INDEX["lidar"]
    for c in range(schema.N_COALITIONS):
        np.testing.assert_allclose(coalitions[:, c | lidar_bit], coalitions[:, c & ~lidar_bit], atol=1e-6)
    assert np.abs(coalitions[:, 1] - coalitions[:, 0]).max() > 1e-4  # rgb does change the pose


def test_pinned_ir_version_and_opset(exported):
    proto = onnx.load(str(exported["concat"][2]))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == export.IR_VERSION == 10
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == export.OPSET == 17
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == schema.BATCH_AXIS  # dynamic batch axis, fixed window and caps


def test_opset_outside_what_onnxruntime_120_reads_is_refused(tmp_path):
    model, cfg = tiny_model()
    with pytest.raises(export.ExportError, match=r"opset must be 14\.\.21 .*got 22"):
        export.export_onnx(model, cfg, tmp_path / "m.onnx", opset=22)


def test_metadata_describes_the_model(exported):
    model, cfg, path = exported["mlp"]
    meta = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1).metadata
    assert meta.schema_version == schema.SCHEMA_VERSION and meta.modalities == schema.MODALITIES
    assert (meta.rgb_window, meta.lidar_cap, meta.mmwave_cap) == (cfg.model.rgb_window, cfg.model.lidar_cap,
                                                                  cfg.model.mmwave_cap)
    assert meta.fusion == "mlp" and meta.config_hash == config_hash(cfg)
    assert meta.config == json.loads(json.dumps(cfg.to_dict()))
    assert meta.validation_metrics == {"mpjpe_mm": 123.4}
    assert meta.inputs["wifi"].shape == (None, *schema.WIFI_INPUT_SHAPE)
    assert meta.mmwave_columns == schema.MMWAVE_COLUMNS
    for fn in ("rgb_window", "sample_points", "wifi_input", "clean_csi", "resample_packets"):
        assert any(f"sensors.core.preprocess.{fn}" in text for text in meta.preprocessing.values()), fn
    assert set(meta.units) >= {*schema.MODALITIES, "pose"}


def test_baseline_shares_are_finite_nonnegative_and_sum_to_one(exported):
    for fusion, (_, _, path) in exported.items():
        b = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1).metadata.baseline
        assert b is not None, fusion
        # 2 sequences of 130 frames -> 4 whole 30-frame windows each.
        assert b.window == export.CALIBRATION_WINDOW == 30 and b.n_windows == 8 and b.n_frames == 240
        for part in (b.label_free, b.labelled):
            shares = np.asarray(part["shares"])
            assert np.isfinite(shares).all() and (shares >= 0).all()
            assert shares.sum() == pytest.approx(1.0, abs=1e-9)
            assert np.isfinite(part["shapley"]).all() and np.isfinite(part["share_std"]).all()


def test_baseline_equals_shapley_of_torch_predictions(exported):
    """The metadata's label-free Shapley values are the mean over 30-frame windows of the exact
    Shapley values with the Pearson profit against the full prediction."""
    model, cfg, path = exported["concat"]
    cal = random_calibration(model_contract(cfg))
    phis = []
    for idx in cal.windows(export.CALIBRATION_WINDOW):
        pose, coalitions = torch_reference(model, {k: v[idx] for k, v in cal.inputs.items()})
        phis.append(posemath.shapley_values(posemath.coalition_values(coalitions, pose)))
    b = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1).metadata.baseline
    np.testing.assert_allclose(b.label_free["shapley"], np.mean(phis, axis=0), atol=1e-3)
    # Label-free efficiency: the values sum to v(full) - v(empty) = the 51 coordinates agreeing.
    assert sum(b.label_free["shapley"]) == pytest.approx(51.0, abs=1e-3)


def test_calibration_window_is_the_runtime_contribution_window():
    from runtime.contributions import ContributionConfig

    assert export.CALIBRATION_WINDOW == ContributionConfig().window_ticks


def test_calibration_windows_stay_inside_sequences():
    cal = random_calibration(export.ModelContract(rgb_window=5, lidar_cap=8, mmwave_cap=4), sequences=3, frames=100)
    windows = cal.windows(64)
    assert len(windows) == 3  # 100 frames hold one full window each
    for idx in windows:
        assert len(idx) == 64 and len(set(cal.sequence[idx])) == 1 and (np.diff(idx) == 1).all()
    limited = cal.limit(128, 64)
    assert len(limited.targets) == 128 and len(limited.windows(64)) == 2


def test_no_calibration_records_the_baseline_as_missing(tmp_path):
    _, _, path = export_tiny(tmp_path / "m.onnx", calibrate=False)
    meta = OnnxPoseModel.load(path, provider="cpu", intra_op_threads=1).metadata
    assert meta.baseline is None and "without calibration" in meta.baseline_missing_reason


def test_calibration_refuses_a_missing_dataset(tmp_path):
    with pytest.raises(export.ExportError, match="not found.*--no-calibration"):
        export.load_calibration(tiny_config(), tmp_path / "nowhere")


def test_export_is_deterministic_and_batch_independent(tmp_path):
    a = export_tiny(tmp_path / "a.onnx", calibrate=False)[2]
    b = export_tiny(tmp_path / "b.onnx", calibrate=False)[2]
    ma, mb = (OnnxPoseModel.load(p, provider="cpu", intra_op_threads=1) for p in (a, b))
    x = parity_inputs(model_contract(tiny_config()), 4, seed=3)
    pose_a, coal_a = ma.run(x)
    np.testing.assert_array_equal(pose_a, mb.run(x)[0])
    # A frame's output does not depend on the other frames of the batch.
    single = {k: v[2:3] for k, v in x.items()}
    np.testing.assert_allclose(ma.run(single)[1][0], coal_a[2], atol=1e-6)


def test_pose_only_graph_matches_forward(tmp_path):
    model, cfg = tiny_model("attention")
    dims = model_contract(cfg)
    path = export.export_pose_only(model, dims, tmp_path / "pose.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = parity_inputs(dims, 3, seed=11)
    (pose,) = sess.run(["pose"], x)
    np.testing.assert_allclose(pose, torch_reference(model, x)[0], atol=ATOL_M)


# -- training export (CLI) and export_untrained ----------------------------------------------------
def _checkpoint(tmp_path, data_root):
    from training.checkpoint import save_checkpoint

    model, cfg = tiny_model("mlp", seed=3)
    cfg.data.root = str(data_root)
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, cfg, epoch=2, metrics={"mpjpe_mm": 99.5, "pa_mpjpe_mm": 61.0})
    return model, cfg, path


def test_training_export_refuses_without_data_unless_told(tmp_path, caplog):
    from training import cli as training_cli

    model, _, ckpt = _checkpoint(tmp_path, tmp_path / "no-such-dataset")
    out = tmp_path / "awc.onnx"
    assert training_cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "no-such-dataset not found" in caplog.text and "--no-calibration" in caplog.text
    assert not out.exists()
    assert training_cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-calibration"]) == 0
    runtime = OnnxPoseModel.load(out, provider="cpu", intra_op_threads=1)
    assert runtime.metadata.baseline is None and "--no-calibration" in runtime.metadata.baseline_missing_reason
    assert runtime.metadata.validation_metrics == {"mpjpe_mm": 99.5, "pa_mpjpe_mm": 61.0}
    x = parity_inputs(model_contract(tiny_config("mlp")), 3, seed=2)
    np.testing.assert_allclose(runtime.run(x)[0], torch_reference(model, x)[0], atol=ATOL_M)


def test_export_records_training_data_kind_and_date(tmp_path, tiny_dataset):
    """awc_build_info's provenance: a checkpoint trained on a generated dataset exports as synthetic."""
    from training import cli as training_cli

    _, cfg, ckpt = _checkpoint(tmp_path, tiny_dataset)
    out = tmp_path / "awc.onnx"
    assert training_cli.main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-calibration"]) == 0
    producer = OnnxPoseModel.load(out, provider="cpu", intra_op_threads=1).metadata.producer
    assert producer["training_data"] == "synthetic"
    assert producer["exported_at"].endswith("+00:00") and producer["exported_at"][:2] == "20"


def test_training_export_measures_the_baseline_on_dataset_frames(tmp_path, tiny_dataset):
    from training import cli as training_cli

    _, cfg, ckpt = _checkpoint(tmp_path, tmp_path / "elsewhere")
    out = tmp_path / "awc.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--data", str(tiny_dataset),
            "--calibration-frames", "256"]
    assert training_cli.main(argv) == 0
    b = OnnxPoseModel.load(out, provider="cpu", intra_op_threads=1).metadata.baseline
    assert b is not None and b.window == 30 and b.n_frames == 240  # 256 frames hold 8 whole windows
    assert b.source["protocol"] == cfg.data.protocol and b.source["set"] == "sequences"   # held-out recordings
    for part in (b.label_free, b.labelled):
        assert np.isfinite(part["shares"]).all() and sum(part["shares"]) == pytest.approx(1.0)


def test_export_untrained_is_deterministic_with_a_dataset_baseline(tmp_path, tiny_dataset):
    a = export.export_untrained(tmp_path / "a.onnx", fusion="attention", preset="tiny", seed=1,
                                data_root=tiny_dataset, max_calibration_frames=128)
    b = export.export_untrained(tmp_path / "b.onnx", fusion="attention", preset="tiny", seed=1)
    ma, mb = (OnnxPoseModel.load(p, provider="cpu", intra_op_threads=1) for p in (a, b))
    assert ma.metadata.fusion == "attention" and ma.metadata.baseline is not None
    assert mb.metadata.baseline is None
    x = ma.empty_inputs(2)
    x["presence"][:] = 1.0
    np.testing.assert_array_equal(ma.run(x)[1], mb.run(x)[1])


def test_bench_export_reports_every_variant_side_by_side():
    """Smoke run of `training bench-export` (figures only, nothing about speed is asserted)."""
    from training.bench_export import BenchConfig, bench, markdown, report

    (result,) = bench(BenchConfig(presets=("tiny",), threads=1, warmup=1, iters=5))
    text = report(result)
    for row in ("| torch eager |", "| ort pose |", "| ort 16 coal |", "| ort 16 runs |", "| ort 16 coal daz |"):
        assert row in text
    # denormals as zero changes nothing of an untrained model's outputs beyond float noise
    assert float(text.split("largest output difference ")[1].split(")")[0]) < 1e-5
    assert "threads 1" in text and "ort 16 coal / ort pose" in text and "ort pose / torch eager" in text
    table = markdown([result, {**result, "threads": 2}])
    assert "| per frame, batch 1 | 1 thread: median / p90 ms | 2 threads: median / p90 ms |" in table
    assert table.count("| onnxruntime") == 3 and "target ≤ 0.5" in table
    with pytest.raises(ValueError, match="fusion must be one of"):
        BenchConfig(fusion="sum")
