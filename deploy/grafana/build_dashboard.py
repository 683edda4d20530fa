"""Build the awc-pose Grafana dashboard (deploy/grafana/dashboards/awc-pose.json) as plain data.

    python deploy/grafana/build_dashboard.py           # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check   # exit 1 if the committed JSON is out of date

Standard library only, so the generator runs anywhere. The queries use the metric names of
exporters/metrics.py (tests/test_dashboard.py checks them against the runtime). Every per-station
query filters on the `station` target label through the `$station` variable; the data source is
the `$datasource` variable, which defaults to the provisioned Prometheus (uid `awc-prometheus`).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

UID = "awc-pose"
TITLE = "awc-pose station"
SCHEMA_VERSION = 41  # Grafana 12.x
DATASOURCE_UID = "awc-prometheus"
DS = {"type": "prometheus", "uid": "${datasource}"}
OUT = Path(__file__).resolve().parent / "dashboards" / "awc-pose.json"

SEL = 'station=~"$station"'
RATE = "$__rate_interval"
SCHEMA = Path(__file__).resolve().parents[2] / "sensors" / "core" / "schema.py"
PALETTE = ("blue", "green", "orange", "purple", "red", "yellow", "dark-blue", "dark-green")


def schema_modalities(path: Path = SCHEMA) -> tuple[str, ...]:
    """``MODALITIES`` of the project's schema, read from its source with ``ast`` (the generator
    imports nothing of the project, so it runs without it installed)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "MODALITIES" for t in targets):
                return tuple(ast.literal_eval(node.value))
    raise SystemExit(f"{path}: no MODALITIES tuple found")


MODALITY_COLORS = dict(zip(schema_modalities(), PALETTE, strict=False))   # a colour per modality, in order
LATENCY_BUDGET_S = 0.100  # one tick period at the default 10 Hz (the AwcLatencyHigh threshold)


@dataclass
class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line."""

    y: int = 0
    x: int = 0
    line_h: int = 0
    next_id: int = 1
    panels: list[dict] = field(default_factory=list)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append({"id": self._id(), "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def newline(self) -> None:
        self.y += self.line_h
        self.x, self.line_h = 0, 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel = {"id": self._id(), **panel, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        self.panels.append(panel)
        self.x += w
        self.line_h = max(self.line_h, h)


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> dict:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, "range": not instant,
            "instant": instant, "format": fmt, "editorMode": "code"}


def modality_colors() -> list[dict]:
    """Same colour for a modality in every panel, whatever the station prefix of the series name."""
    return [{"matcher": {"id": "byRegexp", "options": f".*\\b{m}\\b.*"},
             "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": c}}]}
            for m, c in MODALITY_COLORS.items()]


def timeseries(title: str, description: str, targets: list[dict], unit: str, *, stacked: bool = False,
               minimum: float | None = None, maximum: float | None = None, threshold: float | None = None,
               overrides: list[dict] | None = None, by_modality: bool = True, repeat: str | None = None,
               fill: int = 10) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 60 if stacked else fill,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stacked else "none", "group": "A"}}
    steps = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
        custom["thresholdsStyle"] = {"mode": "dashed"}
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"},
                "thresholds": {"mode": "absolute", "steps": steps}}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    panel = {"type": "timeseries", "title": title, "description": description, "datasource": DS,
             "targets": targets,
             "fieldConfig": {"defaults": defaults,
                             "overrides": (modality_colors() if by_modality else []) + (overrides or [])},
             "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                         "tooltip": {"mode": "multi", "sort": "desc"}}}
    if repeat:
        panel.update({"repeat": repeat, "repeatDirection": "h", "maxPerRow": 2})
    return panel


def stat(title: str, description: str, targets: list[dict], unit: str = "none",
         mappings: list[dict] | None = None, steps: list[dict] | None = None) -> dict:
    return {"type": "stat", "title": title, "description": description, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                         "color": {"mode": "thresholds"},
                                         "thresholds": {"mode": "absolute",
                                                        "steps": steps or [{"color": "green", "value": None}]}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                        "orientation": "auto", "justifyMode": "auto", "wideLayout": True}}


def table(title: str, description: str, expr: str, hide: tuple[str, ...]) -> dict:
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, instant=True, fmt="table")],
            "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
            "options": {"showHeader": True, "cellHeight": "sm"},
            "transformations": [{"id": "organize",
                                 "options": {"excludeByName": dict.fromkeys(hide, True), "renameByName": {}}}]}


def flag_mappings(zero: tuple[str, str], one: tuple[str, str]) -> list[dict]:
    return [{"type": "value", "options": {
        "0": {"text": zero[0], "color": zero[1], "index": 0},
        "1": {"text": one[0], "color": one[1], "index": 1}}}]


def overview(lay: Layout) -> None:
    lay.row("Overview")
    lay.add(stat("Runtime up", "Prometheus scrape of the runtime's /metrics succeeded.",
                 [target(f'up{{job="awc-runtime", {SEL}}}', "{{station}}")],
                 mappings=flag_mappings(("DOWN", "red"), ("UP", "green"))), 6, 4)
    lay.add(stat("Ready", "Model loaded and ZeroMQ ingest running (awc_ready).",
                 [target(f"awc_ready{{{SEL}}}", "{{station}}")],
                 mappings=flag_mappings(("NOT READY", "red"), ("READY", "green"))), 6, 4)
    lay.add(stat("Pose rate", "Fused or partial poses published per second (target: the tick rate).",
                 [target(f'sum by (station) (rate(awc_ticks_total{{{SEL}, outcome=~"fused|partial"}}[{RATE}]))',
                         "{{station}}")], unit="hertz"), 6, 4)
    lay.add(stat("GPU fallback", "1 when CUDA was requested but onnxruntime runs the CPU provider.",
                 [target(f"awc_inference_gpu_fallback{{{SEL}}}", "{{station}}")],
                 mappings=flag_mappings(("OK", "green"), ("CPU FALLBACK", "orange"))), 6, 4)
    lay.add(table("Firing alerts", "Prometheus alerts firing for the selected stations (see deploy/README.md).",
                  f'ALERTS{{alertstate="firing", {SEL}}}', ("Time", "Value", "__name__", "alertstate")), 24, 5)


def contributions(lay: Layout) -> None:
    lay.row("Contributions")
    baseline_style = [{"matcher": {"id": "byFrameRefID", "options": "B"},
                       "properties": [{"id": "custom.stacking", "value": {"mode": "normal", "group": "B"}},
                                      {"id": "custom.fillOpacity", "value": 0},
                                      {"id": "custom.lineWidth", "value": 2},
                                      {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]
    lay.add(timeseries(
        "Contribution share: live (areas) vs validation baseline (dashed) - $station",
        "Live Shapley share of each modality over the sliding window, stacked (the paper's Figure 4, live). "
        "Dashed lines: the same shares stacked as measured on validation data (model metadata).",
        [target(f"awc_contribution_share_ratio{{{SEL}}}", "{{modality}}"),
         target(f"awc_contribution_baseline_share_ratio{{{SEL}}}", "baseline {{modality}}", "B")],
        "percentunit", stacked=True, overrides=baseline_style, repeat="station"), 24, 9)
    lay.add(timeseries(
        "Shapley value (Pearson profit)",
        "Live Shapley value of each modality: its average marginal gain in summed Pearson profit.",
        [target(f"awc_shapley_value{{{SEL}}}", "{{station}} {{modality}}")], "none"), 24, 7)


def degradation(lay: Layout) -> None:
    lay.row("Degradation")
    lay.add(timeseries(
        "Degradation score", "Per-modality degradation score in [0, 1] (1 = failed), EWMA.",
        [target(f"awc_degradation_score_ratio{{{SEL}}}", "{{station}} {{modality}}")],
        "percentunit", minimum=0, maximum=1, threshold=0.5), 9, 8)
    lay.add({"type": "state-timeline", "title": "Degraded flag",
             "description": "1 while the runtime flags the modality degraded (with hysteresis).",
             "datasource": DS, "targets": [target(f"awc_modality_degraded{{{SEL}}}", "{{station}} {{modality}}")],
             "fieldConfig": {"defaults": {"mappings": flag_mappings(("ok", "green"), ("DEGRADED", "red")),
                                          "color": {"mode": "thresholds"},
                                          "thresholds": {"mode": "absolute",
                                                         "steps": [{"color": "green", "value": None}]}},
                             "overrides": []},
             "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                         "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}}}, 9, 8)
    lay.add(stat("Degradation events", "Times each modality became flagged degraded in the time range.",
                 [target(f"increase(awc_degradation_events_total{{{SEL}}}[$__range])",
                         "{{station}} {{modality}}", instant=True)],
                 steps=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]), 6, 8)


def inputs(lay: Layout) -> None:
    lay.row("Sensor inputs")
    lay.add(timeseries("Received", "Fraction of recent ticks that found a message of the modality, "
                       "empty frames included (EWMA). Low = the sensor is silent.",
                       [target(f"awc_modality_received_ratio{{{SEL}}}", "{{station}} {{modality}}")],
                       "percentunit", minimum=0, maximum=1), 8, 8)
    lay.add(timeseries("Presence", "Fraction of recent ticks with the modality's input present to the model "
                       "(EWMA); an empty point cloud is absent to the model.",
                       [target(f"awc_modality_presence_ratio{{{SEL}}}", "{{station}} {{modality}}")],
                       "percentunit", minimum=0, maximum=1), 8, 8)
    lay.add(timeseries("Empty frames", "Fraction of recent ticks whose message was an empty point cloud "
                       "(EWMA): the sensor runs but saw nothing (a still subject gives the radar no detections).",
                       [target(f"awc_modality_empty_ratio{{{SEL}}}", "{{station}} {{modality}}")],
                       "percentunit", minimum=0, maximum=1), 8, 8)
    lay.add(timeseries("Staleness", "Age of the newest sample of each modality at the tick.",
                       [target(f"awc_modality_staleness_seconds{{{SEL}}}", "{{station}} {{modality}}")],
                       "s", minimum=0, threshold=1.0), 8, 8)
    lay.add(timeseries("Sync skew", "Capture time of the used sample minus the tick time (EWMA).",
                       [target(f"awc_sync_skew_seconds{{{SEL}}}", "{{station}} {{modality}}")], "s"), 8, 8)
    lay.add(timeseries("Messages received", "Valid sensor messages per second by modality.",
                       [target(f"sum by (station, modality) (rate(awc_messages_received_total{{{SEL}}}[{RATE}]))",
                               "{{station}} {{modality}}")], "reqps", minimum=0), 12, 8)
    lay.add(timeseries("Messages dropped by reason",
                       "Rejected or lost sensor messages per second (sequence_gap = lost upstream, "
                       "queue_full = inference behind, others = malformed input). Only non-zero series.",
                       [target(f"sum by (station, modality, reason) "
                               f"(rate(awc_messages_dropped_total{{{SEL}}}[{RATE}])) > 0",
                               "{{station}} {{modality}} {{reason}}")], "reqps", minimum=0,
                       by_modality=False), 12, 8)
    lay.add(timeseries("Refused CurveZMQ handshakes",
                       "Handshakes refused in the last rate window on the sensor socket (a sensor with an "
                       "unknown key, the wrong server key or no encryption: its data never arrives) and on "
                       "the pose socket (a viewer or reader without an allowed key). Only non-zero series.",
                       [target(f"sum by (station, reason) (increase(awc_ingest_handshake_failures_total"
                               f"{{{SEL}}}[{RATE}])) > 0", "{{station}} sensor {{reason}}", "A"),
                        target(f"sum by (station, reason) (increase(awc_pose_handshake_failures_total"
                               f"{{{SEL}}}[{RATE}])) > 0", "{{station}} pose reader {{reason}}", "B")],
                       "short", minimum=0, by_modality=False), 24, 8)


def latency(lay: Layout) -> None:
    lay.row("Latency and throughput")
    e2e = f"sum by (station, le) (rate(awc_end_to_end_latency_seconds_bucket{{{SEL}}}[{RATE}]))"
    lay.add(timeseries(
        "End-to-end latency", "Newest used capture time to pose published; dashed: the p99 budget, one tick period (100 ms at 10 Hz).",
        [target(f"histogram_quantile({q}, {e2e})", f"{{{{station}}}} p{round(q * 100)}", ref)
         for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))],
        "s", minimum=0, threshold=LATENCY_BUDGET_S, by_modality=False), 12, 8)
    stage = f"sum by (station, stage, le) (rate(awc_stage_duration_seconds_bucket{{{SEL}}}[{RATE}]))"
    lay.add(timeseries(
        "Stage time per tick (p99)", "99th percentile of the time each pipeline stage takes per tick.",
        [target(f"histogram_quantile(0.99, {stage})", "{{station}} {{stage}}")],
        "s", minimum=0, by_modality=False), 12, 8)
    lay.add(timeseries(
        "Ticks by outcome", "Sync ticks per second: fused (all present), partial, empty, dropped (behind).",
        [target(f"sum by (station, outcome) (rate(awc_ticks_total{{{SEL}}}[{RATE}]))",
                "{{station}} {{outcome}}")],
        "hertz", stacked=True, minimum=0, by_modality=False,
        overrides=[{"matcher": {"id": "byRegexp", "options": f".*\\b{o}$"},
                    "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": c}}]}
                   for o, c in (("fused", "green"), ("partial", "yellow"), ("empty", "orange"),
                                ("dropped", "red"))]), 12, 8)
    lay.add(timeseries(
        "Configured tick rate", "Sync tick rate the runtime is configured for.",
        [target(f"awc_tick_rate_hertz{{{SEL}}}", "{{station}}")], "hertz", minimum=0, by_modality=False), 12, 8)
    lay.add(timeseries(
        "Ingest queue depth", "Decoded sensor messages waiting for the tick loop (full = queue_full drops).",
        [target(f"awc_ingest_queue_depth{{{SEL}}}", "{{station}}")], "short", minimum=0, by_modality=False), 12, 8)


def model(lay: Layout) -> None:
    lay.row("Model and inference provider")
    lay.add(table("Served model", "Schema version, fusion, config hash, window and caps of the ONNX model.",
                  f"awc_model_info{{{SEL}}}", ("Time", "Value", "__name__", "job")), 12, 5)
    lay.add(table("Inference provider", "Execution provider requested and really used by onnxruntime.",
                  f"awc_inference_provider_info{{{SEL}}}", ("Time", "Value", "__name__", "job")), 12, 5)
    lay.add(table("Build", "Package version; the served model's config hash, training data (synthetic or "
                  "real) and export date.", f"awc_build_info{{{SEL}}}", ("Time", "Value", "__name__", "job")), 12, 5)
    lay.add(timeseries(
        "Runtime process", "Resident memory (left) and CPU use in cores (right) of each runtime process.",
        [target(f"process_resident_memory_bytes{{job=\"awc-runtime\", {SEL}}}", "{{station}} RSS", "A"),
         target(f"rate(process_cpu_seconds_total{{job=\"awc-runtime\", {SEL}}}[{RATE}])", "{{station}} CPU", "B")],
        "bytes", minimum=0, by_modality=False,
        overrides=[{"matcher": {"id": "byRegexp", "options": ".*CPU$"},
                    "properties": [{"id": "unit", "value": "percentunit"},
                                   {"id": "custom.axisPlacement", "value": "right"}]}]), 12, 5)


def rehab(lay: Layout) -> None:
    lay.row("Rehabilitation")
    lay.add(stat("Exercise", "Current exercise of each station (P2 code or unknown), from the config, "
                 "`runtime serve --exercise` or a client's `exercise` header field (docs/rehab.md).",
                 [target(f"awc_rehab_exercise{{{SEL}}} == 1", "{{station}} {{exercise}}", instant=True)]), 5, 5)
    lay.add(stat("Exercise untrained", "1 while the current exercise is one the served model was never trained "
                 "on (its contract's training facts): every repetition and angle of it is untrusted (docs/rehab.md).",
                 [target(f"awc_rehab_exercise_untrained{{{SEL}}}", "{{station}}", instant=True)],
                 steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]), 4, 5)
    lay.add(stat("Repetitions", "Repetitions counted since the current exercise started.",
                 [target(f"awc_rehab_exercise_repetitions{{{SEL}}}", "{{station}}")]), 5, 5)
    lay.add(stat("Low-confidence repetitions", "Repetitions in the time range whose figures are not to be trusted: "
                 "a key modality (RGB or LiDAR by default) degraded during it or absent for most of it, implausible "
                 "poses, or an exercise the model never learnt (docs/rehab.md, Trust).",
                 [target(f"sum by (station) (increase(awc_rehab_low_confidence_repetitions_total{{{SEL}}}"
                         f"[$__range]))", "{{station}}", instant=True)],
                 steps=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]), 5, 5)
    lay.add(stat("Last range of motion", "Range of motion of the last counted repetition, per angle and side.",
                 [target(f"awc_rehab_last_range_of_motion_degrees{{{SEL}}} > 0", "{{station}} {{angle}} {{side}}",
                         instant=True)], unit="degree"), 5, 5)
    lay.add(timeseries("Limb angles", "Joint angles of the live pose, causally smoothed (definitions in "
                       "docs/rehab.md); the exact per-tick values are on the pose stream.",
                       [target(f'awc_joint_angle_degrees{{{SEL}, side=~"left|right"}}',
                               "{{station}} {{angle}} {{side}}")], "degree", by_modality=False), 16, 8)
    lay.add(timeseries("Trunk lean", "Trunk axis from the vertical: sagittal (positive forward) and frontal "
                       "(positive to the subject's left).",
                       [target(f'awc_joint_angle_degrees{{{SEL}, side="none"}}', "{{station}} {{angle}}")],
                       "degree", by_modality=False), 8, 8)
    lay.add(timeseries("Repetition rate", "Repetitions per minute, by principal angle and side.",
                       [target(f"60 * sum by (station, angle, side) (rate(awc_rehab_repetitions_total{{{SEL}}}"
                               f"[{RATE}]))", "{{station}} {{angle}} {{side}}")], "none", by_modality=False), 16, 6)
    lay.add(timeseries("Dropped angle samples", "Raw joint-angle samples per minute dropped as outside the "
                       "physiological range (docs/rehab.md): gross pose errors. A steady rate on one angle means "
                       "its repetitions are measured on held values (see low-confidence repetitions).",
                       [target(f"60 * sum by (station, angle, side) (rate(awc_joint_angle_implausible_samples_total"
                               f"{{{SEL}}}[{RATE}])) > 0", "{{station}} {{angle}} {{side}}")], "none",
                       by_modality=False), 8, 6)
    lay.add(timeseries("Implausible poses", "Ticks per minute whose pose failed a plausibility check: a limb bone "
                       "off its session median, an angle outside the physiological range, jitter (docs/rehab.md). "
                       "A repetition with many is low-confidence.",
                       [target(f"60 * sum by (station, check) (rate(awc_rehab_implausible_pose_ticks_total"
                               f"{{{SEL}}}[{RATE}])) > 0", "{{station}} {{check}}")], "none",
                       by_modality=False), 24, 6)


def templating() -> dict:
    station_query = "label_values(awc_ready, station)"
    return {"list": [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {"text": "Prometheus", "value": DATASOURCE_UID}, "hide": 0, "refresh": 1,
         "options": [], "regex": "", "includeAll": False, "multi": False},
        {"type": "query", "name": "station", "label": "Station", "datasource": DS,
         "definition": station_query,
         "query": {"query": station_query, "refId": "PrometheusVariableQueryEditor-VariableQuery",
                   "qryType": 1},
         "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
         "current": {"text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0, "regex": ""},
    ]}


def build() -> dict:
    lay = Layout()
    for section in (overview, contributions, degradation, inputs, latency, model, rehab):
        section(lay)
    return {
        "uid": UID, "title": TITLE, "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True,
        "description": "Live per-modality Shapley contributions, degradation, sensor input health, "
                       "latency and throughput of awc-pose runtimes, one `station` per runtime.",
        "tags": ["awc-pose", "pose", "multi-modal"], "timezone": "browser", "graphTooltip": 1,
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"}, "timepicker": {},
        "fiscalYearStartMonth": 0, "liveNow": False, "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "templating": templating(), "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run python deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
