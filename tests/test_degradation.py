"""Degradation (pure): input health + leave-one-out + drift -> score -> flag with hysteresis.

Detection bounds checked here (docs/runtime.md states them, defaults k_on=3, frozen_ticks=3):
* stopped (absent at the tick): flagged at the k_on-th absent tick;
* frozen (identical new messages): flagged within frozen_ticks + k_on ticks of the first repeat;
* corrupted (NaN/inf or out-of-range values): flagged at the k_on-th corrupted tick;
* in-range noise on RGB, LiDAR or CSI (the sensors.faults defaults): flagged at the k_on-th noisy tick
  (mmWave clouds are too sparse and ghost-ridden for the roughness test: not claimed);
* a dominant modality corrupted in range (only the model notices): flagged k_on ticks after its
  leave-one-out disagreement jumps.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.degradation import DegradationConfig, DegradationMonitor, leave_one_out_disagreement
from runtime.health import HealthConfig, InputHealthChecker
from sensors.core import schema

CFG = DegradationConfig()
HCFG = HealthConfig()
FROZEN_BOUND = HCFG.frozen_ticks + CFG.k_on
FAULT_AT = 40


BASE_KPTS = np.random.default_rng(99).uniform([200, 100], [440, 400], size=(17, 2))
SUBCARRIER_PROFILE = 40 + 5 * np.sin(np.linspace(0, 3 * np.pi, 114))


def _sample(modality: str, rng, t: int = 0) -> dict[str, np.ndarray]:
    """Healthy, temporally and spatially smooth samples like the sensors give (t = tick)."""
    if modality == "rgb":   # a person swaying, detector jitter of a few pixels
        sway = 20 * np.sin(0.2 * t)
        return {"kpts": (BASE_KPTS + [sway, 0] + rng.normal(0, 3, size=(17, 2))).astype(np.float32)}
    if modality == "lidar":   # ring-ordered scan: neighbours a few centimetres apart
        az = np.linspace(-0.4, 0.4, 1100)
        pts = np.stack([3.0 + 0.1 * np.cos(8 * az), 3.0 * az, np.repeat(np.linspace(1, -1, 11), 100)], axis=1)
        return {"points": (pts + rng.normal(0, 0.01, pts.shape)).astype(np.float32)}
    if modality == "mmwave":
        return {"points": rng.normal([3.0, 0, 0, 20, 0], [0.3, 0.3, 0.3, 5, 0.5], size=(12, 5)).astype(np.float32)}
    amp = SUBCARRIER_PROFILE + rng.normal(0, 1.3, size=(10, 3, 1)) + rng.normal(0, 0.25, size=(10, 3, 114))
    return {"amp": amp.astype(np.float32),
            "phase": rng.uniform(-np.pi, np.pi, size=(10, 3, 114)).astype(np.float32)}


NOISE = {"rgb": ("kpts", 60.0), "lidar": ("points", 0.3), "wifi": ("amp", 8.0)}   # sensors.faults defaults


def _run(fault: str | None, target: str, n_ticks: int = 80, seed: int = 0):
    """Feed n_ticks of healthy samples, with ``fault`` on ``target`` from FAULT_AT on.
    Returns (flag history [T, 4] bool, score history [T, 4])."""
    rng = np.random.default_rng(seed)
    health, monitor = InputHealthChecker(HCFG), DegradationMonitor(CFG)
    frozen = None
    flags, scores = [], []
    for t in range(n_ticks):
        inputs, presence = [], np.ones(4)
        for m in schema.MODALITIES:
            arrays = _sample(m, rng, t)
            if m == target and t >= FAULT_AT:
                if fault == "stop":
                    arrays = None
                    presence[schema.MODALITY_INDEX[m]] = 0
                elif fault == "freeze":
                    frozen = frozen or arrays
                    arrays = frozen
                elif fault == "corrupt_nan":
                    key = next(iter(arrays))
                    arrays[key] = arrays[key].copy()
                    arrays[key].ravel()[::3] = np.nan
                elif fault == "noise":
                    key, sigma = NOISE[m]
                    arrays[key] = (arrays[key] + rng.normal(0, sigma, arrays[key].shape)).astype(np.float32)
                elif fault == "corrupt_range":
                    key = next(iter(arrays))
                    arrays[key] = arrays[key] * 1e4
            h = health.observe(m, arrays, age_s=0.01, message_id=("s", t), received=1)
            inputs.append(h.score)
        loo = rng.uniform(0.02, 0.04, size=4) * presence
        res = monitor.update(inputs, loo, shares=np.full(4, 0.25), baseline=np.full(4, 0.25), presence=presence)
        flags.append(res.degraded)
        scores.append(res.score)
    return np.array(flags), np.array(scores)


def _first_flag(flags: np.ndarray, m: int) -> int:
    hits = np.flatnonzero(flags[:, m])
    return int(hits[0]) if hits.size else -1


@pytest.mark.parametrize("target", schema.MODALITIES)
@pytest.mark.parametrize("fault,bound", [("stop", CFG.k_on), ("freeze", FROZEN_BOUND),
                                         ("corrupt_nan", CFG.k_on), ("corrupt_range", CFG.k_on)])
def test_fault_flags_that_modality_only_within_the_stated_ticks(fault, bound, target):
    flags, _ = _run(fault, target)
    m = schema.MODALITY_INDEX[target]
    first = _first_flag(flags, m)
    assert first >= FAULT_AT, f"{target} flagged before the fault (tick {first})"
    assert first - FAULT_AT + 1 <= bound, f"{fault} {target} flagged after {first - FAULT_AT + 1} ticks > {bound}"
    others = [i for i in range(4) if i != m]
    assert not flags[:, others].any(), f"{fault} on {target} also flagged {np.flatnonzero(flags.any(0))}"


@pytest.mark.parametrize("target", sorted(NOISE))
def test_in_range_noise_flags_that_modality_only_within_k_on_ticks(target):
    flags, scores = _run("noise", target)
    m = schema.MODALITY_INDEX[target]
    first = _first_flag(flags, m)
    assert FAULT_AT <= first and first - FAULT_AT + 1 <= CFG.k_on, first
    assert not flags[:, [i for i in range(4) if i != m]].any()


def test_healthy_streams_are_never_flagged():
    flags, scores = _run(None, "rgb", n_ticks=120)
    assert not flags.any()
    assert scores.max() < CFG.theta_on


def test_empty_mmwave_frames_are_neither_frozen_nor_unhealthy():
    health = InputHealthChecker(HCFG)
    for t in range(10):
        h = health.observe("mmwave", {"points": np.zeros((0, 5), np.float32)}, message_id=("r", t), received=1)
    assert h.score == 0.0


def test_a_reused_message_is_not_a_frozen_sensor():
    health, rng = InputHealthChecker(HCFG), np.random.default_rng(0)
    arrays = _sample("lidar", rng)
    for _ in range(10):   # same (src, seq) at every tick: the sync reused it, the sensor is slow
        h = health.observe("lidar", arrays, message_id=("l", 7), received=0)
    assert h.frozen == 0.0


def test_sequence_gaps_raise_the_loss_component():
    health = InputHealthChecker(HCFG)
    arrays = _sample("rgb", np.random.default_rng(0))
    for t in range(HCFG.loss_window_ticks):
        h = health.observe("rgb", arrays | {"kpts": arrays["kpts"] + t}, message_id=("c", 2 * t), received=1, lost=1)
    assert h.loss == pytest.approx(1.0)   # half the messages lost = loss_full


def test_dominant_modality_corrupted_in_range_is_caught_by_leave_one_out():
    monitor, rng = DegradationMonitor(CFG), np.random.default_rng(1)
    flags = []
    for t in range(80):
        loo = rng.uniform(0.02, 0.04, size=4)
        if t >= FAULT_AT:
            loo[0] = 0.30          # rgb now drags the full prediction 10x further than usual
        res = monitor.update(np.zeros(4), loo, shares=np.full(4, 0.25), baseline=np.full(4, 0.25))
        flags.append(res.degraded)
    flags = np.array(flags)
    assert _first_flag(flags, 0) - FAULT_AT + 1 == CFG.k_on
    assert not flags[:, 1:].any()


def test_leave_one_out_disagreement_is_zero_for_an_absent_modality():
    rng = np.random.default_rng(2)
    preds = rng.normal(size=(16, 17, 3))
    d = leave_one_out_disagreement(preds, [1, 1, 0, 1])
    assert d[2] == 0.0 and (d[[0, 1, 3]] > 0).all()
    full = preds[0b1011]
    assert d[0] == pytest.approx(np.linalg.norm(preds[0b1010] - full, axis=-1).mean())


def test_drift_alone_never_flags_but_adds_evidence():
    monitor = DegradationMonitor(CFG)
    for _ in range(20):
        res = monitor.update(np.zeros(4), np.zeros(4), shares=[1.0, 0, 0, 0], baseline=[0.25] * 4)
    assert not res.degraded.any()
    assert res.score.max() == pytest.approx(CFG.w_drift)


def test_hysteresis_on_after_k_on_and_off_after_k_off():
    cfg = DegradationConfig(theta_on=0.5, theta_off=0.3, k_on=3, k_off=4)
    monitor = DegradationMonitor(cfg)
    high, mid, low = [0.9, 0, 0, 0], [0.4, 0, 0, 0], [0.1, 0, 0, 0]
    seq = [high, high, low, high, high, high, mid, mid, low, low, low, high, low, low, low, low]
    flags = [bool(monitor.update(s, np.zeros(4)).degraded[0]) for s in seq]
    # on only after 3 consecutive highs (ticks 3-5); mid keeps it on; a high resets the off count
    assert flags == [False, False, False, False, False, True, True, True, True, True, True, True,
                     True, True, True, False]
    assert monitor.events[0] == 1


def test_config_validates_thresholds():
    with pytest.raises(ValueError, match="theta_off"):
        DegradationConfig(theta_on=0.3, theta_off=0.5)
