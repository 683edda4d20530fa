"""Shared torch-free math: MPJPE / PA-MPJPE, Pearson profit, exact Shapley values."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sensors.core import posemath, schema


def test_mpjpe_is_mean_euclidean_error_in_mm():
    gt = np.zeros((2, 17, 3))
    pred = gt.copy()
    pred[0, :, 0] = 0.003  # 3 mm on every joint
    pred[1, 0, :] = [0.0, 0.03, 0.04]  # 50 mm on one joint of 17
    np.testing.assert_allclose(posemath.mpjpe(pred, gt), [3.0, 50.0 / 17])


def test_pa_mpjpe_removes_similarity_transform_and_reflection():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(4, 17, 3))
    rot = Rotation.random(4, random_state=1).as_matrix()
    pred = 1.7 * np.einsum("fij,fkj->fki", rot, gt) + rng.normal(size=(4, 1, 3))
    np.testing.assert_allclose(posemath.pa_mpjpe(pred, gt), 0.0, atol=1e-6)
    assert posemath.mpjpe(pred, gt).min() > 100.0
    # A mirrored pose cannot be aligned by a proper rotation: the error stays.
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert posemath.pa_mpjpe(mirrored, gt).min() > 1.0


def test_pearson_profit_edge_cases():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(32, 17, 3))
    assert posemath.pearson_profit(t, t) == pytest.approx(51.0)
    assert posemath.pearson_profit(-t, t) == pytest.approx(-51.0)
    assert posemath.pearson_profit(2.0 * t + 5.0, t) == pytest.approx(51.0)
    const = np.ones_like(t)
    assert posemath.pearson_profit(const, t) == 0.0  # constant prediction: 0, not NaN
    assert posemath.pearson_profit(t[:1], t[:1]) == 0.0  # one sample: no correlation
    half = t.copy()
    half[:, :, 2] = 1.0  # z constant: 34 of 51 coordinates carry signal
    assert posemath.pearson_profit(half, t) == pytest.approx(34.0)


def _shapley_by_definition(v):
    n, players = 4, range(4)
    phi = np.zeros(4)
    for m in players:
        others = [p for p in players if p != m]
        for size in range(4):
            for s in itertools.combinations(others, size):
                idx = sum(1 << p for p in s)
                w = factorial(size) * factorial(n - size - 1) / factorial(n)
                phi[m] += w * (v[idx | (1 << m)] - v[idx])
    return phi


def test_shapley_matches_definition_and_is_efficient():
    rng = np.random.default_rng(3)
    v = rng.normal(size=16)
    v[0] = 0.0
    phi = posemath.shapley_values(v)
    np.testing.assert_allclose(phi, _shapley_by_definition(v))
    assert phi.sum() == pytest.approx(v[15] - v[0])


def test_shapley_of_additive_game_is_each_players_own_value():
    own = np.array([40.0, 30.0, 10.0, 5.0])
    v = np.array([sum(own[i] for i in range(4) if c >> i & 1) for c in range(16)])
    np.testing.assert_allclose(posemath.shapley_values(v), own)
    # Shapley weights of Eq. 1 for |S| = 0..3: 1/4, 1/12, 1/12, 1/4.
    row = posemath.SHAPLEY_MATRIX[0]
    assert row[1] == pytest.approx(1 / 4) and row[3] == pytest.approx(1 / 12)
    assert row[15] == pytest.approx(1 / 4)


def test_vectorised_profits_equal_a_corrcoef_reference():
    rng = np.random.default_rng(7)
    target = rng.normal(size=(9, 17, 3))
    preds = rng.normal(size=(9, 16, 17, 3)) + target[:, None]
    preds[:, 3] = 1.0  # a constant coalition: correlation 0, not NaN
    expected = []
    for c in range(16):
        p, t = preds[:, c].reshape(9, -1), target.reshape(9, -1)
        r = [0.0 if p[:, k].std() < 1e-8 else np.corrcoef(p[:, k], t[:, k])[0, 1] for k in range(51)]
        expected.append(sum(r))
    np.testing.assert_allclose(posemath.pearson_profits(preds, target), expected, rtol=1e-10, atol=1e-10)
    v = posemath.coalition_values(preds, target)
    assert v[0] == 0.0 and v[3] == 0.0
    np.testing.assert_allclose(v[1:], np.array(expected)[1:], rtol=1e-10, atol=1e-10)
    assert posemath.pearson_profits(preds[:1], target[:1]).tolist() == [0.0] * 16


def test_coalition_values_force_empty_to_zero():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(16, 17, 3))
    preds = np.repeat(t[:, None], 16, axis=1)
    v = posemath.coalition_values(preds, t)
    assert v[0] == 0.0 and v[schema.FULL_COALITION] == pytest.approx(51.0)


def test_coalition_index_round_trip():
    for c in range(schema.N_COALITIONS):
        assert schema.coalition_index(schema.coalition_mask(c)) == c
    assert schema.coalition_index([1, 1, 0, 0]) == 3
