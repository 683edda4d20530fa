"""The study report's benchmark checks, from hand-made finished runs (no training)."""

from __future__ import annotations

from training import study_report


def _runs(values: dict[int, float]) -> list[dict]:
    return [{"seed": s, "mpjpe": v, "pa_mpjpe": v / 2, "log": []} for s, v in values.items()]


def test_bench_checks_ratios_ordering_and_paired_fusion():
    found = {"rgb": _runs({0: 40.0, 1: 42.0}), "lidar": _runs({0: 44.0, 1: 42.0}),
             "mmwave": _runs({0: 60.0, 1: 70.0}), "wifi": _runs({0: 160.0, 1: 168.0}),
             "rgb+lidar": _runs({0: 35.0, 1: 36.0, 2: 30.0}), "all-none": _runs({0: 36.0, 1: 35.5})}
    text = study_report.bench_checks(found)
    # LiDAR ratio (1.10 + 1.00) / 2 = 1.05 against the paper's 1.05: inside; mmWave 1.58 inside 1.62 ± 25 %
    assert "| lidar | 2 | 43.0 ± 1.4 | 1.05 ± 0.07 | 1.05 | yes |" in text
    assert "| mmwave | 2 |" in text and "| 1.62 | yes |" in text
    assert "| wifi | 2 | 164.0 ± 5.7 | 4.00 ± 0.00 | 2.62 | no |" in text  # 4.0 / 2.62 = 1.53: outside
    assert "Ordering by mean MPJPE: rgb < lidar < mmwave < wifi, as in the paper." in text
    assert "rgb+lidar − rgb: s0: -5.0, s1: -6.0 mm" in text  # seed 2 has no RGB run: not paired
    assert "all-none − rgb+lidar: s0: +1.0, s1: -0.5 mm (mean 0.2 ± 1.1" in text


def test_bench_checks_flag_a_wrong_order_and_say_nothing_without_runs():
    found = {"rgb": _runs({0: 50.0}), "lidar": _runs({0: 40.0}), "mmwave": _runs({0: 90.0}),
             "wifi": _runs({0: 80.0})}
    text = study_report.bench_checks(found)
    assert "lidar < rgb < wifi < mmwave, unlike the paper" in text
    assert "| lidar | 1 | 40.0 | 0.80 | 1.05 | yes |" in text  # 0.80 / 1.05 = 0.76: just inside 25 %
    assert study_report.bench_checks({}) == ""
