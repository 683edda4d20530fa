"""Rehabilitation outputs: joint angles on hand-built skeletons, repetition counting on synthetic
angle curves, the exercise monitor, trust marking under a LiDAR stop, the report and the truth
side file of the generator."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from runtime.rehab import angles as ang
from runtime.rehab.monitor import RehabConfig, RehabMonitor, segment_summary
from runtime.rehab.repetitions import CounterConfig, RepetitionCounter
from sensors.core import schema

T0 = 1_700_000_000_000_000_000   # capture time of frame 0 in tests.test_pipeline.frame_messages
J = schema.JOINT_INDEX
RATE = 10.0
PERIOD_NS = schema.FRAME_PERIOD_NS


# ----------------------------------------------------------------------------------------------
# Hand-built skeletons (camera frame: x = the subject's left when facing the camera, y down,
# z away from the camera; the subject faces the camera, so "forward" is -z)
# ----------------------------------------------------------------------------------------------
UP, DOWN = np.array([0.0, -1.0, 0.0]), np.array([0.0, 1.0, 0.0])
LEFT, FWD = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])


def _dir(deg: float, zero: np.ndarray, ninety: np.ndarray) -> np.ndarray:
    a = np.radians(deg)
    return np.cos(a) * zero + np.sin(a) * ninety


def skeleton(knee=0.0, hip_flex=0.0, elbow=0.0, sh_flex=0.0, sh_abd=0.0, lean_fwd=0.0, lean_left=0.0,
             side="left") -> np.ndarray:
    """A standing skeleton [17, 3] with the given angles (degrees) on ``side``; the other side at rest."""
    p = np.zeros((17, 3))
    p[J["pelvis"]] = [0.0, 0.0, 3.0]
    trunk = _dir(lean_fwd, UP, FWD)
    trunk = _dir(lean_left, trunk, LEFT) if lean_left else trunk
    p[J["spine"]] = p[J["pelvis"]] + 0.25 * trunk
    p[J["thorax"]] = p[J["pelvis"]] + 0.5 * trunk
    p[J["neck_nose"]] = p[J["thorax"]] + 0.12 * trunk
    p[J["head"]] = p[J["neck_nose"]] + 0.08 * trunk
    for s, sign in (("left", 1.0), ("right", -1.0)):
        on = s == side
        hip = p[J["pelvis"]] + sign * 0.11 * LEFT
        thigh = _dir(hip_flex if on else 0.0, DOWN, FWD)
        # knee bends the shank backwards in the sagittal plane of the thigh
        back = np.cross(LEFT, thigh)   # thigh rotated by -90 deg about the lateral axis: towards the back
        shank = _dir(knee if on else 0.0, thigh, back)
        p[J[f"{s}_hip"]] = hip
        p[J[f"{s}_knee"]] = hip + 0.41 * thigh
        p[J[f"{s}_ankle"]] = p[J[f"{s}_knee"]] + 0.39 * shank
        lateral = np.cross(trunk, np.cross(LEFT, trunk))   # LEFT made orthogonal to the trunk
        lateral /= np.linalg.norm(lateral)
        sh = p[J["thorax"]] + sign * 0.17 * lateral
        down_t = -trunk
        fwd_t = np.cross(lateral, trunk)
        if on and sh_abd:
            upper = _dir(sh_abd, down_t, sign * lateral)
        else:
            upper = _dir(sh_flex if on else 0.0, down_t, fwd_t)
        fore = _dir(elbow if on else 0.0, upper, fwd_t if abs(upper @ fwd_t) < 0.9 else UP)
        p[J[f"{s}_shoulder"]] = sh
        p[J[f"{s}_elbow"]] = sh + 0.25 * upper
        p[J[f"{s}_wrist"]] = p[J[f"{s}_elbow"]] + 0.25 * fore
    return p


def angle_of(p: np.ndarray, angle: str, side: str = "left") -> float:
    return float(ang.joint_angles(p)[ang.CHANNEL_INDEX[(angle, side)]])


def _yaw(p: np.ndarray, deg: float) -> np.ndarray:
    a = np.radians(deg)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    c = p[J["pelvis"]]
    return (p - c) @ r.T + c + np.array([0.3, -0.1, 0.5])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kwargs, angle, expected", [
    ({}, "knee_flexion", 0.0), ({"knee": 90}, "knee_flexion", 90.0), ({"knee": 130}, "knee_flexion", 130.0),
    ({"hip_flex": 90}, "hip_flexion", 90.0), ({"hip_flex": -20}, "hip_flexion", -20.0),
    ({"elbow": 90}, "elbow_flexion", 90.0), ({"elbow": 45}, "elbow_flexion", 45.0),
    ({"sh_flex": 90}, "shoulder_flexion", 90.0), ({"sh_flex": 170}, "shoulder_flexion", 170.0),
    ({"sh_abd": 90}, "shoulder_abduction", 90.0), ({"sh_abd": 175}, "shoulder_abduction", 175.0),
])
def test_limb_angles_on_hand_built_skeletons(kwargs, angle, expected, side):
    p = skeleton(side=side, **kwargs)
    assert angle_of(p, angle, side) == pytest.approx(expected, abs=0.01)
    # the same pose turned 40 deg about the vertical and moved: the angles do not change
    assert angle_of(_yaw(p, 40.0), angle, side) == pytest.approx(expected, abs=0.01)
    other = "right" if side == "left" else "left"
    if angle in ("knee_flexion", "elbow_flexion"):
        assert angle_of(p, angle, other) == pytest.approx(0.0, abs=0.01)


def test_trunk_lean_and_hip_flexion_relative_to_the_trunk():
    p = skeleton(lean_fwd=30.0)
    a = ang.joint_angles(p)
    assert a[ang.CHANNEL_INDEX[("trunk_lean_sagittal", "none")]] == pytest.approx(30.0, abs=0.01)
    assert a[ang.CHANNEL_INDEX[("trunk_lean_frontal", "none")]] == pytest.approx(0.0, abs=0.01)
    # thighs hang straight down: flexed 30 deg relative to the forward-leaning trunk
    assert a[ang.CHANNEL_INDEX[("hip_flexion", "left")]] == pytest.approx(30.0, abs=0.01)
    q = skeleton(lean_left=20.0)
    b = ang.joint_angles(q)
    assert b[ang.CHANNEL_INDEX[("trunk_lean_frontal", "none")]] == pytest.approx(20.0, abs=0.01)
    assert b[ang.CHANNEL_INDEX[("trunk_lean_sagittal", "none")]] == pytest.approx(0.0, abs=0.01)


def test_planar_angle_is_undefined_along_the_plane_normal_and_the_filter_holds():
    p = skeleton(sh_flex=90.0)               # arm straight forward: abduction says nothing
    assert np.isnan(angle_of(p, "shoulder_abduction"))
    f = ang.AngleFilter()
    first = f.update(ang.joint_angles(skeleton(sh_abd=30.0)))
    held = f.update(ang.joint_angles(p))
    i = ang.CHANNEL_INDEX[("shoulder_abduction", "left")]
    assert np.isfinite(held[i]) and held[i] == pytest.approx(first[i], abs=1e-9)
    with pytest.raises(ValueError, match="expected joints"):
        ang.joint_angles(np.zeros((16, 3)))


def test_smoothing_is_causal_and_the_same_offline_and_tick_by_tick():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(50, ang.N_CHANNELS)), axis=0)
    f = ang.AngleFilter()
    online = np.stack([f.update(v) for v in x])
    np.testing.assert_allclose(online, ang.smooth_series(x), atol=1e-12)
    y = x.copy()
    y[30:] += 100.0                          # a change in the future does not move the past
    np.testing.assert_allclose(ang.smooth_series(y)[:30], online[:30], atol=1e-12)
    steady = ang.smooth_series(np.full((5, ang.N_CHANNELS), 42.0))
    np.testing.assert_allclose(steady, 42.0)  # starts in steady state: no ramp from 0


def test_knee_and_elbow_flexion_equal_the_generators_bend_channels():
    from sensors.simulate.truth import truth_of

    joints, channels = _kinematics("A12", "S03", 1)
    a = ang.joint_angles(joints.astype(np.float32).astype(np.float64))   # as stored: float32
    ch = truth_of("A12", channels)["channels_deg"]
    for side, s in (("left", "L"), ("right", "R")):
        np.testing.assert_allclose(a[:, ang.CHANNEL_INDEX[("knee_flexion", side)]], ch[f"{s}_knee"], atol=0.01)
        np.testing.assert_allclose(a[:, ang.CHANNEL_INDEX[("elbow_flexion", side)]], ch[f"{s}_elbow"], atol=0.01)


# ----------------------------------------------------------------------------------------------
# Repetition counting on synthetic angle curves
# ----------------------------------------------------------------------------------------------
def synthetic_session(rng, noise_deg=2.0):
    """Raised-cosine repetitions (different ranges and durations) with pauses at rest and at the
    top, plus small wobbles that are no repetitions. Returns (signal [T], true ROMs)."""
    parts, roms = [np.full(20, 5.0)], []
    plan = [(80, 3.0, 0), (70, 2.5, 0), (90, 3.5, 15), (60, 2.0, 0), (85, 3.0, 0), (75, 4.0, 0)]
    for k, (rom, dur, hold) in enumerate(plan):
        n = int(dur * RATE)
        up = 5.0 + rom * (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n // 2)))
        down = up[::-1]
        parts += [up, np.full(hold, 5.0 + rom), down]
        roms.append(rom)
        if k == 2:
            parts.append(np.full(30, 5.0))                    # 3 s pause at rest
            parts.append(5.0 + 6.0 * np.sin(np.linspace(0, 4 * np.pi, 30)) ** 2)   # wobbles of 6 deg
        parts.append(np.full(int(rng.uniform(2, 8)), 5.0))
    parts.append(np.full(25, 5.0))
    sig = np.concatenate(parts)
    return sig + rng.normal(0, noise_deg, sig.size), roms


def run_counter(sig, cfg: CounterConfig | None = None):
    c = RepetitionCounter(cfg or CounterConfig(min_rom_deg=30.0), "left")
    counted, done, counts = [], [], []
    smooth = ang.smooth_series(sig[:, None])[:, 0]
    for i, v in enumerate(smooth):
        got, fin = c.update(i, i / RATE, v)
        counted += [got] if got else []
        done += [fin] if fin else []
        counts.append(c.count)
    last = c.finish()
    return counted, done + ([last] if last else []), counts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_counts_repetitions_exactly_through_noise_pauses_and_wobbles(seed):
    sig, roms = synthetic_session(np.random.default_rng(seed))
    counted, done, counts = run_counter(sig)
    assert len(counted) == len(roms) and len(done) == len(roms)
    np.testing.assert_allclose([r.rom_deg for r in done], roms, atol=6.0)   # noise 2 deg, smoothed
    assert all(r.end is not None and r.duration_s > 1.0 for r in done)
    assert [r.index for r in done] == list(range(1, len(roms) + 1))
    assert counts == sorted(counts)          # the live count only rises


def test_no_repetition_in_noise_or_in_small_movements():
    rng = np.random.default_rng(5)
    counted, _, _ = run_counter(20.0 + rng.normal(0, 3.0, 600))
    assert counted == []
    small = 20.0 + 12.0 * np.sin(np.linspace(0, 20 * np.pi, 400))   # 24 deg peak to peak < 30 deg minimum
    assert run_counter(small)[0] == []


def test_live_count_rises_before_the_repetition_ends_and_a_hold_at_the_top_is_one_repetition():
    t = np.arange(120) / RATE
    sig = np.where(t < 2, 0.0, np.where(t < 4, 90 * (t - 2) / 2, np.where(t < 8, 90.0,
                   np.where(t < 10, 90 - 90 * (t - 8) / 2, 0.0))))
    counted, done, counts = run_counter(sig)
    assert len(counted) == 1 and len(done) == 1
    assert counts.index(1) < 100 and done[0].end.tick >= 99   # counted on the way down, ended at rest
    assert done[0].rom_deg == pytest.approx(90.0, abs=1.0)


# ----------------------------------------------------------------------------------------------
# Planar angles across their cut at -90/270 deg: continuity and the physiological gate
# ----------------------------------------------------------------------------------------------
def _wrap(deg: np.ndarray) -> np.ndarray:
    """Into (-90, 270], as joint_angles gives planar angles."""
    a = np.mod(np.asarray(deg, np.float64) + 90.0, 360.0) - 90.0
    return np.where(a <= -90.0, a + 360.0, a)


def test_unwrapping_tick_by_tick_is_numpy_unwrap():
    rng = np.random.default_rng(0)
    true = 200.0 + np.cumsum(rng.normal(0, 15, 300))          # wanders across 270 and back, several turns
    raw = _wrap(true)
    assert (np.abs(np.diff(raw)) > 180).sum() >= 2, "the series should cross the cut"
    out, ref = [], np.nan
    for x in raw:
        ref = float(ang.unwrap_towards(x, ref))
        out.append(ref)
    np.testing.assert_allclose(out, np.unwrap(raw, period=360.0), atol=1e-9)
    np.testing.assert_allclose(out, true - (true[0] - raw[0]), atol=1e-9)


def _rom_of_counted(series: np.ndarray, angle: str, gate: bool) -> tuple[list[float], int]:
    """ROMs counted on one channel of a raw angle series by the monitor's path (gate, causal
    smoothing, counter with the angle's physiological maximum), or without the gate (the old path)."""
    raw = np.zeros((len(series), ang.N_CHANNELS))
    i = ang.CHANNEL_INDEX[(angle, "left")]
    raw[:, i] = series
    kept = ang.gate_series(raw)[0] if gate else raw
    smooth = ang.smooth_series(kept)[:, i]
    c = RepetitionCounter(CounterConfig(min_rom_deg=30.0, max_rom_deg=ang.max_rom_deg(angle) if gate else np.inf))
    roms = []
    for k, v in enumerate(smooth):
        counted, _ = c.update(k, k / RATE, v)
        if counted is not None:
            roms.append(counted.rom_deg)
    return roms, c.rejected


@pytest.mark.parametrize("angle", ["shoulder_flexion", "shoulder_abduction", "hip_flexion"])
def test_an_angle_jittering_across_its_cut_gives_no_unphysiological_range(angle):
    """Three real repetitions (0 -> 120 -> 0 deg), then 10 s of a wild pose putting the limb near
    the cut (true angle -90 +- 12 deg: it flips between about -80 and 260 once wrapped), then three
    more repetitions. Without the gate the flips count as repetitions of 250-340 deg; with it they
    are dropped and only the six real repetitions are counted, with their real range."""
    rng = np.random.default_rng(1)
    t = np.arange(30) / RATE
    rep = 60.0 - 60.0 * np.cos(2 * np.pi * t / 3.0)             # 0 -> 120 -> 0 deg in 3 s
    wild = -90.0 + rng.uniform(-12.0, 12.0, 100)
    series = _wrap(np.concatenate([np.zeros(10), rep, rep, rep, wild, np.zeros(10), rep, rep, rep, np.zeros(20)]))
    old, _ = _rom_of_counted(series, angle, gate=False)
    assert max(old) > 250, "the scenario should reproduce the cross-cut ranges"
    roms, rejected = _rom_of_counted(series, angle, gate=True)
    assert len(roms) == 6 and rejected == 0, roms
    np.testing.assert_allclose(roms, 120.0, atol=8.0)
    assert max(roms) <= ang.max_rom_deg(angle) and max(roms) <= 180.0


def _wild_arm():
    """(monitor, ticks): shoulder flexion repetitions with 5 s of the left arm jittering straight
    backwards (shoulder flexion -90, the cut) inside one of them."""
    rng = np.random.default_rng(2)
    t = np.arange(30) / RATE
    up = 75.0 - 75.0 * np.cos(2 * np.pi * t / 3.0)              # 0 -> 150 -> 0 deg
    flex = np.concatenate([np.zeros(10), up, up, up[:15], 270.0 + rng.uniform(-10, 10, 50), up[15:], up, np.zeros(20)])
    mon = RehabMonitor(RehabConfig())                            # generic mode: every angle watched
    outs = _feed(mon, [skeleton(sh_flex=a) for a in flex])
    mon.finish()
    return mon, outs


def test_the_monitor_drops_a_wild_arm_behind_the_back_and_marks_the_repetition():
    """Live path with poses: shoulder flexion repetitions, then the arm jittering straight backwards
    (shoulder flexion -90, the cut) for 5 s inside a repetition. The samples are dropped (listed in
    ``RehabTick.implausible``), no range beyond the physiological one is reported, and a repetition
    measured mostly on dropped samples is low-confidence."""
    mon, outs = _wild_arm()
    i = ang.CHANNEL_INDEX[("shoulder_flexion", "left")]
    wild = slice(10 + 75, 10 + 75 + 50)
    assert all("shoulder_flexion_left" in o.implausible for o in outs[wild])
    assert not any(o.implausible for o in outs[:80]) and mon.gate.implausible[i] == 50
    smoothed = np.stack([o.angles for o in outs])[:, i]
    assert smoothed.max() < 160 and smoothed.min() > -10      # held, never sweeping through the cut
    reps = [r for r in mon.current.reps if r["channel"] == "shoulder_flexion_left"]
    assert all(r["rom_deg"] <= 155 for r in reps) and len(reps) >= 4
    held = [r for r in reps if r["implausible_fraction"] > 0.5]
    assert held and all(r["low_confidence"] for r in held)
    assert all(r["implausible_fraction"] == 0 and not r["low_confidence"] for r in reps if r["end_tick"] < 85)
    assert all(r["rom_deg"] <= ang.max_rom_deg(ang.CHANNELS[ang.CHANNEL_KEYS.index(r["channel"])][0])
               for r in mon.current.reps)


def test_dropped_angle_samples_are_counted_in_prometheus(tiny_model):
    """The wild-arm ticks of the monitor above, through the runtime's metrics output: every dropped
    sample counts once on its own (angle, side) series, and no other series moves."""
    from tests.test_pipeline import _cfg, _run_data_clock, frame_messages

    rng = np.random.default_rng(1)
    pipe, _ = _run_data_clock(tiny_model, [m for k in range(3) for m in frame_messages(k, rng)], cfg=_cfg())
    reg = pipe.outputs.metrics.registry
    name = "awc_joint_angle_implausible_samples_total"
    # every series exists (the untrained model's own poses may already have dropped some samples)
    before = {(a, s): reg.get_sample_value(name, {"angle": a, "side": s}) for a, s in schema.ANGLE_CHANNELS}
    assert None not in before.values()
    _, outs = _wild_arm()
    for o in outs:
        pipe.outputs.metrics._rehab(o)
    added = {k: reg.get_sample_value(name, {"angle": k[0], "side": k[1]}) - before[k] for k in before}
    assert added.pop(("shoulder_flexion", "left")) == sum("shoulder_flexion_left" in o.implausible for o in outs) == 50
    assert set(added.values()) == {0.0}


def test_gate_continuity_restarts_after_a_second_without_a_plausible_sample():
    g = ang.PlausibilityGate(reanchor_ticks=10)
    i = ang.CHANNEL_INDEX[("shoulder_abduction", "left")]
    x = np.zeros(ang.N_CHANNELS)
    x[i] = 225.0                      # arm overhead, past the vertical
    assert g.update(x)[0][i] == 225.0
    x[i] = -55.0                      # 80 deg on through the cut (behind the head), 280 back the other way
    kept = [g.update(x) for _ in range(12)]
    assert all(np.isnan(k[i]) and d[i] for k, d in kept[:10])   # read as 305: dropped
    assert kept[10][0][i] == -55.0 and not kept[10][1][i]         # after 1 s taken as it is
    assert g.implausible[i] == 10
    x[i] = 200.0
    g.update(x)
    x[i] = -20.0                      # 140 deg through the cut in one tick: the projection passed the normal
    assert g.update(x)[0][i] == -20.0
    for bad in ({"reanchor_ticks": 0}, {"max_step_deg": 0.0}, {"max_step_deg": 200.0}):
        with pytest.raises(ValueError, match="reanchor_ticks"):
            ang.PlausibilityGate(**bad)


@pytest.mark.parametrize("action", list(schema.PROTOCOLS["P2"]))
def test_ground_truth_exercises_never_leave_the_physiological_ranges(action):
    for subject in ("S02", "S15"):
        angles = ang.joint_angles(_generated(action, subject))
        kept, dropped = ang.gate_series(angles)
        assert not dropped.any(), [ang.CHANNEL_KEYS[i] for i in np.flatnonzero(dropped.any(axis=0))]
        np.testing.assert_array_equal(np.isnan(kept), np.isnan(angles))
        np.testing.assert_allclose(kept[np.isfinite(kept)], angles[np.isfinite(angles)])


def test_counter_rejects_a_range_no_joint_has():
    t = np.arange(200) / RATE
    wave = 90.0 - 90.0 * np.cos(2 * np.pi * t / 4.0)            # 180 deg swings
    c = RepetitionCounter(CounterConfig(min_rom_deg=20.0, max_rom_deg=150.0))
    for k, v in enumerate(wave):
        c.update(k, t[k], v)
    assert c.count == 0 and c.rejected >= 4
    with pytest.raises(ValueError, match="max_rom_deg"):
        CounterConfig(min_rom_deg=40.0, max_rom_deg=30.0)


def test_counter_settings_validate():
    with pytest.raises(ValueError, match="min_rom_deg"):
        CounterConfig(min_rom_deg=0)
    with pytest.raises(ValueError, match="rehab.exercise"):
        RehabConfig(exercise="A99")
    assert RehabConfig(exercise="a12").exercise == "A12" and RehabConfig(exercise="unknown").exercise == ""


# ----------------------------------------------------------------------------------------------
# The monitor: exercises, sides, switching, unknown exercise
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _kinematics(action: str, subject="S02", seed=0):
    """(joints [297, 17, 3], channels) of the generator's motion model only (no sensors: fast)."""
    from sensors.simulate import kinematics
    from sensors.simulate.body import make_subject
    from sensors.simulate.environment import get_environment

    env = get_environment(schema.environment_of(subject))
    person = make_subject(subject, np.random.default_rng(seed), env)
    channels = kinematics.action_channels(action, schema.FRAMES_PER_SEQUENCE, person, np.random.default_rng(seed + 1))
    return kinematics.forward_kinematics(channels, person, env.camera_height_m), channels


def _generated(action: str, subject="S02", seed=0) -> np.ndarray:
    return _kinematics(action, subject, seed)[0]


def _feed(mon: RehabMonitor, joints, start_tick=0, presence=None, degraded=None):
    outs = []
    for i, p in enumerate(joints):
        k = start_tick + i
        outs.append(mon.update(k, k * PERIOD_NS, p, np.ones(4) if presence is None else presence[i],
                               np.zeros(4) if degraded is None else degraded[i], np.full(4, 0.25)))
    return outs


def test_monitor_counts_squats_with_symmetry_and_mark_time_per_side():
    from runtime.rehab.evaluate import true_repetitions
    from runtime.rehab.exercises import EXERCISES
    from sensors.simulate.truth import truth_of

    squat, channels = _kinematics("A12")
    true = [r for r in true_repetitions(truth_of("A12", channels), squat, EXERCISES["A12"]) if r["complete"]]
    mon = RehabMonitor(RehabConfig(exercise="A12"))
    outs = _feed(mon, squat)
    mon.finish()
    seg = mon.current
    summ = segment_summary(seg)
    assert outs[-1].principal == "knee_flexion" and outs[-1].exercise == "A12"
    assert summ["count"] == len(true) >= 5
    np.testing.assert_allclose([r["rom_deg"] for r in seg.reps], [r["rom_deg"] for r in true], atol=2.0)
    assert summ["symmetry"]["symmetry_pct"] > 95          # the generator's squat is symmetric
    assert all(r["fused_fraction"] == 1.0 and not r["low_confidence"] for r in seg.reps)
    march = RehabMonitor(RehabConfig(exercise="A06"))
    _feed(march, _generated("A06"))
    march.finish()
    sides = [r["side"] for r in march.current.reps]
    assert sides.count("left") >= 10 and abs(sides.count("left") - sides.count("right")) <= 1


def test_exercise_switch_from_a_header_starts_a_new_segment_and_unknown_mode_finds_the_moving_angle():
    squat, lunge = _generated("A12"), _generated("A09")
    mon = RehabMonitor(RehabConfig())
    _feed(mon, squat[:150])                                  # no exercise said: generic mode
    assert mon.current.exercise is None
    out = _feed(mon, squat[150:], start_tick=150)[-1]
    assert out.exercise == "unknown" and out.principal in ("knee_flexion_left", "knee_flexion_right",
                                                           "hip_flexion_left", "hip_flexion_right")
    assert out.count >= 3
    mon.request(300 * PERIOD_NS, "A09", "room-1/patient-7")
    mon.request(300 * PERIOD_NS, "A09", "room-1/patient-7")  # repeats change nothing
    mon.request(10 * PERIOD_NS, "A12", None)                 # a late message from the past is ignored
    out = _feed(mon, lunge, start_tick=300)[-1]
    assert out.exercise == "A09" and out.session == "room-1/patient-7" and out.principal == "knee_flexion_left"
    assert len(mon.segments) == 2 and out.count >= 4
    header = out.header()
    assert set(header["angles_deg"]) == set(ang.CHANNEL_KEYS) and header["reps"] == out.count
    json.dumps(header)                                       # plain values only (msgpack-able)


def test_unknown_exercise_summary_counts_the_channel_that_moved_most_like_the_live_count():
    squat = _generated("A12")
    mon = RehabMonitor(RehabConfig())
    out = _feed(mon, squat)[-1]
    mon.finish()
    seg = mon.current
    assert len({r["channel"] for r in seg.reps}) > 1          # several channels complete repetitions
    summ = segment_summary(seg)
    assert summ["count"] == len(seg.counted_reps) < len(seg.reps)
    (channel,) = {r["channel"] for r in seg.counted_reps}
    # the squat is symmetric: left and right knee nearly tie, either may lead
    assert channel.rsplit("_", 1)[0] == out.principal.rsplit("_", 1)[0] == "knee_flexion"
    assert abs(summ["count"] - out.count) <= 1                 # finish() may close the last one


# ----------------------------------------------------------------------------------------------
# Trust under an injected LiDAR stop (real pipeline flags, generated exercise poses)
# ----------------------------------------------------------------------------------------------
def test_repetitions_measured_after_a_lidar_stop_are_low_confidence(tiny_model):
    from tests.test_pipeline import _cfg, _run_data_clock, frame_messages

    n, stop_at = 200, 100
    rng = np.random.default_rng(0)
    messages = [m for k in range(n) for m in frame_messages(k, rng, skip=("lidar",) if k >= stop_at else ())]
    for m in messages:                                       # the client says which exercise this is
        m.extra.update(exercise="A12", session="s1")
    pipe, results = _run_data_clock(tiny_model, messages, cfg=_cfg())
    by_frame = {round((r.tick_ns - T0) / PERIOD_NS): r for r in results}
    assert len(by_frame) >= n - 2 and results[-1].rehab is not None and results[-1].rehab.exercise == "A12"
    lidar = schema.MODALITY_INDEX["lidar"]
    flagged = [k for k, r in by_frame.items() if r.degradation.degraded[lidar]]
    assert flagged and stop_at <= min(flagged) <= stop_at + 5   # the runtime flagged the stop
    # The untrained model's poses do not move: replay its per-tick flags under a squat's poses.
    frames = [by_frame.get(k) or by_frame[k - 1] for k in range(n)]
    squat = _generated("A12", subject="S07")[:n]
    mon = RehabMonitor(RehabConfig(exercise="A12"))
    _feed(mon, squat, presence=[r.presence for r in frames],
          degraded=[r.degradation.degraded.astype(float) for r in frames])
    mon.finish()
    reps = mon.current.reps
    before = [r for r in reps if r["end_tick"] < stop_at]
    after = [r for r in reps if r["start_tick"] > stop_at + 5]
    assert before and after
    assert all(not r["low_confidence"] and r["fused_fraction"] > 0.9 and "lidar" not in r["degraded"]
               for r in before)
    assert all(r["low_confidence"] and r["fused_fraction"] == 0.0 and "lidar" in r["degraded"] for r in after)
    assert all(set(r["mean_shares"]) == set(schema.MODALITIES) for r in reps)


def test_rehab_reaches_the_pose_stream_the_recorder_and_the_metrics(tiny_model):
    from runtime.outputs import pose_record
    from tests.test_pipeline import _cfg, _run_data_clock, frame_messages

    rng = np.random.default_rng(1)
    messages = [m for k in range(30) for m in frame_messages(k, rng)]
    for m in messages:
        m.extra.update(exercise="A07")
    pipe, results = _run_data_clock(tiny_model, messages, cfg=_cfg())
    last = results[-1]
    extra = pose_record(last).to_message().extra["rehab"]
    assert extra["exercise"] == "A07" and extra["principal"] == "shoulder_abduction_left"
    assert len(extra["angles_deg"]) == ang.N_CHANNELS
    rec = pose_record(last).to_row()
    assert rec["exercise"] == "A07" and rec["angles"].shape == (ang.N_CHANNELS,)
    reg = pipe.outputs.metrics.registry
    knee = reg.get_sample_value("awc_joint_angle_degrees", {"angle": "knee_flexion", "side": "left"})
    assert knee is not None and np.isfinite(knee)
    assert reg.get_sample_value("awc_rehab_exercise", {"exercise": "A07"}) == 1.0
    assert reg.get_sample_value("awc_rehab_exercise", {"exercise": "unknown"}) == 0.0
    assert reg.get_sample_value("awc_stage_duration_seconds_count", {"stage": "rehab"}) >= len(results)


# ----------------------------------------------------------------------------------------------
# Report and the generator's truth
# ----------------------------------------------------------------------------------------------
def test_report_from_a_recording_is_self_contained_html(tmp_path):
    pytest.importorskip("matplotlib")
    from runtime.rehab import report

    squat, lunge = _generated("A12"), _generated("A10")
    path = tmp_path / "poses.jsonl"
    with open(path, "w") as f:
        for k, p in enumerate(np.concatenate([squat[:150], lunge[:150]])):
            f.write(json.dumps({"tick": k, "tick_ns": k * PERIOD_NS, "joints": p.tolist(), "presence": [1, 1, 1, 1],
                                "degraded": [0, int(k > 200), 0, 0], "shares": [0.4, 0.3, 0.2, 0.1],
                                "exercise": "A12" if k < 150 else "A10", "session": "s1"}) + "\n")
    out = tmp_path / "report.html"
    assert report.run(report_args(path, out, tmp_path / "report.json")) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "A12" in page and "squat" in page and "A10" in page and "ROM (°)" in page
    data = json.loads((tmp_path / "report.json").read_text())
    assert [s["exercise"] for s in data["segments"]] == ["A12", "A10"]
    assert data["segments"][0]["count"] >= 2 and data["total_repetitions"] >= 4
    lunge_reps = data["segments"][1]["repetitions"]
    assert any("lidar" in r["degraded"] for r in lunge_reps)


def report_args(path, out, json_out):
    import argparse

    return argparse.Namespace(recording=str(path), out=str(out), json_out=json_out and str(json_out), exercise=None,
                              title="test report")


def test_report_refuses_a_file_that_is_no_recording(tmp_path):
    from runtime.rehab import report

    bad = tmp_path / "x.jsonl"
    bad.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="expected a pose recording"):
        report.load_records(bad)
    assert report.run(report_args(tmp_path / "missing.jsonl", tmp_path / "r.html", None)) == 2
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no ticks"):
        report.load_records(tmp_path / "empty.jsonl")


def test_generator_truth_side_file_and_rehab_eval_on_it(tiny_dataset):
    from runtime.rehab import evaluate as rehab_eval
    from runtime.rehab.exercises import EXERCISES
    from sensors.simulate.truth import read_truth

    seq = tiny_dataset / "E01" / "S02" / "A02"
    truth = read_truth(seq)
    assert truth["action"] == "A02" and truth["frames"] == schema.FRAMES_PER_SEQUENCE
    assert truth["cycles"][0]["start_s"] == pytest.approx(truth["start_s"])
    gaps = np.diff([c["start_s"] for c in truth["cycles"]])
    np.testing.assert_allclose(gaps, truth["period_s"], atol=1e-5)
    joints = np.load(seq / schema.MMFI_GT_FILE).astype(np.float64)
    # a P1 action (chest expansion), judged on the shoulder abduction of A01: the machinery only
    true = rehab_eval.true_repetitions(truth, joints, EXERCISES["A01"])
    assert len(true) == len(truth["cycles"]) and all(r["rom_deg"] >= 0 for r in true)
    with pytest.raises(FileNotFoundError, match="rehab_truth.json"):
        read_truth(tiny_dataset)
