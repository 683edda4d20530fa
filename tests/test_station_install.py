"""One station install does what a station does: `runtime serve --view` and `runtime report` run from
the `station` extra (no torch, onnx, scikit-learn), and a missing extra fails before anything
starts, in one line naming the extra; `runtime serve` checks what a newcomer meets first first
(the viewer's packages, the model, then the keys)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime.config import free_loopback_port
from sensors.core import cli_util, schema

REPO = Path(__file__).resolve().parents[1]
# What the base install + the station extra lack: the training side.
TRAIN_ONLY = ("torch", "training", "onnx", "onnxscript", "sklearn", "tensorboard")
VIEW = ("starlette", "uvicorn", "sse_starlette")

# Installed in every Python process of the test through PYTHONPATH (the viewer child included):
# the packages named in $AWC_TEST_BLOCK cannot be imported, as on an install without them.
SITECUSTOMIZE = """
import importlib.abc, os, sys
_blocked = set(filter(None, os.environ.get("AWC_TEST_BLOCK", "").split(",")))
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
"""


def _requirement_names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in reqs}


def test_the_station_extra_holds_what_a_station_runs_and_nothing_of_training():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["station"] == ["awc-pose[cpu,view,report]"]
    assert cli_util.STATION_EXTRAS == ("cpu", "view", "report")
    station = _requirement_names(project["dependencies"]) | set().union(
        *(_requirement_names(extras[e]) for e in cli_util.STATION_EXTRAS))
    assert {"onnxruntime", "starlette", "uvicorn", "sse-starlette", "matplotlib"} <= station
    assert not station & {"torch", "onnx", "onnxscript", "scikit-learn", "tensorboard", "onnxruntime-gpu"}
    # every package a station command checks for is named with the extra that really installs it
    for module in (*VIEW, "matplotlib", "onnxruntime"):
        extra = cli_util.EXTRA_OF[module]
        assert extra in cli_util.STATION_EXTRAS
        assert module.replace("_", "-") in _requirement_names(extras[extra]), (module, extra)


@pytest.fixture(scope="module")
def station_env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}

    def with_blocked(*names: str) -> dict:
        return {**env, "AWC_TEST_BLOCK": ",".join(names)}

    return with_blocked


def runtime_cli(env: dict, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    pytest.importorskip("torch").set_num_threads(1)
    from training.export import export_untrained

    return Path(export_untrained(tmp_path_factory.mktemp("model") / "awc.onnx", preset="tiny", seed=0))


def squat_recording(path: Path) -> Path:
    """A JSONL recording (the `runtime serve --record` format) of the generator's squats."""
    from sensors.simulate import kinematics
    from sensors.simulate.body import make_subject
    from sensors.simulate.environment import get_environment

    env = get_environment(schema.environment_of("S02"))
    person = make_subject("S02", np.random.default_rng(0), env)
    channels = kinematics.action_channels("A12", schema.FRAMES_PER_SEQUENCE, person, np.random.default_rng(1))
    joints = kinematics.forward_kinematics(channels, person, env.camera_height_m)
    with open(path, "w") as f:
        for k, p in enumerate(joints):
            f.write(json.dumps({"tick": k, "tick_ns": k * schema.FRAME_PERIOD_NS, "joints": p.tolist(),
                                "presence": [1, 1, 1, 1], "degraded": [0, 0, 0, 0],
                                "shares": [0.4, 0.3, 0.2, 0.1], "exercise": "A12", "session": "s1"}) + "\n")
    return path


def test_without_the_view_extra_serve_view_fails_before_starting_in_one_line(station_env, tmp_path):
    # No model either: the missing package is what the station must install first, so it is said first.
    line = one_line(runtime_cli(station_env(*TRAIN_ONLY, "uvicorn"), "serve", "--model", str(tmp_path / "no.onnx"),
                                "--view", "--console"))
    assert line.startswith("runtime: error:") and "'uvicorn'" in line
    assert "pip install 'awc-pose[view]'" in line and "pip install 'awc-pose[station]'" in line
    line = one_line(runtime_cli(station_env(*TRAIN_ONLY, "starlette"), "view", "--recording", "x.jsonl"))
    assert "'starlette'" in line and "awc-pose[view]" in line


def test_without_the_report_extra_the_report_fails_in_one_line(station_env, tmp_path):
    rec = squat_recording(tmp_path / "poses.jsonl")
    line = one_line(runtime_cli(station_env(*TRAIN_ONLY, "matplotlib"), "report", "--recording", str(rec),
                                "--out", str(tmp_path / "r.html")))
    assert line.startswith("runtime: error:") and "'matplotlib'" in line and "awc-pose[report]" in line
    assert not (tmp_path / "r.html").exists()


def test_serve_says_the_model_is_missing_before_asking_for_keys(station_env, tmp_path, model_path):
    env = station_env(*TRAIN_ONLY)
    r = runtime_cli(env, "serve", "--model", str(tmp_path / "awc.onnx"), "--console")
    assert r.returncode == 2 and "awc.onnx does not exist" in r.stderr and "training export" in r.stderr, r.stderr
    assert "keys" not in r.stderr, r.stderr
    r = runtime_cli(env, "serve", "--model", str(model_path), "--console")   # a model, but no keys
    assert r.returncode == 2 and "runtime keys init" in r.stderr and "--plaintext" in r.stderr, r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runtime_cli(env, "serve", "--model", str(model_path), "--plaintext", "--view", str(port))
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr and "--view PORT" in r.stderr, r.stderr


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except OSError:
        return 0


def test_a_station_install_serves_with_its_viewer_and_writes_the_report(station_env, tmp_path, model_path):
    """Base + station extra, no training packages: `serve --view` brings up the runtime and the
    viewer page, `runtime report` writes the session report."""
    env = station_env(*TRAIN_ONLY)
    view_port, metrics_port = free_loopback_port(), free_loopback_port()
    cmd = [sys.executable, "-m", "runtime", "serve", "--model", str(model_path), "--plaintext", "--threads", "1",
           "--input", f"tcp://127.0.0.1:{free_loopback_port()}", "--output", f"tcp://127.0.0.1:{free_loopback_port()}",
           "--metrics-port", str(metrics_port), "--view", str(view_port), "--duration", "30"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if (http_status(f"http://127.0.0.1:{view_port}/") == 200
                        and http_status(f"http://127.0.0.1:{metrics_port}/healthz") == 200):
                    break
                time.sleep(0.3)
            assert proc.poll() is None, log.read_text()[-3000:]
            assert http_status(f"http://127.0.0.1:{view_port}/") == 200, log.read_text()[-3000:]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "ModuleNotFoundError" not in log.read_text()
    rec = squat_recording(tmp_path / "poses.jsonl")
    r = runtime_cli(env, "report", "--recording", str(rec), "--out", str(tmp_path / "report.html"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "A12" in r.stdout and (tmp_path / "report.html").stat().st_size > 10_000
