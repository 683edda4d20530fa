"""The realism report (``sensors realism``) on the tiny generated dataset."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from sensors.core import schema
from sensors.simulate import realism


@pytest.fixture(scope="module")
def report(tiny_dataset):
    return realism.realism_report(tiny_dataset)


def test_report_reads_the_whole_dataset(report):
    assert report["sequences"] == 9
    assert report["frames_read"] == 9 * schema.FRAMES_PER_SEQUENCE


def test_bones_and_camera_frame(report):
    assert report["bone_max_sd_within_subject_m"] < 1e-5
    assert report["bone_max_rel_error"] < 0.15
    assert set(report["bones_m"]) == set(schema.REFERENCE_BONE_LENGTHS)
    assert 3.0 < report["gt_depth_z_m"]["min"] <= report["gt_depth_z_m"]["max"] < 3.45
    assert -0.3 < report["gt_x_m"]["min"] <= report["gt_x_m"]["max"] < 0.3


def test_sensor_statistics_in_their_realistic_bands(report):
    assert 1000 <= report["lidar_points"]["median"] <= 1400
    assert report["mmwave_points"]["max"] <= 30
    assert 0.05 < report["mmwave_empty_rate"] < 0.8
    assert report["mmwave_empty_rate_still"] > report["mmwave_empty_rate_moving"]
    assert 37.0 < report["csi_amp_mean"] < 43.0            # real E01-E03 profiles: 39.6-40.4
    assert 0.001 <= report["csi_nonfinite_frame_rate"] <= 0.05
    assert report["rgb_inside_image_rate"] == 1.0
    assert 150 < report["rgb_person_height_px"]["median"] < 350


def test_probe_orders_the_modalities(report):
    """RGB and LiDAR carry the most pose; both beat the mean pose. (WiFi above the mean pose needs
    more subjects than `tiny` has: docs/generator.md records it on `small`.)"""
    p = report["probe_mpjpe_mm"]
    assert p["split"] == "P1/S1" and p["test_frames"] > 0 and p["train_frames"] > p["test_frames"]
    values = {m: p[f"{m}_mm"] for m in schema.MODALITIES}
    assert all(np.isfinite(v) and v > 0 for v in values.values())
    assert p["rgb_mm"] < p["mean_pose_mm"] and p["lidar_mm"] < p["mean_pose_mm"]
    assert min(p["rgb_mm"], p["lidar_mm"]) < min(p["mmwave_mm"], p["wifi_mm"])


def test_probe_needs_three_subjects():
    data = {"subject": ["S01"] * 4 + ["S02"] * 4, "action": ["A02"] * 8, "gt": np.zeros((8, 51))}
    assert "error" in realism.probe(data)


def test_s1_mask_follows_the_official_rule():
    subjects = np.array(["S01", "S02", "S10", "S32", "S32"])
    actions = np.array(["A02", "A02", "A02", "A04", "A03"])
    mask, protocol = realism.s1_test_mask(subjects, actions)
    # P1 k=0 (A02) tests S01, S04, S07, S10, ...; k=2 (A04) tests S32; k=1 (A03) does not
    assert protocol == "P1" and mask.tolist() == [True, False, True, True, False]


def test_cli_prints_and_saves_json(tiny_dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    realism.add_arguments(parser)
    out = tmp_path / "realism.json"
    args = parser.parse_args(["--data", str(tiny_dataset), "--frame-step", "50", "--no-probe",
                              "--report", str(out)])
    assert realism.run(args) == 0
    saved = json.loads(out.read_text())
    assert saved["frames_read"] == 9 * 6 and "probe_mpjpe_mm" not in saved
    assert json.loads(capsys.readouterr().out)["lidar_points"] == saved["lidar_points"]


def test_empty_directory_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="sensors simulate"):
        realism.realism_report(tmp_path)


def test_identity_probe_and_csi_figures_in_the_report(report):
    ident = report["identity_probe"]
    assert ident["subjects"] == 3 and ident["chance"] == round(1 / 3, 4) and ident["test_frames"] > 0
    assert ident["chance_given_room"] == 0.6667            # tiny: S02, S10 in E01, S32 alone in E04
    for m in ("wifi", "mmwave"):                  # no recording shared by a subject's sequences
        assert ident[f"{m}_accuracy"] <= 2 * ident["chance"], ident
    csi = report["csi_amplitude"]
    assert 25.0 <= csi["percentiles_db"]["p5"] < csi["percentiles_db"]["p95"] <= 50.0
    assert set(csi["rooms"]) == {"E01", "E04"} and "E01" in csi["real"]["profiles"]
    lo, hi = csi["rooms"]["E01"]["subcarrier_sd_db"]
    assert 2.0 < lo <= hi < 9.0
    assert 0.5 < csi["packet_sd_db"] < 3.0
    ratios = report["probe_mpjpe_mm"]["ratio_to_rgb"]
    assert ratios["rgb"] == 1.0 and all(r > 0 for r in ratios.values())
    p = report["probe_mpjpe_mm"]
    assert np.isfinite(p["rgb+lidar_mm"]) and np.isfinite(p["all_four_mm"]) and p["rgb+lidar_mm"] < p["mean_pose_mm"]


def test_identity_probe_finds_a_shortcut_and_not_a_missing_one():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"S0{i}" for i in range(1, 5)], 60)
    actions = np.tile(np.repeat(["A02", "A03", "A04"], 20), 4)
    code = (np.arange(4).repeat(60)[:, None] == np.arange(4)[None]).astype(float)   # names the subject
    noise = rng.normal(size=(240, 4))
    data = {"subject": list(subjects), "action": list(actions)}
    for m in schema.MODALITIES:
        data[f"f_{m}"] = code + 0.1 * noise if m == "wifi" else noise
    result = realism.identity_probe(data)
    assert result["chance"] == 0.25 and result["wifi_accuracy"] > 0.95
    assert result["rgb_accuracy"] < 0.5
