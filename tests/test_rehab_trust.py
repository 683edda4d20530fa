"""Rehabilitation trust that knows when it is wrong: per-tick pose plausibility, key modalities,
an exercise the model never learnt (stream, record, metrics, report), the words people read, and
the progress report across sessions."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from runtime.rehab import angles as ang
from runtime.rehab.monitor import RehabConfig, RehabMonitor
from runtime.rehab.plausibility import CHECKS, PlausibilityConfig, PoseChecker, bone_lengths
from sensors.core import schema
from sensors.core.pose_record import PoseRecord
from tests.test_rehab import PERIOD_NS, _feed, _generated, _kinematics

P1 = tuple(schema.PROTOCOLS["P1"])
P2 = tuple(schema.PROTOCOLS["P2"])


# ----------------------------------------------------------------------------------------------
# Per-tick plausibility
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", P2)
def test_ground_truth_exercises_pass_every_pose_check(action):
    joints = _generated(action, subject="S07")
    mon = RehabMonitor(RehabConfig(exercise=action))
    outs = _feed(mon, joints)
    mon.finish()
    assert not any(o.pose_checks for o in outs), [o.pose_checks for o in outs if o.pose_checks][:3]
    assert all(r["trust_flags"] == [] and not r["low_confidence"] for r in mon.current.reps)


def test_pose_checks_catch_a_stretched_bone_jitter_and_an_angle_limit():
    joints = _generated("A12", subject="S02")
    checker = PoseChecker(PlausibilityConfig(warmup_ticks=20))
    for p in joints[:40]:
        assert checker.update(p) == ()
    bad = joints[40].copy()
    shin = bone_lengths(bad)
    bad[schema.JOINT_INDEX["left_ankle"]] += 0.5 * (bad[schema.JOINT_INDEX["left_ankle"]]
                                                    - bad[schema.JOINT_INDEX["left_knee"]])   # shin +50 %
    assert bone_lengths(bad).max() > shin.max() and "bone_length" in checker.update(bad)
    rng = np.random.default_rng(0)
    shaking = [checker.update(p + rng.normal(0, 0.06, p.shape)) for p in joints[41:60]]
    assert sum("jitter" in c for c in shaking) >= 15            # ~6 cm of noise a tick at every joint
    assert checker.update(None) == ()                            # a tick without a pose: no second difference
    assert checker.update(joints[60], implausible_angles=True) == ("angle_limit",)
    assert checker.failed["angle_limit"] == 1 and set(checker.failed) == set(CHECKS)
    assert checker.update(np.full((17, 3), np.nan)) == ()


def test_the_exporters_check_labels_are_the_checks():
    from exporters.metrics import POSE_CHECKS

    assert POSE_CHECKS == CHECKS


def test_a_shaking_pose_makes_its_repetitions_low_confidence():
    squat = _generated("A12", subject="S02")
    rng = np.random.default_rng(1)
    noisy = squat + np.where(np.arange(len(squat))[:, None, None] >= 150, rng.normal(0, 0.07, squat.shape), 0.0)
    mon = RehabMonitor(RehabConfig(exercise="A12"))
    _feed(mon, noisy)
    mon.finish()
    before = [r for r in mon.current.reps if r["end_tick"] < 150]
    after = [r for r in mon.current.reps if r["start_tick"] >= 160]
    assert before and all(not r["low_confidence"] for r in before)
    assert after and all("implausible_pose" in r["trust_flags"] and r["low_confidence"] for r in after)
    assert all(r["implausible_checks"]["jitter"] > 0.25 for r in after)


def test_a_key_modality_degraded_for_a_few_ticks_makes_the_repetition_low_confidence():
    squat = _generated("A12", subject="S02")
    lidar = schema.MODALITY_INDEX[schema.REHAB_KEY_MODALITIES[1]]
    radar = schema.MODALITY_INDEX[[m for m in schema.MODALITIES if m not in schema.REHAB_KEY_MODALITIES][0]]
    degraded = np.zeros((len(squat), schema.N_MODALITIES))
    degraded[100:103, lidar] = 1            # three ticks of a key modality
    degraded[:, radar] = 1                  # a modality that is not key, all the time
    mon = RehabMonitor(RehabConfig(exercise="A12"))
    _feed(mon, squat, degraded=degraded)
    mon.finish()
    hit = [r for r in mon.current.reps if r["start_tick"] <= 102 and r["end_tick"] >= 100]
    rest = [r for r in mon.current.reps if r["end_tick"] < 100 or r["start_tick"] > 102]
    assert 1 <= len(hit) <= 2 and all(r["trust_flags"] == ["key_degraded"] and r["low_confidence"] for r in hit)
    assert rest and all(not r["low_confidence"] for r in rest)


# ----------------------------------------------------------------------------------------------
# An exercise the model never learnt
# ----------------------------------------------------------------------------------------------
def test_an_exercise_outside_the_models_training_is_untrusted_and_a_trained_one_is_not():
    squat = _generated("A12", subject="S02")
    mon = RehabMonitor(RehabConfig(exercise="A12"), trained_actions=P1)         # a P1 model
    outs = _feed(mon, squat)
    mon.finish()
    assert outs[-1].exercise_trained is False and outs[-1].header()["exercise_trained"] is False
    assert mon.current.reps and all(r["trust_flags"] == ["untrained_exercise"] and r["low_confidence"]
                                    for r in mon.current.reps)
    trained = RehabMonitor(RehabConfig(exercise="A12"), trained_actions=P2)
    outs = _feed(trained, squat)
    trained.finish()
    assert outs[-1].exercise_trained is True and not any(r["low_confidence"] for r in trained.current.reps)
    unknown = RehabMonitor(RehabConfig(exercise="A12"))                          # the model does not say
    assert _feed(unknown, squat[:5])[-1].exercise_trained is None
    # a P1 action on a P2 model: generic counting, the code kept, untrusted
    p1 = RehabMonitor(RehabConfig(), trained_actions=P2)
    p1.request(0, "a02")
    out = _feed(p1, _generated("A02", subject="S02"))[-1]
    assert out.exercise == "A02" and p1.current.exercise is None and out.exercise_trained is False


def _model_trained_on(tiny_model, actions):
    from runtime.inference import OnnxPoseModel

    model = OnnxPoseModel.load(tiny_model.path, provider="cpu", intra_op_threads=1)
    model.metadata = dataclasses.replace(model.metadata, trained_protocol="P1", trained_split="S2",
                                         trained_actions=tuple(actions), trained_subjects=8)
    return model


def test_replaying_an_untrained_exercise_is_untrusted_on_the_stream_the_record_and_the_metrics(tiny_model):
    from runtime.outputs import pose_record
    from tests.test_pipeline import _cfg, _run_data_clock, frame_messages

    rng = np.random.default_rng(3)
    messages = [m for k in range(30) for m in frame_messages(k, rng)]
    for m in messages:
        m.extra.update(exercise="A12", session="s1")
    pipe, results = _run_data_clock(_model_trained_on(tiny_model, P1), messages, cfg=_cfg())
    record = pose_record(results[-1], "ward-3")
    msg = record.to_message()
    assert msg.extra["rehab"]["exercise_trained"] is False
    assert PoseRecord.from_message(msg).exercise_trained is False
    row = record.to_row()
    assert row["exercise_trained"] == 0 and row["station"] == "ward-3"
    assert PoseRecord.from_row(json.loads(json.dumps(row, default=lambda a: a.tolist()))).exercise_trained is False
    reg = pipe.outputs.metrics.registry
    assert reg.get_sample_value("awc_rehab_exercise_untrained") == 1.0
    assert reg.get_sample_value("awc_rehab_exercise", {"exercise": "A12"}) == 1.0
    pipe2, results2 = _run_data_clock(_model_trained_on(tiny_model, P2), messages, cfg=_cfg())
    assert results2[-1].rehab.exercise_trained is True
    assert pipe2.outputs.metrics.registry.get_sample_value("awc_rehab_exercise_untrained") == 0.0


# ----------------------------------------------------------------------------------------------
# Words for people
# ----------------------------------------------------------------------------------------------
def test_angle_words_name_the_direction_of_signed_angles():
    assert ang.channel_label("shoulder_abduction_left") == "left shoulder abduction"
    assert ang.channel_reading("shoulder_flexion_right", -38.0) == "right shoulder extension 38.0°"
    assert ang.channel_reading("trunk_lean_frontal", -12.0) == "trunk lean to the right 12.0°"
    assert ang.channel_label("knee_flexion") == "knee flexion (both sides)"
    assert set(ang.ANGLE_WORDS) == set(schema.ANGLE_NAMES)


@pytest.mark.parametrize("action", P2)
def test_principal_angles_are_positive_in_the_exercises_direction(action):
    """On ground truth every P2 exercise moves its principal angle away from rest in the positive
    direction: the peak of each repetition lies farther from the resting value than its start."""
    from runtime.rehab.evaluate import principal_signals, true_repetitions
    from runtime.rehab.exercises import EXERCISES
    from sensors.simulate.truth import truth_of

    joints, channels = _kinematics(action, "S07")
    ex = EXERCISES[action]
    signals = principal_signals(ex, ang.joint_angles(joints))
    reps = [r for r in true_repetitions(truth_of(action, channels), joints, ex) if r["complete"]]
    assert reps
    for side, sig in signals.items():
        rest = float(np.nanmin(sig))
        peaks = [sig[int(round(r["peak_s"] * 10))] for r in reps if r["side"] == side]
        assert all(p - rest >= 0.5 * ex.min_rom_deg for p in peaks), (side, rest, peaks)
        assert np.nanmedian(sig) < rest + 0.6 * (max(peaks) - rest)   # most of the time nearer rest than peak


# ----------------------------------------------------------------------------------------------
# Progress across sessions
# ----------------------------------------------------------------------------------------------
def _session(path, start_ns, parts, station="ward-3"):
    """Write a JSONL recording of (exercise, joints, lidar degraded from tick, trained) parts."""
    k = 0
    with open(path, "w") as f:
        for code, joints, degraded_from, trained in parts:
            for i, p in enumerate(joints):
                f.write(json.dumps({"tick": k, "tick_ns": start_ns + k * PERIOD_NS, "joints": p.tolist(),
                                    "presence": [1, 1, 1, 1], "degraded": [0, int(i >= degraded_from), 0, 0],
                                    "shares": [0.4, 0.4, 0.1, 0.1], "exercise": code, "session": "p7",
                                    "exercise_trained": int(trained), "station": station}) + "\n")
                k += 1


def test_progress_report_over_sessions_shows_each_exercises_trend_with_its_trust(tmp_path):
    pytest.importorskip("matplotlib")
    from runtime.rehab import report
    from runtime.rehab.progress import build_progress, load_session

    week = 7 * 86400 * 10**9
    t0 = 1_780_000_000 * 10**9
    folder = tmp_path / "patient-7"
    folder.mkdir()
    never = 10**6
    squats = {s: _generated("A12", s, seed) for seed, s in enumerate(("S02", "S07", "S12"))}   # another take each
    _session(folder / "week3.jsonl", t0 + 2 * week, [("A12", squats["S12"], never, 1), ("A09", _generated("A09"), never, 1),
                                                     ("A10", _generated("A10"), never, 1)])
    _session(folder / "week1.jsonl", t0, [("A12", squats["S02"], never, 1), ("A02", _generated("A02"), never, 0)])
    _session(folder / "week2.jsonl", t0 + week, [("A12", squats["S07"], 0, 1)])   # the LiDAR degraded throughout
    out, js = tmp_path / "progress.html", tmp_path / "progress.json"
    args = report_args([str(folder)], out, js)
    assert report.run(args) == 0
    data = json.loads(js.read_text())
    assert [s["source"].rsplit("/", 1)[-1] for s in data["sessions"]] == ["week1.jsonl", "week2.jsonl", "week3.jsonl"]
    squat = data["exercises"]["A12"]["points"]
    assert len(squat) == 3 and [p["trusted"] for p in squat] == [True, False, True]
    assert squat[1]["trust_flags"] == {"key_degraded": squat[1]["count"]} and squat[1]["low_confidence"] == squat[1]["count"]
    for point, name in zip(squat, ("week1", "week2", "week3")):   # each point is that session's own report
        single = report.build_report(load_session(folder / f"{name}.jsonl").segments)["segments"][0]
        assert (point["count"], point["rom_mean_deg"]) == (single["count"], single["rom_mean_deg"]) and single["count"] >= 5
        assert point["symmetry_pct"] == single["symmetry"]["symmetry_pct"] > 90
    lunge = data["exercises"]["A09"]["points"]
    assert len(lunge) == 1 and lunge[0]["symmetry_pct"] is not None          # against A10 in the same session
    p1 = data["exercises"]["A02"]["points"][0]
    assert p1["exercise_trained"] is False and not p1["trusted"]
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 4 and "<script" not in page and "http" not in page
    assert "untrusted: the model was never trained on this exercise" in page and "station ward-3" in page
    assert build_progress([load_session(folder / "week1.jsonl")])["exercises"]["A12"]["points"][0]["count"] == \
        squat[0]["count"]
    assert report.run(report_args([str(tmp_path / "empty")], out, None)) == 2


def test_a_single_session_report_names_the_station_and_marks_an_untrained_exercise(tmp_path):
    pytest.importorskip("matplotlib")
    from runtime.rehab import report

    path = tmp_path / "session.jsonl"
    _session(path, 1_780_000_000 * 10**9, [("A12", _generated("A12"), 10**6, 0)], station="gym-2")
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    assert report.run(report_args([str(path)], out, js)) == 0
    page = out.read_text()
    assert "station gym-2" in page and "untrusted: the model was never trained on this exercise" in page
    seg = json.loads(js.read_text())["segments"][0]
    assert seg["exercise_trained"] is False and seg["low_confidence"] == seg["count"] >= 5
    assert "knee flexion (both sides)" in page


def report_args(paths, out, json_out):
    import argparse

    return argparse.Namespace(recording=paths, out=str(out), json_out=json_out and str(json_out), exercise=None,
                              title=None)


def test_trust_calibration_scores_the_low_confidence_mark_against_truth():
    from runtime.rehab.evaluate import calibration, compare, overall
    from runtime.rehab.exercises import EXERCISES

    true = [{"side": "both", "cycle": k, "start_s": 2.0 * k, "end_s": 2.0 * k + 2, "peak_s": 2.0 * k + 1,
             "rom_deg": 100.0, "complete": True} for k in range(5)]
    det = [{"side": "both", "peak_s": 1.0, "rom_deg": 104.0, "low_confidence": False},                # good
           {"side": "both", "peak_s": 3.0, "rom_deg": 130.0, "low_confidence": True,                 # ROM off 30
            "trust_flags": ["implausible_pose"]},
           {"side": "both", "peak_s": 3.5, "rom_deg": 95.0, "low_confidence": False},                # counted twice
           {"side": "both", "peak_s": 11.0, "rom_deg": 60.0, "low_confidence": True,                 # nothing there
            "trust_flags": ["key_degraded"]},
           {"side": "both", "peak_s": 5.0, "rom_deg": 99.0, "low_confidence": True,                  # good, withheld
            "trust_flags": ["key_degraded"]}]
    row = {"exercise": "A12", **compare(true, det, EXERCISES["A12"])}
    assert row["count_error"] == 0 and row["missed"] == 2 and row["matched"] == 4
    assert [r["bad"] for r in row["repetitions"]] == [False, True, True, True, False]
    c = calibration([row])
    assert (c["repetitions"], c["bad"], c["flagged"], c["flagged_bad"]) == (5, 3, 3, 2)
    assert (c["precision"], c["recall"], c["withheld"]) == (0.667, 0.667, 0.6)
    assert (c["bad_unmatched"], c["bad_duplicate"], c["bad_rom"]) == (1, 1, 1)
    assert c["per_flag"] == {"implausible_pose": {"flagged": 1, "bad": 1}, "key_degraded": {"flagged": 2, "bad": 1}}
    assert c["bad_rate_kept"] == 0.5 and c["bad_rate_all"] == 0.6
    o = overall([row])
    assert (o["exact"], o["sequences"], o["matched_reps"]) == (1, 1, 4)


def test_recordings_of_one_visit_are_one_session_and_parts_in_progress_are_skipped(tmp_path):
    from runtime.rehab.progress import load_sessions, recording_files

    t0 = 1_780_000_000 * 10**9
    squat = _generated("A12", "S02")
    _session(tmp_path / "visit.jsonl", t0, [("A12", squat[:150], 10**6, 1)])
    # the recorder rotated by size: the rest of the visit in a second file, a tick later
    _session(tmp_path / "visit.20260101T000000Z.jsonl", t0 + 150 * PERIOD_NS, [("A12", squat[150:], 10**6, 1)])
    _session(tmp_path / "next-day.jsonl", t0 + 86400 * 10**9, [("A12", squat, 10**6, 1)])
    parts = tmp_path / "live.npz.parts"
    parts.mkdir()
    (parts / "part-000001.npz").write_bytes(b"being written")
    files = recording_files([tmp_path])
    assert len(files) == 3 and all(".parts" not in str(f) for f in files)
    visit, day2 = load_sessions(files)
    assert (visit.files, day2.files) == (2, 1) and visit.label.endswith(" visit")
    whole = [r["rom_deg"] for r in day2.segments[0].counted_reps]
    assert [r["rom_deg"] for s in visit.segments for r in s.counted_reps] == whole   # one monitor over both files
