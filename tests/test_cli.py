"""Command-line conventions shared by `sensors`, `training` and `runtime` (README)."""

from __future__ import annotations

import argparse

import pytest

from runtime import cli as runtime_cli
from runtime.serve import add_arguments as serve_arguments
from runtime.serve import config_from_args
from sensors import cli as sensors_cli
from sensors.core.cli_util import add_list_argument


@pytest.mark.parametrize("main", [runtime_cli.main, sensors_cli.main])
def test_every_tool_has_a_version(main, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and "awc-pose" in capsys.readouterr().out


def test_log_level_and_no_progress_after_the_subcommand(capsys):
    assert runtime_cli.main(["config", "show", "--log-level", "WARNING", "--no-progress"]) == 0
    assert "sync.rate_hz" in capsys.readouterr().out


def test_list_options_take_commas_spaces_and_repeats():
    p = argparse.ArgumentParser()
    add_list_argument(p, "--seeds", item_type=int, default=[0, 1, 2])
    assert p.parse_args([]).seeds == [0, 1, 2]
    assert p.parse_args(["--seeds", "3,4"]).seeds == p.parse_args(["--seeds", "3", "4"]).seeds == [3, 4]
    assert p.parse_args(["--seeds", "0", "1", "--seeds", "0"]).seeds == [0, 1, 0]
    with pytest.raises(SystemExit):
        p.parse_args(["--seeds", "x"])


def test_serve_connect_names_the_endpoint_and_input_binds():
    p = argparse.ArgumentParser()
    serve_arguments(p)
    cfg = config_from_args(p.parse_args(["--model", "m.onnx", "--connect", "tcp://10.0.0.5:5555,tcp://10.0.0.6:5555"]))
    assert cfg.inputs.endpoints == ("tcp://10.0.0.5:5555", "tcp://10.0.0.6:5555") and cfg.inputs.bind is False
    cfg = config_from_args(p.parse_args(["--model", "m.onnx", "--input", "tcp://127.0.0.1:7000"]))
    assert cfg.inputs.endpoints == ("tcp://127.0.0.1:7000",) and cfg.inputs.bind is True
    with pytest.raises(ValueError, match="exclude each other"):
        config_from_args(p.parse_args(["--model", "m.onnx", "--input", "tcp://a:1", "--connect", "tcp://b:2"]))


def test_fit_resume_without_a_run_directory_is_refused():
    pytest.importorskip("torch")
    from training import cli as training_cli

    assert training_cli.main(["fit", "--preset", "tiny", "--resume"]) == 2


def test_ctrl_c_stops_a_command_in_one_line_without_a_traceback(tiny_dataset):
    """A replay waiting for its runtime, interrupted as a user would (SIGINT): exit code 130."""
    import signal
    import subprocess
    import sys
    import time

    from runtime.config import free_loopback_port

    cmd = [sys.executable, "-m", "sensors", "replay", "--data", str(tiny_dataset), "--connect",
           f"tcp://127.0.0.1:{free_loopback_port()}", "--connect-timeout", "60", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "sensors: interrupted", err[-2000:]
