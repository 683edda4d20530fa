"""Training speed: subnormals are flushed wherever training runs, the per-epoch speed line, the
study report's late/early check and ``training bench``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from training import study_report
from training.bench_train import subnormal_fraction
from training.cli import main

SUBNORMAL_BITS = 713624   # the float32 bit pattern of 1.0e-39, below the smallest normal (1.18e-38)


def subnormals(n: int) -> torch.Tensor:
    """Built from bits: converting 1e-39 from a double would itself be flushed under the setting."""
    return torch.full((n,), SUBNORMAL_BITS, dtype=torch.int32).view(torch.float32)


def _op_on_subnormals() -> float:
    x = subnormals(64)
    return float((x * 1.0 + x).abs().max())


def test_training_setup_flushes_subnormals_to_zero():
    # a fresh interpreter: what every `training` command and torchrun rank gets from the import
    code = ("import torch\nimport training.trainer\n"
            f"x = torch.full((64,), {SUBNORMAL_BITS}, dtype=torch.int32).view(torch.float32)\n"
            "print(float((x * 1.0 + x).abs().max()), float((torch.ones(4, 64) @ x).abs().max()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert [float(v) for v in out.stdout.split()] == [0.0, 0.0]


def test_the_guard_can_fail_without_the_setting():
    torch.set_flush_denormal(True)   # what the import does (checked above in a fresh interpreter)
    assert _op_on_subnormals() == 0.0
    torch.set_flush_denormal(False)
    assert _op_on_subnormals() > 0.0   # IEEE gradual underflow: the slow path the setting avoids


def test_subnormal_fraction_counts_only_subnormals():
    t = torch.cat([torch.tensor([0.0, 1e-30, 1.0, float(torch.finfo(torch.float32).tiny)]), subnormals(2)])
    assert subnormal_fraction([t, torch.arange(4)]) == pytest.approx(2 / 6)   # integer tensors skipped


def _epoch(step_s: float, steps: int = 10) -> dict:
    return {"steps": steps, "time": {"data": 0.1 * step_s * steps, "forward": 0.4 * step_s * steps,
                                     "shapley": 0.05 * step_s * steps, "backward": 0.45 * step_s * steps,
                                     "fisher": 50.0, "train": step_s * steps + 50.0}}


def test_late_over_early_ignores_method_phases_and_flags_slow_runs():
    steady = [_epoch(0.1) for _ in range(10)]
    slowing = [_epoch(0.1) for _ in range(6)] + [_epoch(0.47) for _ in range(4)]
    assert study_report.late_over_early(steady) == pytest.approx(1.0)   # Fisher's 50 s is not loop time
    assert study_report.late_over_early(slowing) == pytest.approx(4.7)
    assert study_report.late_over_early(steady[:4]) is None
    text = study_report.speed_check({"P1": {"all-none": [{"seed": 0, "log": slowing}],
                                            "all-awc": [{"seed": 0, "log": steady}]}})
    assert "1 run above 1.3x" in text and "P1/all-none-s0 4.70x" in text and "all-awc" not in text


def test_fit_logs_speed_and_bench_times_early_and_late(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--preset", "tiny", "--data", str(tiny_dataset), "--out", str(out), "--no-progress",
                 "--balance", "awc", "--epochs", "2", "--set", "train.plots=false"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for rec in log:
        assert rec["frames_per_s"] > 0 and rec["time"]["data"] >= 0
        assert rec["time"]["data"] + rec["time"]["forward"] + rec["time"]["backward"] <= rec["time"]["train"]
    capsys.readouterr()
    report = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(out / "checkpoint.pt"), "--steps", "3", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "late / early time per step" in printed and "flushing subnormals" in printed
    r = json.loads(report.read_text())
    assert set(r["runs"]) == {"early/keep", "early/flush", "late/keep", "late/flush"}
    assert r["runs"]["early/flush"]["epoch"] == 0 and r["runs"]["late/flush"]["epoch"] == 1
    assert r["runs"]["early/flush"]["in_window"] and r["runs"]["early/flush"]["share"]["fisher"] > 0
    for x in r["runs"].values():
        assert x["steps"] == 3 and x["frames_per_s"] > 0 and 0.5 < sum(x["share"].values()) <= 1.0
    assert 0.0 <= r["subnormal"]["weights"] <= 1.0 and r["threads"] == 1
    assert main(["bench", "--checkpoint", str(out / "checkpoint.pt"), "--states", "middle"]) == 2
    assert _op_on_subnormals() == 0.0   # the bench leaves the setting as the package sets it
