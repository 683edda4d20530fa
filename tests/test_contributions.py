"""Live contributions: label-free profit, Shapley, shares, absent modalities, ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.contributions import ContributionConfig, ContributionTracker, effective_coalitions
from sensors.core import posemath, schema

ALL = np.ones(schema.N_MODALITIES, np.float32)


def _random_coalitions(rng, n_ticks):
    return rng.normal(size=(n_ticks, schema.N_COALITIONS, schema.N_JOINTS, 3)).astype(np.float32)


def test_label_free_profit_equals_posemath_on_a_known_window():
    rng = np.random.default_rng(0)
    preds = _random_coalitions(rng, 12)
    tracker = ContributionTracker(ContributionConfig(window_ticks=12))
    for p in preds:
        out = tracker.update(p, ALL)
    want = posemath.coalition_values(preds, preds[:, schema.FULL_COALITION])
    np.testing.assert_allclose(out.values, want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out.shapley, posemath.shapley_values(want), rtol=1e-6, atol=1e-9)
    # The full coalition agrees perfectly with itself: 51 coordinates of correlation 1.
    assert out.values[schema.FULL_COALITION] == pytest.approx(51.0)
    assert out.shares.sum() == pytest.approx(1.0)
    assert out.shares_gt is None


def test_sliding_window_keeps_only_the_last_n_ticks():
    rng = np.random.default_rng(1)
    preds = _random_coalitions(rng, 20)
    tracker = ContributionTracker(ContributionConfig(window_ticks=8))
    for p in preds:
        out = tracker.update(p, ALL)
    assert out.ticks == 8
    want = posemath.coalition_values(preds[-8:], preds[-8:, schema.FULL_COALITION])
    np.testing.assert_allclose(out.values, want, rtol=1e-6)


def test_identical_coalitions_give_equal_shares():
    rng = np.random.default_rng(2)
    tracker = ContributionTracker(ContributionConfig(window_ticks=10))
    for _ in range(10):
        one = rng.normal(size=(schema.N_JOINTS, 3))
        preds = np.repeat(one[None], schema.N_COALITIONS, axis=0)
        out = tracker.update(preds, ALL)
    np.testing.assert_allclose(out.shares, np.full(4, 0.25), atol=1e-9)
    np.testing.assert_allclose(out.shapley, np.full(4, out.shapley[0]), atol=1e-9)


def test_absent_modality_gets_zero_share_even_if_the_model_predicts_something():
    rng = np.random.default_rng(3)
    presence = np.array([1, 1, 1, 0], np.float32)   # wifi absent
    tracker = ContributionTracker(ContributionConfig(window_ticks=10))
    for p in _random_coalitions(rng, 10):            # every coalition differs, wifi ones too
        out = tracker.update(p, presence)
    wifi = schema.MODALITY_INDEX["wifi"]
    assert out.shapley[wifi] == 0.0
    assert out.shares[wifi] == 0.0
    assert out.shares.sum() == pytest.approx(1.0)
    assert (out.shares[:3] > 0).any()


def test_effective_coalition_is_the_present_part():
    preds = np.arange(16, dtype=np.float32)[:, None, None] * np.ones((16, 17, 3), np.float32)
    eff = effective_coalitions(preds, [1, 0, 1, 0])   # present bitmask 0b0101 = 5
    assert [int(e[0, 0]) for e in eff] == [c & 5 for c in range(16)]


def test_ground_truth_profit_is_reported_beside_the_label_free_one():
    rng = np.random.default_rng(4)
    cfg = ContributionConfig(window_ticks=10, min_gt_ticks=5)
    tracker = ContributionTracker(cfg)
    gts, preds = [], []
    for i in range(10):
        gt = rng.normal(size=(schema.N_JOINTS, 3))
        p = rng.normal(size=(schema.N_COALITIONS, schema.N_JOINTS, 3)) * 0.1
        p[1::2] += gt        # every coalition with rgb (bit 0) follows the truth
        gts.append(gt if i % 2 == 0 else None)
        preds.append(p)
        out = tracker.update(p, ALL, gts[-1])
    assert out.shares_gt is not None
    idx = [i for i, g in enumerate(gts) if g is not None]
    want = posemath.coalition_values(np.stack(preds)[idx], np.stack([gts[i] for i in idx]))
    np.testing.assert_allclose(out.values_gt, want, rtol=1e-6)
    assert np.argmax(out.shares_gt) == schema.MODALITY_INDEX["rgb"]
    assert out.shares_gt[0] > 0.9


def test_gauge_values_are_smoothed_not_exact():
    rng = np.random.default_rng(5)
    tracker = ContributionTracker(ContributionConfig(window_ticks=5, ewma_alpha=0.5, min_gt_ticks=2))
    first = tracker.update(_random_coalitions(rng, 1)[0], ALL)
    np.testing.assert_allclose(first.smoothed_shares, first.shares)
    second = tracker.update(_random_coalitions(rng, 1)[0], ALL)
    np.testing.assert_allclose(second.smoothed_shares, 0.5 * first.shares + 0.5 * second.shares)


def test_config_rejects_a_window_too_short_for_pearson():
    with pytest.raises(ValueError, match="window_ticks"):
        ContributionConfig(window_ticks=1)
