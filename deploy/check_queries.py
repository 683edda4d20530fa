"""Check every PromQL query of deploy/ against the metrics the runtime really exports.

    python deploy/check_queries.py      # prints each problem, exit 1 if any

Reads the alert and recording rules (deploy/prometheus/rules/*.yml) and the dashboard
(deploy/grafana/dashboards/awc-pose.json), lexes each expression just enough to find metric
names, label matchers and grouping labels, and compares them with
``exporters.metrics.exported_metric_names(RuntimeMetrics())`` plus the recording rules' own
names, the target labels Prometheus adds (job, instance, station) and Prometheus' built-in
series (up, ALERTS). Label values for the closed label sets (modality, reason, outcome, stage)
must be members of those sets. tests/test_deploy_config.py and tests/test_dashboard.py run it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
RULES_DIR = DEPLOY / "prometheus" / "rules"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "awc-pose.json"

TARGET_LABELS = frozenset({"job", "instance", "station"})
BUILTIN_SERIES = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity", "modality"}}
GROUPING = ("by", "without", "on", "ignoring", "group_left", "group_right")
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
FUNCTIONS = frozenset({
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "sum", "min", "max",
    "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "absent", "absent_over_time",
    "abs", "clamp", "clamp_min", "clamp_max", "avg_over_time", "max_over_time", "min_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "changes", "resets", "label_replace", "vector",
    "scalar", "time", "round", "sort", "sort_desc"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(" + "|".join(GROUPING) + r")\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


@dataclass
class Query:
    """The names found in one PromQL expression."""

    metrics: set[str] = field(default_factory=set)
    matchers: list[tuple[str | None, str, str, str]] = field(default_factory=list)  # metric, label, op, value
    grouping: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)


def parse(expr: str) -> Query:
    """Lex ``expr`` into metric names, label matchers and grouping labels (not a full parser)."""
    q = Query()
    text = _VARIABLE.sub("1m", expr)
    for m in _SELECTOR.finditer(text):
        for label, op, value in _MATCHER.findall(m.group(2)):
            q.matchers.append((m.group(1), label, op, value))
    text = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    text = _STRING.sub("", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    for _, labels in _GROUPING.findall(text):
        q.grouping.update(x.strip() for x in labels.split(",") if x.strip())
    text = _GROUPING.sub("", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", text)
    for name, call in _IDENT.findall(text):
        if name in GROUPING or name in KEYWORDS:
            continue
        if call and name not in FUNCTIONS:
            q.unknown.add(name)
        elif not call:
            q.metrics.add(name)
    return q


def rule_groups(rules_dir: Path = RULES_DIR) -> list[dict]:
    groups: list[dict] = []
    for path in sorted(rules_dir.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def rule_expressions(rules_dir: Path = RULES_DIR) -> dict[str, str]:
    """'alert X' / 'record Y' -> expression."""
    return {(f"alert {r['alert']}" if "alert" in r else f"record {r['record']}"): r["expr"]
            for g in rule_groups(rules_dir) for r in g["rules"]}


def recorded_labels(rules_dir: Path = RULES_DIR) -> dict[str, set[str]]:
    """Recording rule name -> labels it carries besides the target labels (from its level prefix)."""
    out = {}
    for g in rule_groups(rules_dir):
        for r in g["rules"]:
            if "record" in r:
                level = r["record"].split(":")[0]
                out[r["record"]] = set(level.split("_")) - {"instance"}
    return out


def dashboard_expressions(path: Path = DASHBOARD) -> dict[str, str]:
    """'panel <id> <title> <refId>' -> expression, plus the template variables' queries."""
    board = json.loads(path.read_text())
    out = {}
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            out[f"panel {panel['id']} {panel['title']!r} {t['refId']}"] = t["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            out[f"variable {var['name']}"] = f"{m.group(1)}{{{m.group(2)}!=\"\"}}" if m else var["definition"]
    return out


def known_series() -> dict[str, set[str]]:
    """Every series name a query may use -> its labels (target labels excluded)."""
    from exporters.metrics import RuntimeMetrics, exported_metric_names

    series = {name: set(labels) for name, labels in exported_metric_names(RuntimeMetrics()).items()}
    series.update({k: set(v) for k, v in BUILTIN_SERIES.items()})
    series.update(recorded_labels())
    return series


def closed_label_sets() -> dict[str, set[str]]:
    from exporters import metrics as m
    from sensors.core import schema

    return {"modality": set(m.MODALITY_LABELS) | {schema.UNKNOWN_MODALITY}, "reason": set(m.DROP_REASONS) | set(m.HANDSHAKE_FAILURE_REASONS),
            "outcome": set(m.TICK_OUTCOMES), "stage": set(m.STAGES),
            "alertstate": {"pending", "firing"}}


def problems(where: str, expr: str, series: dict[str, set[str]], closed: dict[str, set[str]]) -> list[str]:
    """Every mismatch between ``expr`` and the exported series, as readable sentences."""
    q = parse(expr)
    out = [f"{where}: unknown function {f}() in {expr!r}" for f in sorted(q.unknown)]
    if not q.metrics:
        out.append(f"{where}: no metric name found in {expr!r}")
    for name in sorted(q.metrics - series.keys()):
        out.append(f"{where}: metric {name!r} is not exported by RuntimeMetrics nor recorded by a rule "
                   f"(expected one of the awc_* names in exporters/metrics.py)")
    labels_here = set().union(*(series.get(n, set()) for n in q.metrics)) | TARGET_LABELS
    for metric, label, op, value in q.matchers:
        allowed = (series.get(metric, set()) if metric else labels_here) | TARGET_LABELS
        if label not in allowed and label != "__name__":
            out.append(f"{where}: label {label!r} is not on {metric or 'these series'} "
                       f"(it carries {sorted(allowed)})")
        if label in closed and op in ("=", "=~", "!=") and not re.search(r"[.*+?\\()\[\]]", value):
            for v in value.split("|") if op == "=~" else [value]:
                if v not in closed[label]:
                    out.append(f"{where}: {label}={v!r} is not in the closed set {sorted(closed[label])}")
    for label in sorted(q.grouping - labels_here - {"le"}):
        out.append(f"{where}: grouping label {label!r} is on none of {sorted(q.metrics)}")
    return out


def check_all() -> list[str]:
    series, closed = known_series(), closed_label_sets()
    exprs = {**rule_expressions(), **dashboard_expressions()}
    return [p for where, e in exprs.items() for p in problems(where, e, series, closed)]


def main() -> int:
    found = check_all()
    for p in found:
        print(p)
    print(f"{len(found)} problem(s) in deploy/ queries")
    return 1 if found else 0


if __name__ == "__main__":
    sys.path.insert(0, str(DEPLOY.parent))
    raise SystemExit(main())
