"""runtime.inference: refusing files it cannot serve, provider choice, input validation, `runtime info`."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fixtures.export_models import export_tiny

from runtime import cli as runtime_cli
from runtime.inference import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    ModelError,
    ModelMetadata,
    OnnxPoseModel,
    choose_providers,
)
from sensors.core import schema

torch.set_num_threads(1)
HAS_CUDA = CUDA_PROVIDER in ort.get_available_providers()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("rt") / "awc.onnx", fusion="concat")[2]


@pytest.fixture(scope="module")
def model(model_path):
    return OnnxPoseModel.load(model_path, provider="cpu", intra_op_threads=1)


def _edited(src, dst, **props):
    """Copy of the model with some awc.* metadata replaced (value None = removed)."""
    proto = onnx.load(str(src))
    kept = {p.key: p.value for p in proto.metadata_props}
    for key, value in props.items():
        kept.pop(schema.META_PREFIX + key, None)
        if value is not None:
            kept[schema.META_PREFIX + key] = value
    del proto.metadata_props[:]
    for k, v in kept.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(dst))
    return dst


# -- refusing files -------------------------------------------------------------------------------
def test_truncated_file_is_refused(model_path, tmp_path):
    data = model_path.read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cannot load .*cut\.onnx.*truncated, corrupt or not ONNX.*re-export"):
        OnnxPoseModel.load(bad, provider="cpu")


def test_file_that_is_not_onnx_is_refused(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(ModelError, match=r"notes\.onnx .*not ONNX"):
        OnnxPoseModel.load(text, provider="cpu")
    checkpoint = tmp_path / "best.pt"
    torch.save({"weights": torch.zeros(3)}, checkpoint)
    with pytest.raises(ModelError, match=r"zip archive \(a PyTorch checkpoint\?\).*training export"):
        OnnxPoseModel.load(checkpoint, provider="cpu")


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(ModelError, match=r"does not exist.*training export"):
        OnnxPoseModel.load(tmp_path / "absent.onnx", provider="cpu")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty \(0 bytes\)"):
        OnnxPoseModel.load(tmp_path / "empty.onnx", provider="cpu")


def test_model_without_our_metadata_is_refused(model_path, tmp_path):
    proto = onnx.load(str(model_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelError, match=r"lacks the metadata key 'awc\.schema_version'.*training export"):
        OnnxPoseModel.load(tmp_path / "plain.onnx", provider="cpu")


def test_incompatible_schema_version_is_refused(model_path, tmp_path):
    bad = _edited(model_path, tmp_path / "v99.onnx", schema_version="99")
    with pytest.raises(ModelError, match=r"schema version 99; this runtime serves schema version\(s\) \[1\]"):
        OnnxPoseModel.load(bad, provider="cpu")


def test_metadata_that_disagrees_with_the_graph_is_refused(model_path, tmp_path):
    meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    inputs = json.loads(meta["awc.inputs"])
    cap = inputs["lidar"]["shape"][1] * 2
    inputs["lidar"]["shape"][1] = inputs["lidar_mask"]["shape"][1] = cap
    bad = _edited(model_path, tmp_path / "caps.onnx", lidar_cap=str(cap), inputs=json.dumps(inputs))
    with pytest.raises(ModelError, match=r"graph input is lidar float32 \[B, 48, 3\] but the metadata declares "
                                         r"lidar float32 \[B, 96, 3\]"):
        OnnxPoseModel.load(bad, provider="cpu")
    inconsistent = _edited(model_path, tmp_path / "window.onnx", rgb_window="3")
    with pytest.raises(ModelError, match=r"metadata is inconsistent"):
        OnnxPoseModel.load(inconsistent, provider="cpu")


def test_bad_baseline_is_refused(model_path, tmp_path):
    meta = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    baseline = json.loads(meta["awc.contribution_baseline"])
    baseline["label_free"]["shares"] = [0.5, 0.5, 0.5, float("nan")]
    bad = _edited(model_path, tmp_path / "b.onnx", contribution_baseline=json.dumps(baseline))
    with pytest.raises(ModelError, match=r"label_free\.shares must be 4 finite numbers"):
        OnnxPoseModel.load(bad, provider="cpu")
    broken = _edited(model_path, tmp_path / "j.onnx", units="{not json")
    with pytest.raises(ModelError, match=r"awc\.units is not valid JSON"):
        OnnxPoseModel.load(broken, provider="cpu")
    wrong_type = _edited(model_path, tmp_path / "t.onnx", units="[1, 2]")
    with pytest.raises(ModelError, match=r"awc\.units must be a JSON object"):
        OnnxPoseModel.load(wrong_type, provider="cpu")


# -- providers ------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_require_gpu_fails_fast_without_cuda(tmp_path):
    t0 = time.perf_counter()
    # Fails before touching the file: the GPU check names the problem, not the missing file.
    with pytest.raises(ModelError, match=r"GPU is required .*no CUDAExecutionProvider.*awc-pose\[gpu\]"):
        OnnxPoseModel.load(tmp_path / "not-read.onnx", provider="cuda", require_gpu=True)
    with pytest.raises(ModelError, match="GPU is required"):
        OnnxPoseModel.load(tmp_path / "not-read.onnx", provider="auto", require_gpu=True)
    assert time.perf_counter() - t0 < 1.0


def test_provider_really_used_is_reported(model_path, model):
    assert model.provider == CPU_PROVIDER and model.requested_provider == "cpu" and not model.gpu_fallback
    auto = OnnxPoseModel.load(model_path, provider="auto", intra_op_threads=1)
    assert auto.provider == (CUDA_PROVIDER if HAS_CUDA else CPU_PROVIDER)
    if not HAS_CUDA:
        asked = OnnxPoseModel.load(model_path, provider="cuda", intra_op_threads=1)
        assert asked.provider == CPU_PROVIDER and asked.requested_provider == "cuda" and asked.gpu_fallback


def test_choose_providers():
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", False, both) == both
    assert choose_providers("cuda", True, both) == both
    assert choose_providers("cpu", False, both) == [CPU_PROVIDER]
    assert choose_providers("auto", False, [CPU_PROVIDER]) == [CPU_PROVIDER]
    assert choose_providers("cuda", False, [CPU_PROVIDER]) == [CPU_PROVIDER]
    with pytest.raises(ModelError, match="contradicts"):
        choose_providers("cpu", True, both)
    with pytest.raises(ModelError, match="provider must be one of"):
        choose_providers("tpu", False, both)


# -- running --------------------------------------------------------------------------------------
def test_empty_inputs_have_the_model_shapes_and_run(model):
    x = model.empty_inputs(batch=3)
    assert list(x) == list(schema.MODEL_INPUTS)
    assert x["lidar_mask"].dtype == bool and x["rgb"].dtype == np.float32
    assert x["rgb"].shape == (3, model.metadata.rgb_window, 17, 2)
    assert x["lidar"].shape == (3, model.metadata.lidar_cap, 3)
    pose, coalitions = model.run(x)
    assert pose.shape == (3, 17, 3) and coalitions.shape == (3, 16, 17, 3)
    assert np.isfinite(coalitions).all()


@pytest.mark.parametrize("edit, message", [
    (lambda x: x.pop("wifi"), r"missing \['wifi'\]"),
    (lambda x: x.update(extra=np.zeros(1)), r"unexpected \['extra'\]"),
    (lambda x: x.update(rgb=x["rgb"].astype(np.float64)), r"'rgb' must be a numpy float32 array, got float64"),
    (lambda x: x.update(lidar_mask=x["lidar_mask"].astype(np.float32)), r"'lidar_mask' must be a numpy bool"),
    (lambda x: x.update(lidar=x["lidar"][:, :10]), r"'lidar' must have shape \[B, 48, 3\].*got \[2, 10, 3\]"),
    (lambda x: x.update(presence=x["presence"][:1]), r"share the batch size"),
    (lambda x: x["wifi"].__setitem__((0, 0, 0, 0), np.nan), r"'wifi' holds 1 NaN/inf"),
    (lambda x: x["presence"].__setitem__((0, 0), 0.5), r"presence must hold only 0 and 1"),
])
def test_bad_inputs_are_refused_with_clear_messages(model, edit, message):
    x = model.empty_inputs(batch=2)
    edit(x)
    with pytest.raises(ModelError, match=message):
        model.run(x)


def test_metadata_parsing_is_independent_of_onnxruntime(model_path):
    props = {p.key: p.value for p in onnx.load(str(model_path)).metadata_props}
    meta = ModelMetadata.from_props(props, source="x")
    assert meta.fusion == "concat" and meta.baseline is not None
    assert meta.baseline.shares.shape == (4,)


# -- runtime info ---------------------------------------------------------------------------------
def test_runtime_info_prints_metadata_baseline_and_provider(model_path, capsys):
    assert runtime_cli.main(["info", "--model", str(model_path), "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fusion           concat" in out and "schema version   1" in out
    assert "baseline         8 windows of 30 frames (240 frames)" in out
    for m in schema.MODALITIES:
        assert f"\n                 {m} " in out
    assert "used CPUExecutionProvider" in out
    assert runtime_cli.main(["info", "--model", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["provider"]["used"] == CPU_PROVIDER
    assert sum(info["contribution_baseline"]["label_free"]["shares"]) == pytest.approx(1.0)


def test_runtime_info_fails_cleanly_on_a_bad_file(tmp_path, caplog):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    assert runtime_cli.main(["info", "--model", str(bad)]) == 2
    assert "cannot load" in caplog.text


# -- the same preprocessing in training and serving -----------------------------------------------
def _write_sequence(root, csi_path, frames: int, rng) -> None:
    """A hand-made MM-Fi sequence E01/S01/A02 with the awkward cases: a missing keypoint file,
    more LiDAR points than the cap, a 0-byte (empty) mmWave frame, -inf in the real CSI frame."""
    import scipy.io

    from sensors import mmfi

    seq = root / "E01" / "S01" / "A02"
    for m in schema.MODALITIES:
        (seq / schema.MMFI_FOLDERS[m]).mkdir(parents=True)
    np.save(seq / schema.MMFI_GT_FILE, rng.normal(0, 0.3, (schema.FRAMES_PER_SEQUENCE, 17, 3)).astype(np.float32))
    real = mmfi.read_csi(csi_path)
    for t in range(frames):
        if t != 3:
            kpts = rng.uniform([0, 0], [640, 480], size=(17, 2)).astype(np.float32)
            np.save(mmfi.frame_path(seq, "rgb", t), kpts)
        n_lidar = 20 if t == 5 else int(rng.integers(60, 400))
        # A body-sized cloud in front of the sensor (what the LiDAR crop keeps).
        rng.normal((3.0, 0.0, 0.0), (0.15, 0.15, 0.4), (n_lidar, 3)).astype("<f8").tofile(mmfi.frame_path(seq, "lidar", t))
        n_radar = 0 if t == 2 else int(rng.integers(1, 25))
        rng.normal(0, 2.0, (n_radar, 5)).astype("<f8").tofile(mmfi.frame_path(seq, "mmwave", t))
        amp = real.amp + rng.normal(0, 0.5, real.amp.shape)
        phase = real.phase + rng.normal(0, 0.05, real.phase.shape)
        if t == 4:
            amp[1, 7, 2] = -np.inf
            phase[0, 3, 9] = np.nan
        scipy.io.savemat(mmfi.frame_path(seq, "wifi", t), {"CSIamp": amp, "CSIphase": phase}, format="5")


def _wire_sample(arrays):
    from runtime.sync import SyncedSample

    return SyncedSample(arrays=arrays, t_ns=0, skew_s=0.0, src="test", seq=0)


def test_dataset_item_equals_runtime_inputs_from_the_same_raw_frames(model, mmfi_sample_dir, tmp_path):
    """sensors.mmfi (training) and runtime.features (serving) turn the same raw frame into the same
    model inputs: the runtime side gets what the wire carries (float32 arrays, CSI as packets)."""
    from runtime.features import FeatureBuilder
    from runtime.sync import TickInputs
    from sensors import mmfi

    frames = 12
    _write_sequence(tmp_path, mmfi_sample_dir / "frame001.mat", frames, np.random.default_rng(0))
    meta = model.metadata
    ds = mmfi.MMFiDataset(tmp_path, protocol="P1", split="S1", subset="all", contract=meta)
    builder = FeatureBuilder.from_metadata(meta)
    seq = ds.keys[0].path(tmp_path)
    for t in range(frames):
        raw = {m: mmfi.read_frame(seq, m, t) for m in schema.MODALITIES}
        samples = {
            "rgb": None if raw["rgb"] is None else _wire_sample({"kpts": raw["rgb"].astype("<f4")}),
            "lidar": None if raw["lidar"] is None else _wire_sample({"points": raw["lidar"].astype("<f4")}),
            # A radar with no detections may send an empty cloud: the same as the 0-byte file.
            "mmwave": _wire_sample({"points": (np.zeros((0, 5)) if raw["mmwave"] is None
                                               else raw["mmwave"]).astype("<f4")}),
            "wifi": None if raw["wifi"] is None else _wire_sample(
                {"amp": np.moveaxis(raw["wifi"].amp, -1, 0).astype("<f4"),
                 "phase": np.moveaxis(raw["wifi"].phase, -1, 0).astype("<f4")}),
        }
        tick = TickInputs(tick_ns=t * schema.FRAME_PERIOD_NS, index=t, samples=samples,
                          wifi_packets=schema.WIFI_PACKETS)
        served = builder.build(tick).inputs
        item = ds[t]
        for name in schema.MODEL_INPUTS:
            assert served[name].shape == (1, *item[name].shape), name
            assert served[name].dtype == item[name].dtype, name
            # Bit for bit, CSI included (the reader repairs float64 CSI, the wire carries float32;
            # both end in the same float32 values here).
            np.testing.assert_array_equal(served[name][0], item[name], err_msg=f"{name}, frame {t}")
    # The awkward frames really were awkward.
    assert ds[2]["presence"][schema.MODALITY_INDEX["mmwave"]] == 0.0
    assert ds[3]["presence"][schema.MODALITY_INDEX["rgb"]] == 0.0
    assert ds[5]["lidar_mask"].sum() == 20
