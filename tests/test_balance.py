"""Shapley contributions, Pearson profit, diagonal Fisher, AWC penalty, K-Means groups, OGM-GE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_fakes import fake_split

from sensors.core import posemath, schema
from training import balance_math, config
from training.fisher import diagonal_fisher, encoder_names, fisher_and_coalitions
from training.losses import mpjpe_loss
from training.model import build_model
from training.shapley import batch_shapley, coalition_masks, pearson_profit

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Pearson profit
# ----------------------------------------------------------------------------------------------
def test_torch_pearson_profit_equals_posemath():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20, 17, 3))
    for pred in (rng.normal(size=(20, 17, 3)), t + rng.normal(scale=0.3, size=t.shape), -2 * t + 1):
        got = float(pearson_profit(torch.from_numpy(pred), torch.from_numpy(t)))
        assert got == pytest.approx(posemath.pearson_profit(pred, t), abs=1e-9)
    # Batched leading dims give one profit per entry.
    stack = np.stack([t, -t, np.zeros_like(t)])
    np.testing.assert_allclose(pearson_profit(torch.from_numpy(stack), torch.from_numpy(t)).numpy(),
                               [51.0, -51.0, 0.0], atol=1e-9)


def test_pearson_edge_cases_are_zero_not_nan():
    t = torch.randn(8, 17, 3)
    const = torch.ones(8, 17, 3) * 3.0
    assert float(pearson_profit(const, t)) == 0.0
    assert float(pearson_profit(t, const)) == 0.0
    assert float(pearson_profit(t[:1], t[:1])) == 0.0  # one frame: no correlation
    almost = const + 1e-12 * torch.randn(8, 17, 3, dtype=torch.float64)
    assert float(pearson_profit(almost, t)) == 0.0
    partial = t.clone()
    partial[:, 0, 0] = 1.0  # one coordinate constant, 50 perfectly correlated
    assert float(pearson_profit(partial, t)) == pytest.approx(50.0)


# ----------------------------------------------------------------------------------------------
# Shapley
# ----------------------------------------------------------------------------------------------
class EitherGame(torch.nn.Module):
    """A fusion head whose coalition predicts the target exactly when it holds rgb or lidar and a
    constant otherwise: v(S) = 51 * [rgb in S or lidar in S]. Closed form: phi = (25.5, 25.5, 0, 0)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def fuse_coalitions(self, feats, masks):
        on = torch.maximum(masks[..., 0], masks[..., 1])  # [B, C]
        return self.target.unsqueeze(1) * on[..., None, None]


def test_shapley_exact_on_closed_form_game():
    target = torch.randn(16, 17, 3)
    presence = torch.ones(16, 4)
    phi, v = batch_shapley(EitherGame(target), {}, presence, target)
    expected_v = [51.0 * bool(c & 0b11) for c in range(schema.N_COALITIONS)]
    np.testing.assert_allclose(v, expected_v, atol=1e-9)
    np.testing.assert_allclose(phi, [25.5, 25.5, 0.0, 0.0], atol=1e-9)
    # An absent modality (per-sample presence) is never in a coalition: rgb absent everywhere.
    presence[:, 0] = 0.0
    phi, _ = batch_shapley(EitherGame(target), {}, presence, target)
    np.testing.assert_allclose(phi, [0.0, 51.0, 0.0, 0.0], atol=1e-9)


def test_shapley_efficiency_on_real_model():
    cfg = config.resolve("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    b = fake_split(24, cfg.model).tensors
    with torch.no_grad():
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
    phi, v = batch_shapley(model, feats, b["presence"], b["joints"])
    assert v[0] == 0.0
    assert phi.sum() == pytest.approx(v[15] - v[0], abs=1e-9)
    np.testing.assert_allclose(phi, posemath.shapley_values(v))
    # v agrees with the numpy profit on the same coalition predictions.
    with torch.no_grad():
        poses = model.fuse_coalitions(feats, coalition_masks(b["presence"])).numpy()
    np.testing.assert_allclose(v, posemath.coalition_values(poses, b["joints"].numpy()), atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Fisher
# ----------------------------------------------------------------------------------------------
def _tiny_model_and_data(n: int = 6):
    cfg = config.resolve("tiny", flags={"model": {"modalities": ["rgb", "wifi"]}})
    torch.manual_seed(0)
    return build_model(cfg.model), fake_split(n, cfg.model)


def _manual_grads(model, data, idx):
    names = [n for group in encoder_names(model).values() for n in group]
    params = dict(model.named_parameters())
    out = []
    for i in idx:
        b = data.batch(torch.as_tensor(i).reshape(-1))
        loss = mpjpe_loss(model(*[b[k] for k in schema.MODEL_INPUTS]), b["joints"])
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        out.append({n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads, strict=True)})
    return out


def test_per_sample_fisher_equals_mean_squared_per_frame_gradient():
    model, data = _tiny_model_and_data()
    idx = torch.arange(6)
    fisher = diagonal_fisher(model, data, idx, mode="per_sample", chunk=4)
    grads = _manual_grads(model, data, idx.tolist())
    for n, f in fisher.items():
        expected = torch.stack([g[n].pow(2) for g in grads]).mean(dim=0)
        torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-10)
    assert set(fisher) == {n for g in encoder_names(model).values() for n in g}
    assert all(not n.startswith("head") for n in fisher)


def test_per_batch_fisher_is_mean_of_squared_minibatch_gradients():
    model, data = _tiny_model_and_data()
    fisher = diagonal_fisher(model, data, torch.arange(6), mode="per_batch", chunk=3)
    params = dict(model.named_parameters())
    expected = {n: torch.zeros_like(p) for n, p in params.items() if n in fisher}
    for part in (torch.arange(3), torch.arange(3, 6)):
        b = data.batch(part)
        loss = mpjpe_loss(model(*[b[k] for k in schema.MODEL_INPUTS]), b["joints"])
        for n, g in zip(expected, torch.autograd.grad(loss, [params[n] for n in expected]), strict=True):
            expected[n] += g.pow(2) / 2
    for n in fisher:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-10)


def test_fisher_of_a_feature_bias_matches_hand_computation():
    """For the final LayerNorm bias of the RGB encoder the per-frame gradient is d loss / d feature,
    the same as the gradient w.r.t. that feature; check F = mean(g^2) by hand for that tensor."""
    model, data = _tiny_model_and_data(n=4)
    fisher = diagonal_fisher(model, data, torch.arange(4), mode="per_sample", chunk=4)
    bias = model.encoders["rgb"].norm.bias
    hand = []
    for i in range(4):
        b = data.batch(torch.tensor([i]))
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        f = feats["rgb"]
        loss = mpjpe_loss(model.fuse(feats, b["presence"]), b["joints"])
        (g,) = torch.autograd.grad(loss, f)
        hand.append(g[0].pow(2))
    torch.testing.assert_close(fisher["encoders.rgb.norm.bias"], torch.stack(hand).mean(0), rtol=1e-4, atol=1e-12)
    assert bias.shape == fisher["encoders.rgb.norm.bias"].shape


# ----------------------------------------------------------------------------------------------
# AWC penalty and groups
# ----------------------------------------------------------------------------------------------
def test_awc_loss_zero_at_anchor_and_pulls_back_with_group_weight():
    model, _ = _tiny_model_and_data()
    weights = {n: torch.rand_like(p) + 0.5 for n, p in model.named_parameters() if n.startswith("encoders.")}
    anchors = {n: p.detach().clone() for n, p in model.named_parameters() if n in weights}
    alphas = {"rgb": 20.0, "lidar": 0.0, "mmwave": 0.0, "wifi": 10.0}
    assert float(balance_math.awc_loss(model, anchors, weights, alphas).detach()) == 0.0
    deltas = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in weights:
                deltas[n] = torch.randn_like(p) * 0.1
                p.add_(deltas[n])
    loss = balance_math.awc_loss(model, anchors, weights, alphas)
    expected = sum(alphas[n.split(".")[1]] * (weights[n] * deltas[n].pow(2)).sum() / 2 for n in weights)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    for n, p in model.named_parameters():
        if n in weights:
            a = alphas[n.split(".")[1]]
            # gradient = alpha_group * F * (theta - theta0): descent moves theta toward theta0
            torch.testing.assert_close(p.grad, a * weights[n] * deltas[n], rtol=1e-4, atol=1e-7)
            assert float((p.grad * deltas[n]).sum()) > 0


def test_kmeans_groups():
    assert balance_math.kmeans_groups(np.array([30.0, 28.0, 5.0, 3.0])) == ["S", "S", "I", "I"]
    assert balance_math.kmeans_groups(np.array([2.0, 30.0, 1.0, 3.0])) == ["I", "S", "I", "I"]
    assert balance_math.kmeans_groups(np.array([4.0, 4.0, 4.0, 4.0])) == ["S", "S", "S", "S"]
    assert balance_math.kmeans_groups(np.array([9.0, 1.0, 0.0, 0.0]), ("rgb", "lidar")) == ["S", "I", "-", "-"]
    assert balance_math.kmeans_groups(np.array([9.0, 0.0, 0.0, 0.0]), ("rgb",)) == ["S", "-", "-", "-"]
    cfg = config.BalanceConfig(awc=config.AwcConfig(alpha_s=7.0, alpha_i=3.0))
    assert balance_math.group_alphas(["S", "I", "-", "S"], cfg) == {"rgb": 7.0, "lidar": 3.0, "mmwave": 0.0, "wifi": 7.0}


def test_uniform_weights_are_mean_fisher_per_encoder():
    model, data = _tiny_model_and_data()
    fisher = diagonal_fisher(model, data, torch.arange(6), chunk=6)
    uni = balance_math.uniform_weights(fisher, model)
    for names in encoder_names(model).values():
        mean = torch.cat([fisher[n].reshape(-1) for n in names]).mean()
        for n in names:
            torch.testing.assert_close(uni[n], torch.full_like(fisher[n], float(mean)))


def test_ogm_coefficients_slow_down_only_the_dominant_modality():
    k = balance_math.ogm_coefficients(np.array([40.0, 10.0, 10.0, 10.0]), schema.MODALITIES, alpha=0.5)
    assert k[0] == pytest.approx(1 - np.tanh(0.5 * 3.0))
    np.testing.assert_allclose(k[1:], 1.0)
    np.testing.assert_allclose(balance_math.ogm_coefficients(np.array([40.0, 1, 1, 1]), ("rgb",), 0.5), 1.0)


def test_modulate_gradients_scales_and_adds_noise_identically_for_one_seed():
    model, _ = _tiny_model_and_data()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    coeffs = np.array([0.25, 1.0, 1.0, 1.0])
    balance_math.modulate_gradients(model, coeffs, noise=False, generator=torch.Generator().manual_seed(0))
    assert torch.all(model.encoders["rgb"].expand.weight.grad == 0.25)
    assert torch.all(model.encoders["wifi"].out[0].weight.grad == 1.0)
    assert torch.all(model.head[0].weight.grad == 1.0)  # the head is not modulated
    grads = []
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p) if p.grad is None else p.grad.clone()
        w = model.encoders["rgb"].expand.weight
        w.grad = torch.ones_like(w)
        balance_math.modulate_gradients(model, coeffs, noise=True, generator=torch.Generator().manual_seed(3))
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert not torch.all(grads[0] == 0.25)


@pytest.mark.parametrize("mode", ["per_sample", "per_batch"])
def test_fisher_pass_also_gives_the_theta0_coalition_predictions(mode):
    model, data = _tiny_model_and_data()
    fisher, coal = fisher_and_coalitions(model, data, torch.arange(6), mode=mode, chunk=4)
    b = data.batch(torch.arange(6))
    with torch.no_grad():
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        expected = model.fuse_coalitions(feats, coalition_masks(b["presence"]))
    torch.testing.assert_close(coal, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fisher["encoders.rgb.norm.bias"],
                               diagonal_fisher(model, data, torch.arange(6), mode=mode, chunk=4)["encoders.rgb.norm.bias"])
