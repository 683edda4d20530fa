"""deploy/: Prometheus config and rules (promtool), query names against the runtime's metrics,
compose and systemd structure. promtool comes from Debian's `prometheus` package; without it
these tests skip, except under CI (CI=true) where they fail."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures.deploy_tools import load_module, require_tool

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning"}


checks = load_module(DEPLOY / "check_queries.py", "deploy_check_queries")


def alert_rules() -> list[dict]:
    return [r for g in checks.rule_groups() for r in g["rules"] if "alert" in r]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


# --- promtool -------------------------------------------------------------------------------------

def test_promtool_check_config():
    r = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 rule files found" in r.stdout + r.stderr, "prometheus.yml must load both rule files"


def test_promtool_check_rules():
    files = sorted(str(p) for p in (PROM / "rules").glob("*.yml"))
    assert len(files) == 2
    r = promtool("check", "rules", *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS, "no promtool rule tests in deploy/prometheus/tests"
    r = promtool("test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_rule_unit_tests_can_fail(tmp_path):
    """The unit tests really check alerts: expecting a wrong severity makes promtool fail."""
    text = RULE_TESTS[0].read_text().replace("severity: critical", "severity: warning", 1)
    broken = tmp_path / "broken_test.yml"
    broken.write_text(text.replace("../rules/", f"{PROM / 'rules'}/"))
    r = promtool("test", "rules", str(broken))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


# --- the rules themselves ---------------------------------------------------------------------

def test_every_alert_has_severity_for_and_annotations():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for r in rules:
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert re.fullmatch(r"\d+[smh]", str(r.get("for", ""))), f"{r['alert']}: needs a for: duration"
        assert {"summary", "description"} <= set(r["annotations"]), r["alert"]


def test_the_required_alerts_exist():
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    wanted = {
        "AwcModalityDegraded": "awc_modality_degraded",
        "AwcModalityAbsent": "awc_modality_received_ratio",
        "AwcContributionCollapsed": "awc_contribution_baseline_share_ratio",
        "AwcTicksDropped": 'outcome="dropped"',
        "AwcLatencyHigh": "p99",
        "AwcRuntimeDown": 'up{job="awc-runtime"} == 0',
        "AwcRuntimeAbsent": "absent(",
        "AwcGpuFallback": "awc_inference_gpu_fallback == 1",
        "AwcNoPoses": "awc_ready == 0",
    }
    for name, fragment in wanted.items():
        assert name in exprs and fragment in exprs[name], f"{name}: expected an expression using {fragment!r}"
    assert "1 / awc_tick_rate_hertz" in exprs["AwcLatencyHigh"], "latency budget: one tick period"
    # Silent, not empty: an empty radar frame is a received message.
    assert "awc_modality_received_ratio" in exprs["AwcModalityAbsent"]
    assert "presence" not in exprs["AwcModalityAbsent"]
    severities = {r["alert"]: r["labels"]["severity"] for r in alert_rules()}
    assert severities["AwcNoPoses"] == "critical"


def test_every_alert_links_its_runbook_section_from_one_absolute_base():
    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for r in alert_rules():
        url = r["annotations"].get("runbook_url", "")
        assert url == "{{ $externalLabels.runbook_base }}#" + r["alert"].lower(), f"{r['alert']}: runbook_url {url!r}"
        assert url.split("#")[1] in anchors, f"{r['alert']}: docs/runbook.md has no section {url}"
    base = yaml.safe_load((PROM / "prometheus.yml").read_text())["global"]["external_labels"]["runbook_base"]
    assert re.fullmatch(r"https://[a-z0-9.-]+/\S*docs/runbook\.md", base), base


def test_alert_text_formats_every_value_readably():
    """Every $value in alert text goes through a humanize function; raw floats read "2.276e-22%"."""
    for r in alert_rules():
        for key, text in r["annotations"].items():
            for use in re.findall(r"\{\{[^}]*\$value[^}]*\}\}", text):
                assert "humanize" in use, f"{r['alert']}.{key}: {use} prints a raw number"


def test_every_alert_is_unit_tested_firing_and_quiet():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        rule_files = {(path.parent / f).resolve() for f in doc["rule_files"]}
        assert rule_files == {p.resolve() for p in (PROM / "rules").glob("*.yml")}, path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in alert_rules()}
    assert alerts - firing == set(), f"alerts never tested firing: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"alerts never tested quiet: {sorted(alerts - quiet)}"
    assert (firing | quiet) - alerts == set(), "tests name alerts that do not exist"


def test_every_recording_rule_is_unit_tested():
    tested = {case["expr"].strip() for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("promql_expr_test", []) if case.get("exp_samples")}
    missing = set(checks.recorded_labels()) - tested
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


# --- names against the runtime --------------------------------------------------------------

def test_rule_queries_use_exported_metrics_and_labels():
    series, closed = checks.known_series(), checks.closed_label_sets()
    found = [p for where, e in checks.rule_expressions().items()
             for p in checks.problems(where, e, series, closed)]
    assert found == []


def test_query_checker_catches_wrong_names_labels_and_values():
    series, closed = checks.known_series(), checks.closed_label_sets()
    bad = {
        'rate(awc_messages_recieved_total[1m])': "not exported",
        'awc_modality_presence_ratio{sensor="lidar"}': "label 'sensor'",
        'awc_ticks_total{outcome="skipped"}': "closed set",
        'sum by (stage) (awc_modality_degraded)': "grouping label 'stage'",
        'awc_ready > bogus_fn(awc_ready)': "unknown function",
    }
    for expr, expected in bad.items():
        found = checks.problems("t", expr, series, closed)
        assert any(expected in p for p in found), f"{expr}: {found}"
    assert checks.problems("t", 'histogram_quantile(0.99, sum by (le, stage) '
                           '(rate(awc_stage_duration_seconds_bucket{stage="inference"}[1m])))',
                           series, closed) == []


def test_recording_rule_names_follow_level_metric_operation():
    for name in checks.recorded_labels():
        level, metric, op = name.split(":")
        assert level.startswith("instance") and metric.startswith("awc_") and op, name


# --- scrape config ---------------------------------------------------------------------------

def test_scrape_config_targets_carry_a_station_label():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "awc-runtime")
    assert job["scrape_interval"] == "5s"
    for pattern in cfg["rule_files"]:
        assert list(PROM.glob(pattern)), f"rule_files {pattern} matches nothing"
    for folder in (PROM / "targets", DEPLOY / "compose" / "targets"):
        groups = [g for f in folder.glob("*.yml") for g in yaml.safe_load(f.read_text())]
        assert groups, f"no target groups in {folder}"
        for g in groups:
            assert g["targets"] and g["labels"]["station"], g
            assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in g["targets"]), g
    compose_targets = yaml.safe_load((DEPLOY / "compose" / "targets" / "compose.yml").read_text())
    assert compose_targets[0]["targets"] == ["runtime:9108"]


# --- compose ---------------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_and_pinned_images():
    services = compose()["services"]
    assert {"runtime", "replay", "prometheus", "alertmanager", "grafana"} <= set(services)
    digest = r"@sha256:[0-9a-f]{64}"
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+" + digest, services["prometheus"]["image"])
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+" + digest, services["alertmanager"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+" + digest, services["grafana"]["image"])
    for name, svc in services.items():
        assert "build" in svc or re.search(digest + "$", svc["image"]), f"{name}: image not pinned by digest"
    for name, svc in services.items():
        if "build" in svc:
            dockerfile = (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            stages = re.findall(r"^FROM (\S+) AS (\w+)", dockerfile.read_text(), re.M)
            assert svc["build"]["target"] in {s for _, s in stages}, name
            assert stages[0][0] == "python:3.11-slim"


def run_compose_schema_check(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with its vendored compose-spec schema (the dev extra installs it)."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_spec_schema(tmp_path):
    r = run_compose_schema_check(DEPLOY / "compose.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    broken = compose()
    broken["services"]["runtime"]["healthcheck"]["retries"] = "three"   # the schema wants a number
    broken["services"]["grafana"]["restart_policy"] = "always"          # not a compose key
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    r = run_compose_schema_check(tmp_path / "compose.yaml")
    assert r.returncode != 0 and "restart_policy" in r.stdout + r.stderr, r.stdout + r.stderr


def test_compose_long_running_services_have_healthchecks():
    services = compose()["services"]
    for name, svc in services.items():
        one_shot = "restart" not in svc
        if one_shot:   # data, model: others wait for them with service_completed_successfully
            waiting = [s for s in services.values()
                       if s.get("depends_on", {}) and isinstance(s["depends_on"], dict)
                       and s["depends_on"].get(name, {}).get("condition") == "service_completed_successfully"]
            assert waiting, f"one-shot {name} gates nothing"
            continue
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    runtime_check = " ".join(services["runtime"]["healthcheck"]["test"])
    assert "/readyz" in runtime_check, "the runtime is healthy when it is ready (poses flowing)"
    # The runtime is ready only once the replay feeds it: waiting for service_healthy would deadlock.
    assert services["replay"]["depends_on"]["runtime"]["condition"] == "service_started"


def test_compose_bind_mounts_point_at_files_that_exist():
    doc = compose()
    named = set(doc.get("volumes", {}))
    for name, svc in doc["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_compose_keeps_the_runtime_off_the_host():
    services = compose()["services"]
    runtime = services["runtime"]
    assert "ports" not in runtime, "runtime metrics and sensor ports must stay on the compose network"
    for name in ("prometheus", "alertmanager", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    mount = next(v for v in runtime["volumes"] if v.endswith("/etc/awc-pose/runtime.yaml:ro"))
    from runtime.config import RuntimeConfig

    cfg = RuntimeConfig.load(DEPLOY / mount.split(":")[0])
    assert cfg.metrics.host == "0.0.0.0" and cfg.metrics.port == 9108
    assert cfg.inputs.endpoints == ("tcp://0.0.0.0:5555",) and cfg.inputs.bind
    replay = " ".join(services["replay"]["command"])
    assert "sensors replay" in replay and "--connect tcp://runtime:5555" in replay


def test_compose_mounts_match_prometheus_and_grafana_paths():
    services = compose()["services"]
    prom_cmd = " ".join(services["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_cmd
    prom_mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules", "/etc/prometheus/targets",
            "/etc/prometheus/alertmanagers"} <= prom_mounts
    am = services["alertmanager"]
    am_mounts = {v.split(":")[1]: v.split(":")[0] for v in am["volumes"]}
    config_flag = next(a for a in am["command"] if a.startswith("--config.file="))
    assert am_mounts[config_flag.split("=", 1)[1]] == "./alertmanager/alertmanager.yml"
    sd = [g for f in (DEPLOY / "compose" / "alertmanagers").glob("*.yml") for g in yaml.safe_load(f.read_text())]
    assert sd == [{"targets": ["alertmanager:9093"]}]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/awc-pose.yml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    graf_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert graf_mounts[dash_path] == "./grafana/dashboards"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# --- systemd ---------------------------------------------------------------------------------

def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd" / name)
    return parser


def env_file(name: str) -> dict[str, str]:
    lines = (DEPLOY / "systemd" / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_runtime_unit_is_hardened_and_restarts():
    svc = unit("awc-runtime.service")["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["EnvironmentFile"] == "/etc/awc-pose/runtime.env"
    assert svc["User"] != "root"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": "", "RestrictNamespaces": "yes",
                       "SystemCallFilter": "@system-service"}.items():
        assert svc.get(key) == value, f"{key}={svc.get(key)!r}, expected {value!r}"
    assert " serve " in svc["ExecStart"]
    # READY=1 and the watchdog come from runtime.sdnotify, which `runtime serve` calls.
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert re.fullmatch(r"\d+s", svc["WatchdogSec"]) and int(svc["WatchdogSec"][:-1]) >= 10


@pytest.mark.parametrize("name,env", [("awc-runtime.service", "runtime.env"), ("awc-replay.service", "replay.env")])
def test_unit_variables_are_defined_in_its_environment_file(name, env):
    used = set(re.findall(r"\$\{?(\w+)\}?", unit(name)["Service"]["ExecStart"]))
    defined = env_file(env)
    assert used and used <= set(defined), f"{name} uses {sorted(used - set(defined))} not set in {env}"
    if name == "awc-runtime.service":
        assert defined["AWC_CONFIG"] == "/etc/awc-pose/runtime.yaml"
        from runtime.config import RuntimeConfig

        cfg = RuntimeConfig.load(DEPLOY / "systemd" / "runtime.yaml")
        assert cfg.metrics.host == "127.0.0.1", "a bare station keeps metrics on loopback"


def test_systemd_analyze_verify(tmp_path):
    """systemd's own parser accepts the units (executables pointed at this environment)."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed")
    bindir = str(Path(sys.executable).parent)
    for name in ("awc-runtime.service", "awc-replay.service"):
        if not (Path(bindir) / ("runtime" if "runtime" in name else "sensors")).exists():
            pytest.skip(f"console scripts not installed in {bindir}")
        text = (DEPLOY / "systemd" / name).read_text().replace("/opt/awc-pose/venv/bin", bindir)
        text = re.sub(r"^EnvironmentFile=.*$", "EnvironmentFile=-/dev/null", text, flags=re.M)
        (tmp_path / name).write_text(text)
    r = subprocess.run([tool, "verify", *(str(p) for p in sorted(tmp_path.glob("*.service")))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Unknown" not in r.stderr and "ignoring" not in r.stderr, r.stderr


# --- the shipped command lines parse with the real CLIs ---------------------------------------

def parse_cli(module_name: str, argv: list[str]):
    import argparse
    import importlib

    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(exit_on_error=False)
    module.add_arguments(parser)
    return parser.parse_args(argv)


def shell_words(command: list[str] | str, env: dict[str, str]) -> list[str]:
    """A compose command or systemd ExecStart as argv, with $VAR / ${VAR} / $$VAR filled from env."""
    import shlex

    text = command[-1] if isinstance(command, list) and command[:2] == ["sh", "-c"] else command
    if isinstance(text, list):
        return text
    text = re.sub(r"\$\$?\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), text)
    words = shlex.split(text)
    return words[1:] if words[0] == "exec" else words


def test_compose_commands_parse_with_the_real_clis():
    from runtime.serve import config_from_args

    services = compose()["services"]
    argv = shell_words(services["runtime"]["command"], {})
    assert argv[:2] == ["runtime", "serve"]
    args = parse_cli("runtime.serve", argv[2:])
    args.config = str(DEPLOY / "compose" / "runtime.yaml")  # where the compose file mounts it from
    assert config_from_args(args).metrics.host == "0.0.0.0"
    argv = shell_words(services["replay"]["command"], {"AWC_REPLAY_ARGS": "--fault lidar:stop@30"})
    assert argv[:2] == ["sensors", "replay"]
    args = parse_cli("sensors.replay", argv[2:])
    assert args.connect == "tcp://runtime:5555" and args.fault == ["lidar:stop@30"]
    data_cmd = services["data"]["command"][-1]
    args = parse_cli("sensors.simulate.cli", shlex_after(data_cmd, "sensors simulate"))
    assert args.preset == "small" and str(args.out) == "/data/mmfi"


def shlex_after(text: str, prefix: str) -> list[str]:
    import shlex

    return shlex.split(text[text.index(prefix) + len(prefix):])


def test_compose_model_step_trains_then_exports_with_the_real_clis():
    """The runtime serves a trained model: the `model` step runs `training fit` then `training export`
    on the fit's best checkpoint (both command lines parse with the real argument parsers)."""
    code = " ".join(compose()["services"]["model"]["command"][-1].split())
    fit = shlex_after(code, "training fit")
    fit = fit[:fit.index("&&")]
    args = parse_cli("training.fit", fit)
    assert args.preset == "small" and args.data == "/data/mmfi" and args.balance == "awc"
    export_argv = shlex_after(code, "training export")
    assert export_argv[-2:] == ["/models/awc.onnx;", "}"]
    export = parse_cli("training.export", [*export_argv[:-2], "/models/awc.onnx"])
    assert export.checkpoint == f"{args.out}/best.pt" and export.out == "/models/awc.onnx"
    runtime = compose()["services"]["runtime"]["command"]
    assert runtime[runtime.index("--model") + 1] == export.out


def test_alertmanager_config_is_valid_and_routes_critical_alerts():
    amtool = require_tool("amtool")
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    r = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "1 receivers" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([amtool, "config", "routes", "test", f"--config.file={config}", "--verify.receivers=station-ops",
                        "alertname=AwcNoPoses", "severity=critical", "station=demo"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(config.read_text())
    targets = doc["inhibit_rules"][0]["target_matchers"][0]
    pattern = targets.split('"')[1]
    # What a runtime without poses explains is held back. Not the GPU fallback, nor refused sensor
    # handshakes: a sensor with a wrong key may be why there are no poses; nor refused viewers,
    # which a runtime without poses does not explain (someone reading the pose stream with a key
    # not allow-listed is worth knowing about either way).
    causes = ("AwcGpuFallback", "AwcSensorHandshakeRefused", "AwcViewerHandshakeRefused")
    for alert in alert_rules():
        name = alert["alert"]
        if alert["labels"]["severity"] == "warning" and name not in causes:
            assert re.fullmatch(pattern, name), f"{name} is not inhibited by a down runtime"
        elif name in ("AwcRuntimeDown", "AwcNoPoses", *causes):
            assert not re.fullmatch(pattern, name), name


def test_prometheus_sends_alerts_to_file_discovered_alertmanagers():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    am = cfg["alerting"]["alertmanagers"][0]["file_sd_configs"][0]["files"]
    assert am == ["alertmanagers/*.yml"]
    local = [g for f in (PROM / "alertmanagers").glob("*.yml") for g in yaml.safe_load(f.read_text())]
    assert local == [{"targets": ["127.0.0.1:9093"]}]


@pytest.mark.parametrize("name,env,module", [("awc-runtime.service", "runtime.env", "runtime.serve"),
                                             ("awc-replay.service", "replay.env", "sensors.replay")])
def test_unit_exec_start_parses_with_the_real_cli(name, env, module):
    argv = shell_words(unit(name)["Service"]["ExecStart"], env_file(env))
    assert Path(argv[0]).name in ("runtime", "sensors") and argv[1] in ("serve", "replay")
    args = parse_cli(module, argv[2:])
    if module == "runtime.serve":
        assert args.config == "/etc/awc-pose/runtime.yaml" and args.model.endswith(".onnx")
    else:
        assert args.connect == "tcp://127.0.0.1:5555" and args.rate == 1.0
