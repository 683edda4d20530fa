"""deploy/grafana: the committed dashboard JSON is what the generator builds, is valid for
provisioning, and queries only what the runtime exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures.deploy_tools import load_module

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "awc-pose.json"


builder = load_module(GRAFANA / "build_dashboard.py", "deploy_build_dashboard")
checks = load_module(REPO / "deploy" / "check_queries.py", "deploy_check_queries")


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_json_is_the_generated_one():
    assert DASHBOARD.read_text() == builder.render(), \
        "dashboard JSON is out of date: run python deploy/grafana/build_dashboard.py"
    assert builder.main(["--check"]) == 0


def test_dashboard_colours_every_modality_of_the_schema():
    """The generator imports nothing of the project: it reads the schema's MODALITIES with ast."""
    from sensors.core import schema

    assert tuple(builder.MODALITY_COLORS) == schema.MODALITIES


def test_dashboard_header_for_provisioning(board):
    assert board["uid"] == "awc-pose"
    assert board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 39
    assert "id" not in board or board["id"] is None, "a provisioned dashboard carries no database id"


def test_panel_ids_unique_and_grid_positions_valid(board):
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and all(isinstance(g[k], int) for k in "hwxy"), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_every_panel_has_datasource_and_targets(board):
    var_names = {v["name"] for v in board["templating"]["list"]}
    for p in panels(board):
        assert p["datasource"]["type"] == "prometheus", p["title"]
        assert p["targets"], f"{p['title']}: no queries"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"]
            uid = t["datasource"]["uid"]
            assert uid == builder.DATASOURCE_UID or uid.strip("${}") in var_names, uid


def test_station_variable_and_every_query_filters_on_it(board):
    variables = {v["name"]: v for v in board["templating"]["list"]}
    station = variables["station"]
    assert station["type"] == "query"
    assert station["definition"] == "label_values(awc_ready, station)"
    assert station["multi"] and station["includeAll"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert ds["current"]["value"] == provisioned["datasources"][0]["uid"]
    for p in panels(board):
        for t in p["targets"]:
            assert 'station=~"$station"' in t["expr"], f"{p['title']}: query ignores $station: {t['expr']}"


def test_dashboard_queries_use_exported_metrics_and_labels():
    series, closed = checks.known_series(), checks.closed_label_sets()
    found = [p for where, e in checks.dashboard_expressions().items()
             for p in checks.problems(where, e, series, closed)]
    assert found == []


def test_dashboard_covers_what_an_operator_needs(board):
    exprs = " ".join(t["expr"] for p in panels(board) for t in p["targets"])
    for metric in ("awc_contribution_share_ratio", "awc_contribution_baseline_share_ratio", "awc_shapley_value",
                   "awc_degradation_score_ratio", "awc_modality_degraded", "awc_degradation_events_total",
                   "awc_modality_presence_ratio", "awc_modality_staleness_seconds", "awc_sync_skew_seconds",
                   "awc_messages_received_total", "awc_messages_dropped_total", "awc_ticks_total",
                   "awc_end_to_end_latency_seconds_bucket", "awc_stage_duration_seconds_bucket",
                   "awc_model_info", "awc_inference_provider_info", "awc_inference_gpu_fallback", "awc_ready",
                   "awc_tick_rate_hertz", "awc_modality_received_ratio", "awc_modality_empty_ratio",
                   "awc_ingest_queue_depth", "awc_build_info", "process_resident_memory_bytes",
                   "process_cpu_seconds_total"):
        assert metric in exprs, f"no panel shows {metric}"
    share = next(p for p in panels(board) if "awc_contribution_share_ratio" in p["targets"][0]["expr"])
    assert share["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal", "shares are stacked"
    assert any("baseline" in t["expr"] for t in share["targets"]), "live shares sit next to the baseline"
    assert share.get("repeat") == "station", "stacked shares only make sense per station"
    drops = next(p for p in panels(board) if "awc_messages_dropped_total" in p["targets"][0]["expr"])
    assert "reason" in drops["targets"][0]["expr"]
    tables = {p["title"] for p in panels(board) if p["type"] == "table"}
    assert {"Served model", "Inference provider", "Build"} <= tables


def test_provisioning_points_at_the_dashboard_folder():
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/awc-pose.yml").read_text())
    p = provider["providers"][0]
    assert p["type"] == "file" and provider["apiVersion"] == 1
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["uid"] == builder.DATASOURCE_UID
