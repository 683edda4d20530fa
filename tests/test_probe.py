"""training probe: the linear probe of frozen encoders reads what a feature carries about the pose,
and the command probes every enabled encoder of a trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch").set_num_threads(1)
pytest.importorskip("sklearn")

from sensors.core import schema  # noqa: E402
from training.cli import main  # noqa: E402
from training.probe import ALPHAS, linear_probe  # noqa: E402


def test_the_probe_reads_pose_from_informative_features_and_none_from_noise():
    rng = np.random.default_rng(0)
    joints = rng.normal(0.0, 0.2, (1200, schema.N_JOINTS, 3)) + np.array([0.0, 0.0, 3.2])
    mix = rng.normal(size=(51, 64))
    informative = joints.reshape(1200, -1) @ mix + rng.normal(0, 1e-3, (1200, 64))   # a linear code of the pose
    noise = rng.normal(size=(1200, 64))
    tr, te = slice(0, 900), slice(900, None)
    good = linear_probe(informative[tr], joints[tr], informative[te], joints[te])
    bad = linear_probe(noise[tr], joints[tr], noise[te], joints[te])
    mean_pose = float(np.linalg.norm(joints[te] - joints[tr].mean(axis=0), axis=-1).mean() * 1000)
    assert good["mpjpe"] < 5.0                                     # recovered to a few mm
    assert bad["mpjpe"] == pytest.approx(mean_pose, rel=0.05)      # noise: no better than the mean pose
    assert good["pa_mpjpe"] <= good["mpjpe"] + 1e-6
    assert good["alpha"] in ALPHAS and bad["alpha"] in ALPHAS    # chosen from the grid


def test_alpha_is_chosen_over_whole_recordings_so_recording_state_is_not_learnt():
    """Features that only name the recording (a random code per recording, as a radio channel's
    state): within a recording they predict its pose perfectly, across recordings nothing. Chosen
    over whole recordings, the probe regularises to about the mean pose on unseen recordings
    instead of mapping unseen codes to arbitrary poses."""
    rng = np.random.default_rng(1)
    n_rec, per = 40, 30
    rec = np.repeat(np.arange(n_rec), per)
    pose = rng.normal(0.0, 0.15, (n_rec, schema.N_JOINTS, 3))[rec] + rng.normal(0, 0.01, (n_rec * per, schema.N_JOINTS, 3))
    code = rng.normal(size=(n_rec, 64))[rec] + rng.normal(0, 0.05, (n_rec * per, 64))
    tr, te = rec < 30, rec >= 30
    mean_pose = float(np.linalg.norm(pose[te] - pose[tr].mean(axis=0), axis=-1).mean() * 1000)
    grouped = linear_probe(code[tr], pose[tr], code[te], pose[te], groups=rec[tr])
    assert grouped["alpha"] >= 1e3 and grouped["mpjpe"] < 1.05 * mean_pose
    # the same fit with little regularisation (what a split between frames picks) is far worse
    loose = linear_probe(code[tr], pose[tr], code[te], pose[te], groups=np.arange(tr.sum()) % 5)
    assert loose["alpha"] < grouped["alpha"] and loose["mpjpe"] > 1.2 * mean_pose


def test_probe_command_on_a_trained_run(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    common = ["--data", str(tiny_dataset), "--no-progress"]
    assert main(["fit", "--preset", "tiny", "--out", str(out), *common, "--set", "train.plots=false",
                 "--set", "train.epochs=2", "--modalities", "rgb,lidar,wifi"]) == 0
    capsys.readouterr()
    report = tmp_path / "probe.json"
    assert main(["probe", str(out), *common, "--test-frames", "200", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(report.read_text())
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and rows[0]["test_frames"] == 200
    probe = rows[0]["probe"]
    assert set(probe) == {"rgb", "lidar", "wifi"}                  # the disabled modality is skipped
    assert all(np.isfinite(p["mpjpe"]) and 0 < p["pa_mpjpe"] <= p["mpjpe"] for p in probe.values())
    assert "| run | rgb | lidar | mmwave | wifi | mean pose |" in printed and "| — |" in printed
    assert rows[0]["mean_pose_mpjpe"] > 0
    assert main(["probe", str(tmp_path / "nothing-here")]) == 2    # a missing checkpoint: one line, exit 2
