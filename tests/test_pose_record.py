"""sensors.core.pose_record: one record of a tick, the same through the wire and through both
recording formats; recordings written before the record existed still read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporters.recorder import open_recorder, read_rows
from sensors.core import schema, wire
from sensors.core.pose_record import EXTRAS, PoseRecord

JOINTS = np.arange(51, dtype=np.float32).reshape(17, 3) / 100


def full_record(tick: int = 3) -> PoseRecord:
    n = len(schema.ANGLE_CHANNELS)
    return PoseRecord(
        tick=tick, tick_ns=1_700_000_000_000_000_000 + tick, joints=JOINTS + tick, presence=np.array([1, 0, 1, 1]),
        degradation=np.array([0.1, 0.9, 0.0, 0.2], np.float32), degraded=np.array([0, 1, 0, 0], np.uint8),
        outcome="partial", latency_ns=4_000_000, station="ward-3", reasons=["", "missing", "", "noise"],
        shapley=np.array([0.5, 0.0, 0.3, 0.2]), shares=np.array([0.5, 0.0, 0.3, 0.2]),
        coalition_values=np.linspace(0, 1, 16), shapley_gt=np.array([0.4, 0.1, 0.3, 0.2]),
        shares_gt=np.array([0.4, 0.1, 0.3, 0.2]), input_t_ns=np.array([5, 0, 7, 9], np.int64), gt=JOINTS * 2,
        rehab={"exercise": "A12", "session": "E01/S05/A12", "reps": 4, "angles_deg": {"knee_flexion_left": 91.25}},
        exercise="A12", session="E01/S05/A12", reps=4, angles=np.linspace(0, 90, n).astype(np.float32),
        points={"lidar": np.ones((5, 3), np.float32)})


def test_the_message_round_trips_through_the_wire_codec():
    rec = full_record()
    msg = wire.decode(wire.encode(rec.to_message()))
    assert msg.topic == schema.POSE_TOPIC and msg.seq == rec.tick and msg.src == "ward-3"
    assert list(msg.extra)[:3] == ["station", "tick", "latency_ns"] and tuple(msg.extra)[3:] == EXTRAS
    back = PoseRecord.from_message(msg)
    np.testing.assert_array_equal(back.joints, rec.joints)
    np.testing.assert_array_equal(back.gt, rec.gt)
    np.testing.assert_allclose(back.shares, rec.shares)
    np.testing.assert_allclose(back.shapley, rec.shapley, rtol=1e-6)   # float32 on the wire
    assert back.degraded.tolist() == [0, 1, 0, 0] and back.reasons == rec.reasons
    assert back.tick_ns == rec.tick_ns and back.latency_ns == rec.latency_ns and back.sent_ns > 0
    assert back.exercise == "A12" and back.reps == 4 and back.rehab == rec.rehab
    np.testing.assert_array_equal(back.points["lidar"], rec.points["lidar"])


def test_a_tick_without_a_window_sends_zero_shapley_and_nil_extras():
    rec = PoseRecord(tick=1, tick_ns=1, joints=JOINTS, presence=np.ones(4), degradation=np.zeros(4),
                     degraded=np.zeros(4))
    msg = rec.to_message()
    assert msg.arrays["shapley"].tolist() == [0.0] * 4
    assert msg.extra["shares"] is None and msg.extra["rehab"] is None and msg.extra["gt"] is None
    with pytest.raises(ValueError, match="no pose"):
        PoseRecord(tick=2, tick_ns=2, joints=None, presence=np.ones(4), degradation=np.zeros(4),
                   degraded=np.zeros(4)).to_message()
    with pytest.raises(ValueError, match="expected a 'pose' message"):
        PoseRecord.from_message(wire.Message("gt", "s", 0, 1, 1, {"joints": JOINTS}))


@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_the_row_round_trips_through_both_recorders(tmp_path, suffix):
    path = tmp_path / f"poses{suffix}"
    recorder = open_recorder(path)
    plain = PoseRecord(tick=0, tick_ns=10, joints=JOINTS, presence=np.ones(4), degradation=np.zeros(4),
                       degraded=np.zeros(4), outcome="fused", reasons=[""] * 4, input_t_ns=np.zeros(4, np.int64))
    recorder.write(plain)                       # no window, no labels, no rehabilitation yet
    recorder.write(full_record())
    recorder.close()
    first, second = (PoseRecord.from_row(r) for r in read_rows(path))
    assert first.shares is None and first.gt is None and first.reps is None and first.exercise is None
    rec = full_record()
    np.testing.assert_allclose(second.joints, rec.joints)
    np.testing.assert_allclose(second.coalition_values, rec.coalition_values)
    np.testing.assert_allclose(second.angles, rec.angles)
    assert second.exercise == "A12" and second.session == "E01/S05/A12" and second.reps == 4
    assert second.degraded.tolist() == [0, 1, 0, 0] and second.reasons == rec.reasons and second.outcome == "partial"
    assert second.points is None and second.rehab is None and second.sent_ns == 0   # message-only fields


def test_rows_keep_the_recording_format_of_files_already_written():
    row = full_record().to_row()
    assert list(row)[:10] == ["tick", "tick_ns", "outcome", "latency_ns", "presence", "joints", "degradation",
                              "degraded", "reasons", "input_t_ns"]
    assert {"shapley", "shares", "coalition_values", "shapley_gt", "shares_gt", "gt", "exercise", "session", "reps",
            "angles"} <= set(row)
    assert row["presence"].dtype == np.uint8 and row["angles"].dtype == np.float32 and row["session"] == "E01/S05/A12"
    # A JSONL line as recorded before PoseRecord existed reads as a record.
    old = json.loads('{"tick": 4, "tick_ns": 400, "outcome": "fused", "latency_ns": 5, "presence": [1, 1, 1, 1], '
                     '"joints": ' + json.dumps(JOINTS.tolist()) + ', "degradation": [0, 0, 0, 0], '
                     '"degraded": [0, 0, 0, 0], "reasons": ["", "", "", ""], "input_t_ns": [1, 2, 3, 4], '
                     '"exercise": "A07", "session": "", "reps": 2, "angles": [10.0, null]}')
    rec = PoseRecord.from_row(old)
    assert rec.tick == 4 and rec.reps == 2 and rec.exercise == "A07" and rec.session == ""
    with pytest.raises(ValueError, match="needs 'tick' and 'joints'"):
        PoseRecord.from_row({"a": 1})


def test_model_inputs_are_recorded_without_the_batch_axis(tmp_path):
    rec = full_record()
    rec.inputs = {"presence": np.ones(4, np.float32), "lidar_mask": np.zeros(8, bool)}
    rec.coalition_poses = np.zeros((16, 17, 3), np.float32)
    recorder = open_recorder(tmp_path / "x.npz")
    recorder.write(rec)
    recorder.close()
    back = PoseRecord.from_row(read_rows(tmp_path / "x.npz")[0])
    assert set(back.inputs) == {"presence", "lidar_mask"} and back.coalition_poses.shape == (16, 17, 3)
