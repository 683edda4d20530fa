"""exporters.metrics: naming rules, process metrics, build info, no _created series."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from exporters.metrics import TRAINING_DATA, RuntimeMetrics, build_labels, exported_metric_names

UNIT_SUFFIXES = ("_seconds", "_ratio", "_bytes", "_hertz", "_total", "_info", "_bucket", "_count", "_sum",
                 # joint angles: degrees, as goniometry is read in the clinic (a deliberate exception)
                 "_degrees")
# Unitless gauges: flags (0/1), a state set, counts of things that are not events, a score.
UNITLESS = {"awc_ready", "awc_modality_degraded", "awc_inference_gpu_fallback", "awc_shapley_value",
            "awc_ingest_queue_depth", "awc_rehab_exercise", "awc_rehab_exercise_repetitions",
            "awc_rehab_exercise_untrained"}


def test_names_follow_the_house_rules():
    names = exported_metric_names(RuntimeMetrics())
    ours = [n for n in names if n.startswith("awc_")]
    assert ours and all(re.fullmatch(r"awc_[a-z0-9_]+", n) for n in ours)
    for n in ours:
        assert n.endswith(UNIT_SUFFIXES) or n in UNITLESS, f"{n}: no unit or kind suffix"
        assert not n.endswith("_hz"), f"{n}: base units spell hertz"
    assert "awc_tick_rate_hertz" in names


def test_no_created_series():
    text = generate_latest(RuntimeMetrics().registry).decode()
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]


def test_process_metrics_in_the_runtime_registry():
    text = generate_latest(RuntimeMetrics().registry).decode()
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    cpu = re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M)
    assert rss and float(rss.group(1)) > 1e6, "this very process uses more than 1 MB"
    assert cpu and float(cpu.group(1)) > 0


def test_silent_and_empty_are_separate_series():
    names = exported_metric_names(RuntimeMetrics())
    for n in ("awc_modality_received_ratio", "awc_modality_presence_ratio", "awc_modality_empty_ratio"):
        assert names[n] == {"modality"}, n
    assert names["awc_ingest_queue_depth"] == set()


def test_build_info_carries_version_and_model_provenance():
    m = RuntimeMetrics()
    text = generate_latest(m.registry).decode()
    assert re.search(r'^awc_build_info\{.*training_data="unknown".*\} 1\.0$', text, re.M), text
    m.set_model_build("abc123", "synthetic", "2026-12-01T14:00:00Z")
    line = next(x for x in generate_latest(m.registry).decode().splitlines() if x.startswith("awc_build_info{"))
    for part in ('model_config_hash="abc123"', 'training_data="synthetic"', 'export_date="2026-12-01T14:00:00Z"',
                 'version="'):
        assert part in line, line
    assert build_labels(training_data="made-up")["training_data"] == "unknown"
    assert set(TRAINING_DATA) == {"synthetic", "real", "unknown"}


def test_dataset_kind_tells_generated_from_real(tmp_path):
    from sensors.simulate import simulate
    from sensors.simulate.writer import dataset_kind

    assert dataset_kind(tmp_path / "nothing") == "unknown"
    real = tmp_path / "real" / "E01" / "S01" / "A02"
    real.mkdir(parents=True)
    assert dataset_kind(tmp_path / "real") == "real"
    simulate(tmp_path / "gen", preset="tiny", subjects=["S01"], actions=["A02"], progress=False)
    assert dataset_kind(tmp_path / "gen") == "synthetic"
