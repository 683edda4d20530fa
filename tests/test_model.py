"""The fused pose model: shapes, presence masking, point padding, coalitions, ONNX export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from training_fakes import fake_split

from sensors.core import schema
from training import config
from training.model import build_model
from training.shapley import COALITION_MASKS

torch.set_num_threads(1)


def _model(fusion: str = "concat", **overrides):
    cfg = config.resolve("tiny", flags={"model": {"fusion": fusion, **overrides}})
    torch.manual_seed(0)
    return build_model(cfg.model).eval(), cfg


def _inputs(cfg, n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    return fake_split(n, cfg.model, seed).tensors


def _run(model, b) -> torch.Tensor:
    with torch.no_grad():
        return model(*[b[k] for k in schema.MODEL_INPUTS])


@pytest.mark.parametrize("fusion", config.FUSIONS)
def test_shapes_and_api(fusion):
    model, cfg = _model(fusion)
    b = _inputs(cfg)
    with torch.no_grad():
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        assert set(feats) == set(schema.MODALITIES)
        assert all(f.shape == (6, cfg.model.dim) for f in feats.values())
        pose = model.fuse(feats, b["presence"])
        assert pose.shape == (6, schema.N_JOINTS, 3)
        torch.testing.assert_close(_run(model, b), pose)
        # fuse_coalitions == fuse with each mask, for shared [C,4] and per-sample [B,C,4] masks.
        coal = model.fuse_coalitions(feats, COALITION_MASKS)
        assert coal.shape == (6, schema.N_COALITIONS, schema.N_JOINTS, 3)
        for c in (0, 5, 15):
            torch.testing.assert_close(coal[:, c], model.fuse(feats, COALITION_MASKS[c].expand(6, -1)))
        per_sample = COALITION_MASKS.unsqueeze(0) * b["presence"].unsqueeze(1)
        coal_b = model.fuse_coalitions(feats, per_sample)
        torch.testing.assert_close(coal_b[:, 15], pose)


@pytest.mark.parametrize("fusion", config.FUSIONS)
def test_absent_modality_input_cannot_change_output(fusion):
    model, cfg = _model(fusion)
    b = _inputs(cfg)
    for m in schema.MODALITIES:
        presence = b["presence"].clone()
        presence[:, schema.MODALITY_INDEX[m]] = 0.0
        changed = dict(b, presence=presence)
        scrambled = dict(changed)
        for key in (m, f"{m}_mask") if m in ("lidar", "mmwave") else (m,):
            t = changed[key]
            scrambled[key] = ~t if t.dtype == torch.bool else torch.randn_like(t) * 5.0
        torch.testing.assert_close(_run(model, changed), _run(model, scrambled), rtol=0, atol=0)
        # ... while a present modality's input does change it.
        if m != "mmwave":  # mmwave of some fake frames is absent anyway
            assert not torch.allclose(_run(model, b), _run(model, dict(b, **{m: scrambled[m]})))


def test_padding_points_do_not_change_output():
    model, cfg = _model()
    b = _inputs(cfg)
    garbage = dict(b)
    for m in ("lidar", "mmwave"):
        mask = b[f"{m}_mask"]
        noise = torch.randn_like(b[m]) * 10.0
        garbage[m] = torch.where(mask.unsqueeze(-1), b[m], noise)
        assert not torch.equal(garbage[m], b[m]) or not (~mask).any()
    torch.testing.assert_close(_run(model, b), _run(model, garbage), rtol=0, atol=1e-6)


def test_empty_clouds_give_finite_output():
    model, cfg = _model()
    b = dict(_inputs(cfg))
    for m in ("lidar", "mmwave"):
        b[f"{m}_mask"] = torch.zeros_like(b[f"{m}_mask"])
        b[m] = torch.zeros_like(b[m])
    assert torch.isfinite(_run(model, b)).all()


def test_disabled_modality_has_no_encoder_and_zero_feature():
    model, cfg = _model(modalities=["rgb", "lidar"])
    assert set(model.encoders) == {"rgb", "lidar"}
    b = _inputs(cfg)
    with torch.no_grad():
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
    assert torch.count_nonzero(feats["wifi"]) == 0 and torch.count_nonzero(feats["mmwave"]) == 0


def test_mean_pose_prior_is_the_output_of_a_zeroed_head():
    model, cfg = _model()
    prior = torch.arange(51, dtype=torch.float32).reshape(17, 3)
    model.set_mean_pose(prior)
    for p in model.head.parameters():
        torch.nn.init.zeros_(p)
    torch.testing.assert_close(_run(model, _inputs(cfg))[0], prior)


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_onnx_export_matches_torch(fusion):
    ort = pytest.importorskip("onnxruntime")
    model, cfg = _model(fusion)
    b = _inputs(cfg, n=3)
    args = tuple(b[k] for k in schema.MODEL_INPUTS)
    buf = io.BytesIO()
    torch.onnx.export(model, args, buf, input_names=list(schema.MODEL_INPUTS), output_names=["pose"], dynamo=False,
                      dynamic_axes={k: {0: "batch"} for k in schema.MODEL_INPUTS})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {k: v.numpy() for k, v in zip(schema.MODEL_INPUTS, args, strict=True)})[0]
    np.testing.assert_allclose(out, _run(model, b).numpy(), atol=1e-5)


class _Coalitions(torch.nn.Module):
    """pose and the 16 coalition poses, coalition c's mask = COALITION_MASKS[c] * presence."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.register_buffer("masks", COALITION_MASKS.clone())

    def forward(self, rgb, lidar, lidar_mask, mmwave, mmwave_mask, wifi, presence):
        feats = self.model.encode(rgb, lidar, lidar_mask, mmwave, mmwave_mask, wifi)
        masks = self.masks.unsqueeze(0) * presence.unsqueeze(1)  # [B, 16, 4]
        return self.model.fuse(feats, presence), self.model.fuse_coalitions(feats, masks)


@pytest.mark.parametrize("fusion", config.FUSIONS)
def test_onnx_export_of_coalition_head_matches_torch(fusion):
    ort = pytest.importorskip("onnxruntime")
    model, cfg = _model(fusion)
    wrapper = _Coalitions(model).eval()
    b = _inputs(cfg, n=3)
    args = tuple(b[k] for k in schema.MODEL_INPUTS)
    buf = io.BytesIO()
    torch.onnx.export(wrapper, args, buf, input_names=list(schema.MODEL_INPUTS), output_names=["pose", "coalition_poses"],
                      dynamo=False, dynamic_axes={k: {0: "batch"} for k in schema.MODEL_INPUTS})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    pose, coal = sess.run(None, {k: v.numpy() for k, v in zip(schema.MODEL_INPUTS, args, strict=True)})
    with torch.no_grad():
        ref_pose, ref_coal = wrapper(*args)
    np.testing.assert_allclose(pose, ref_pose.numpy(), atol=1e-5)
    np.testing.assert_allclose(coal, ref_coal.numpy(), atol=1e-5)
    np.testing.assert_allclose(coal[:, 15], pose, atol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 9, 10, 27])
def test_tcn_receptive_field_is_the_window_and_every_tap_trains(window):
    from training.model import TemporalConvEncoder, tcn_kernels

    kernels = tcn_kernels(window)
    assert int(np.prod(kernels)) == window
    cfg = config.resolve("tiny", flags={"model": {"rgb_window": window, "dim": 8}})
    torch.manual_seed(0)
    enc = TemporalConvEncoder(cfg.model)
    assert enc.receptive_field == window
    x = torch.randn(4, window, schema.N_KEYPOINTS, 2, requires_grad=True)
    enc(x).pow(2).sum().backward()
    convs = [enc.expand] + [blk.conv for blk in enc.blocks]
    assert [c.kernel_size[0] for c in convs] == list(kernels or (1,))
    for conv in convs:  # every temporal tap of every layer has a non-zero gradient
        per_tap = conv.weight.grad.abs().sum(dim=(0, 1))
        assert per_tap.shape[0] == conv.kernel_size[0] and bool((per_tap > 0).all()), per_tap
    # ... and every frame of the window, the oldest included, reaches the output.
    per_frame = x.grad.abs().sum(dim=(0, 2, 3))
    assert bool((per_frame > 0).all()), per_frame
