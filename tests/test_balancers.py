"""The balancing hooks on a toy problem: AWC groups from the step scores, and each baseline moves
the encoders' updates the way its paper says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from training_fakes import fake_arrays, fake_split

from sensors.core import schema
from training import balance_math, balance_methods, config
from training.data import from_arrays
from training.losses import mpjpe_loss
from training.model import build_model

torch.set_num_threads(1)
RGB, LIDAR, MMWAVE, WIFI = (schema.MODALITY_INDEX[m] for m in schema.MODALITIES)


def _setup(method: str, **balance_overrides):
    cfg = config.resolve("tiny", flags={"balance": {"method": method, **balance_overrides}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    train = fake_split(64, cfg.model)
    model.set_mean_pose(train.tensors["joints"].mean(dim=0))
    ctx = balance_methods.Context(model, cfg, train, torch.device("cpu"))
    return model, ctx, train


def _grads(model, ctx, bal, batch, phi=None, v=None):
    """Encoder gradients {modality: flat tensor} of one step with the balancer's hooks."""
    model.zero_grad(set_to_none=True)
    feats = model.encode(*[batch[k] for k in schema.MODEL_INPUTS[:-1]])
    task = mpjpe_loss(model.fuse(feats, batch["presence"]), batch["joints"])
    if phi is not None:
        bal.observe(phi, v if v is not None else np.zeros(schema.N_COALITIONS))
    bal.loss(task, feats, batch).backward()
    bal.after_backward()
    return {m: torch.cat([p.grad.reshape(-1) for _, p in params if p.grad is not None]).clone()
            for m, params in model.encoder_parameters().items()}


def _coalitions(single: list[float]) -> np.ndarray:
    v = np.zeros(schema.N_COALITIONS)
    for i, s in enumerate(single):
        v[1 << i] = s
    return v


# ----------------------------------------------------------------------------------------------
# AWC grouping (Algorithm 1)
# ----------------------------------------------------------------------------------------------
def test_exact_two_means_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        phi = rng.gamma(1.0, 5.0, size=4)
        labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(phi.reshape(-1, 1))
        high = labels[int(np.argmax(phi))]
        want = ["S" if lab == high else "I" for lab in labels]
        assert balance_math.kmeans_groups(phi) == want, phi


def test_awc_groups_follow_the_running_mean_of_step_scores():
    model, ctx, train = _setup("awc", window=2)
    bal = balance_methods.make(ctx)
    rec = bal.epoch_start(0)
    assert bal.active and set(rec["groups_theta0"].values()) <= {"S", "I"}
    bal.observe(np.array([1.0, 9.0, 1.0, 0.5]), np.zeros(16))  # LiDAR leads on the first batch
    assert bal.groups == ["I", "S", "I", "I"]
    assert bal.alphas["lidar"] == ctx.cfg.balance.awc.alpha_s and bal.alphas["rgb"] == ctx.cfg.balance.awc.alpha_i
    for _ in range(3):  # then RGB leads: the running mean moves and the groups with it
        bal.observe(np.array([20.0, 2.0, 1.0, 0.5]), np.zeros(16))
    assert bal.groups == ["S", "I", "I", "I"]
    end = bal.epoch_end()
    # running means: [1, 9, ..] lidar S; [10.5, 5.5, ..] both S; [13.7, 4.3, ..] and on: rgb alone
    assert end["group_changes"] >= 2 and end["groups"]["rgb"] == "S"
    assert end["superior_fraction"]["lidar"] == pytest.approx(0.5) and end["superior_fraction"]["rgb"] == 0.75
    assert not bal.epoch_start(2) and not bal.active  # outside the window: no constraint
    b = train.batch(torch.arange(8))
    feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
    task = mpjpe_loss(model.fuse(feats, b["presence"]), b["joints"])
    assert bal.loss(task, feats, b) is task


def test_theta0_grouping_ignores_the_step_scores():
    _, ctx, _ = _setup("awc", group_by="theta0")
    bal = balance_methods.make(ctx)
    bal.epoch_start(0)
    before = list(bal.groups)
    for _ in range(3):
        bal.observe(np.array([0.0, 0.0, 0.0, 30.0]) if before[WIFI] != "S" else np.array([30.0, 0, 0, 0]),
                    np.zeros(16))
    assert bal.groups == before


# ----------------------------------------------------------------------------------------------
# Baselines: direction of the encoder updates
# ----------------------------------------------------------------------------------------------
def test_ogm_ge_slows_only_the_dominant_modality():
    model, ctx, train = _setup("ogm-ge", ogm_noise=False, ogm_alpha=0.5)
    b = train.batch(torch.arange(32))
    plain = _grads(model, ctx, balance_methods.Balancer(ctx), b)
    bal = balance_methods.make(ctx)
    bal.epoch_start(0)
    got = _grads(model, ctx, bal, b, np.zeros(4), _coalitions([30.0, 10.0, 10.0, 10.0]))
    k = 1 - np.tanh(0.5 * 2.0)  # rho = 30 / mean(10, 10, 10) = 3
    assert float(got["rgb"].norm()) == pytest.approx(float(_weight_scaled_norm(model, plain["rgb"], "rgb", k)),
                                                     rel=1e-5)
    assert float(got["rgb"].norm()) < float(plain["rgb"].norm())
    for m in ("lidar", "mmwave", "wifi"):
        torch.testing.assert_close(got[m], plain[m])


def _weight_scaled_norm(model, flat: torch.Tensor, modality: str, k: float) -> torch.Tensor:
    """Norm of ``flat`` (an encoder's gradient) with its weight tensors (ndim >= 2) scaled by k."""
    parts, start = [], 0
    for _, p in model.encoder_parameters()[modality]:
        n = p.numel()
        parts.append(flat[start:start + n] * (k if p.dim() >= 2 else 1.0))
        start += n
    return torch.cat(parts).norm()


def test_ogm_ge_window_and_noise():
    model, ctx, train = _setup("ogm-ge", ogm_window=1)
    bal = balance_methods.make(ctx)
    bal.epoch_start(0)
    b = train.batch(torch.arange(32))
    g1 = _grads(model, ctx, bal, b, np.zeros(4), _coalitions([10.0, 10.0, 10.0, 10.0]))  # no one dominates
    plain = _grads(model, ctx, balance_methods.Balancer(ctx), b)
    assert not torch.allclose(g1["wifi"], plain["wifi"])  # the GE noise reaches every encoder
    bal.epoch_start(1)
    assert not bal.active
    torch.testing.assert_close(_grads(model, ctx, bal, b, np.zeros(4), _coalitions([40.0, 1, 1, 1])), plain)


def test_agm_speeds_up_the_weak_and_slows_the_strong():
    model, ctx, train = _setup("agm", agm_alpha=1.0, agm_momentum=0.0)
    b = train.batch(torch.arange(32))
    plain = _grads(model, ctx, balance_methods.Balancer(ctx), b)
    bal = balance_methods.make(ctx)
    bal.epoch_start(0)
    got = _grads(model, ctx, bal, b, np.array([30.0, 10.0, 5.0, 5.0]))
    ratio = {m: float(got[m].norm() / plain[m].norm()) for m in got}
    assert ratio["rgb"] < 1.0 < ratio["mmwave"] and ratio["wifi"] > 1.0
    assert ratio["rgb"] < ratio["lidar"] < ratio["mmwave"]
    for m in got:  # a pure rescaling: same direction
        cos = torch.nn.functional.cosine_similarity(got[m], plain[m], dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)


def test_gblend_weights_favour_the_branch_that_generalises():
    prev_val, prev_train = np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0])
    val = np.array([0.8, 0.95, 1.0])  # branch 0 generalised most, branch 2 not at all
    train = np.array([0.7, 0.5, 0.6])  # branch 1 overfits a lot
    w = balance_math.gblend_weights(prev_val, prev_train, val, train)
    assert w.sum() == pytest.approx(1.0) and w[0] > w[1] > w[2] == 0.0
    np.testing.assert_allclose(balance_math.gblend_weights(prev_val, prev_train, prev_val, prev_train), 1 / 3)


def test_gblending_unimodal_branch_trains_its_encoder():
    model, ctx, train = _setup("g-blending", gb_holdout=16)
    bal = balance_methods.make(ctx)
    kept = bal.split_training_set(train)
    assert len(kept) == len(train) - 16 and len(bal.holdout) == 16
    rec = bal.epoch_start(0)
    assert set(rec["gblend_weights"]) == {"fused", *schema.MODALITIES}
    bal.w = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # all weight on the WiFi head
    b = kept.batch(torch.arange(32))
    got = _grads(model, ctx, bal, b)
    for m in ("rgb", "lidar", "mmwave"):
        assert float(got[m].abs().sum()) == 0.0  # the fused loss has weight 0: only WiFi learns
    # the WiFi encoder's update (-grad) lowers the WiFi head's own loss
    wifi_params = [p for _, p in model.encoder_parameters()["wifi"]]

    def wifi_loss():
        feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
        pose = model.mean_pose + bal.heads["wifi"](feats["wifi"]).reshape(-1, schema.N_JOINTS, 3)
        return float(mpjpe_loss(pose, b["joints"]).detach())

    before = wifi_loss()
    with torch.no_grad():
        start = 0
        for p in wifi_params:
            p -= 1e-2 * got["wifi"][start:start + p.numel()].reshape(p.shape)
            start += p.numel()
    assert wifi_loss() < before
    # the uni-modal heads are trained too (they are extra parameters of the optimiser)
    assert len(bal.extra_parameters()) > 0 and all(p.grad is not None for p in bal.extra_parameters()[:2])


def test_modality_level_resampling_trains_only_the_low_contributor_more():
    model, ctx, train = _setup("modality-level", rs_gamma=10.0)
    b = train.batch(torch.arange(32))
    plain = _grads(model, ctx, balance_methods.Balancer(ctx), b)
    bal = balance_methods.make(ctx)
    rec = bal.epoch_start(0)
    low = schema.MODALITIES[bal.low]
    assert rec["resample"]["modality"] == low and bal.p == 1.0  # gamma 10: the whole batch is re-fed
    got = _grads(model, ctx, bal, b)
    for m in schema.MODALITIES:
        if m == low:
            assert not torch.allclose(got[m], plain[m])
        else:  # the re-fed frames carry only the low modality: other encoders get nothing extra
            torch.testing.assert_close(got[m], plain[m])
    low_i, p = balance_math.resample_plan(np.array([30.0, 10.0, 2.0, 1.0]), schema.MODALITIES, 1.0)
    assert low_i == WIFI and p == pytest.approx(29.0 / 43.0)
    assert balance_math.resample_plan(np.array([5.0, 5.0, 5.0, 5.0]), schema.MODALITIES, 1.0)[1] == 0.0


def test_gblending_holds_out_whole_sequences():
    cfg = config.resolve("tiny")
    arrays = fake_arrays(960, cfg.model)
    arrays["subject"] = np.array([f"S{i // 96 + 1:02d}" for i in range(960)])  # 10 subjects x 3 actions, 32 frames each
    train = from_arrays(arrays, cfg.model.modalities)
    hold, kept = balance_methods.holdout_sequences(train, frames=48)
    seq = np.char.add(arrays["subject"], arrays["action"])
    assert len(hold) == 48 and not set(seq[hold]) & set(seq[kept])  # no held-out recording is trained on
    assert len(set(seq[hold])) == 3 and len(hold) + len(kept) < 960  # ceil(48 / 16) sequences leave training
    assert int(np.isin(seq, list(set(seq[hold]))).sum()) + len(kept) == 960  # kept = every other recording
    few, rest = balance_methods.holdout_sequences(fake_split(64, cfg.model), frames=16)  # 3 sequences: frames
    assert len(few) == 16 and len(rest) == 48


def test_gblending_reestimates_once_per_super_epoch():
    _, ctx, train = _setup("g-blending", gb_holdout=16, gb_super_epoch=2)
    bal = balance_methods.make(ctx)
    bal.split_training_set(train)
    assert "gblend_holdout_loss" in bal.epoch_start(0)
    bal.w = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    assert "gblend_holdout_loss" not in bal.epoch_start(1) and bal.w[0] == 0.5  # inside the super-epoch
    rec = bal.epoch_start(2)  # end of the super-epoch: new estimate from the held-out losses
    assert "gblend_holdout_loss" in rec and sum(rec["gblend_weights"].values()) == pytest.approx(1.0)


def test_complete_frame_selection_drops_frames_with_an_absent_modality():
    from training.data import complete_frames

    cfg = config.resolve("tiny")
    split = fake_split(30, cfg.model)  # every 7th frame has no mmWave
    kept = complete_frames(split, schema.MODALITIES)
    assert len(kept) == 30 - len(range(0, 30, 7)) and bool((kept.tensors["presence"] > 0).all())
    assert len(complete_frames(split, ("rgb", "wifi"))) == 30  # mmWave not enabled: nothing dropped


def test_one_registry_of_methods_with_a_config_section_each():
    assert tuple(balance_methods.METHODS) == config.BALANCES == tuple(config.METHOD_SECTIONS)
    sections = {f.name for f in __import__("dataclasses").fields(config.BalanceConfig)}
    assert {s for s in config.METHOD_SECTIONS.values() if s} <= sections
    # a flat key of the earlier layout (saved configs, old YAML, --set) lands in its method's section
    cfg = config.resolve("tiny", overrides=["balance.rs_gamma=0.5", "balance.fisher_samples=8", "balance.ogm_window=3"])
    assert (cfg.balance.modality_level.gamma, cfg.balance.ogm_ge.window) == (0.5, 3)
    assert cfg.balance.awc.fisher_samples == cfg.balance.modality_level.samples == 8
    saved = config.Config().to_dict()
    saved["balance"] = {"method": "awc", "window": 3, "alpha_s": 1.0, "alpha_i": 2.0, "gb_holdout": 64}
    back = config.from_dict(saved)
    assert (back.balance.awc.alpha_s, back.balance.awc.alpha_i, back.balance.g_blending.holdout) == (1.0, 2.0, 64)
