"""Data-parallel training: a 2-process torchrun on CPU (gloo) trains exactly like one process.

With equal shards, DDP's averaged gradient is the full batch's gradient, the Shapley scores are
computed on the all-gathered global batch and the Fisher is all-reduced, so the per-epoch losses
and groups of the two runs must agree to float precision. With the default held-out validation
recordings the training set no longer splits into equal shards: the last batch goes 11/10 frames
over the ranks and DDP averages the two shard means, so that one step's gradient weights frames
slightly differently; the runs then agree closely rather than exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import free_loopback_port
from training.cli import main

REPO = Path(__file__).resolve().parents[1]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _fit_single_and_torchrun(data: Path, tmp_path: Path, extra: list[str]) -> tuple[list[dict], list[dict]]:
    """AWC on the tiny preset, once in this process and once as a 2-process torchrun (gloo): the
    two per-epoch logs, checked to have the same epochs and optimiser steps."""
    common = ["--preset", "tiny", "--data", str(data), "--balance", "awc", "--no-progress",
              "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.plots=false", *extra]
    assert main(["fit", *common, "--out", str(tmp_path / "single")]) == 0  # also fills the array cache
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_loopback_port()), "-m", "training", "fit", *common, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single, ddp = _log(tmp_path / "single"), _log(tmp_path / "ddp")
    assert len(ddp) == len(single) == 2
    assert [b["steps"] for b in ddp] == [a["steps"] for a in single]
    return single, ddp


def test_torchrun_two_processes_match_single_process(tiny_dataset, tmp_path):
    single, ddp = _fit_single_and_torchrun(tiny_dataset, tmp_path, [
        "--set", "balance.awc.group_by=theta0",
        # every training frame: 256 = 8 batches of 32 split evenly over 2 ranks (held-out
        # recordings would leave 213 frames and an odd last batch, i.e. unequal shards)
        "--set", "data.validation=test"])
    for a, b in zip(single, ddp, strict=True):
        assert b["loss_task"] == pytest.approx(a["loss_task"], rel=1e-4)
        assert b["loss_balance"] == pytest.approx(a["loss_balance"], rel=1e-3, abs=1e-9)
        assert b["val_mpjpe"] == pytest.approx(a["val_mpjpe"], rel=1e-3)
        for m, v in a["shapley"].items():
            assert b["shapley"][m] == pytest.approx(v, rel=1e-3, abs=1e-4)
    assert ddp[0]["groups"] == single[0]["groups"]
    for m, s in single[0]["fisher"].items():
        assert ddp[0]["fisher"][m]["sum"] == pytest.approx(s["sum"], rel=1e-3)
    # only rank 0 wrote: one log, one set of checkpoints
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file() and (tmp_path / "ddp" / "metrics.json").is_file()


def test_torchrun_with_held_out_validation_recordings(tiny_dataset, tmp_path):
    """The default validation (a held-out training recording, 213 training frames: unequal shards)
    under torchrun: the same held-out recording, losses and validation within 0.1 %."""
    single, ddp = _fit_single_and_torchrun(tiny_dataset, tmp_path, [])
    for a, b in zip(single, ddp, strict=True):
        assert b["loss_task"] == pytest.approx(a["loss_task"], rel=1e-3)
        assert b["val_mpjpe"] == pytest.approx(a["val_mpjpe"], rel=1e-3)
    ms, md = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("single", "ddp"))
    assert md["validation"] == ms["validation"] and ms["validation"]["set"] == "sequences"
    assert md["frames"] == ms["frames"]
    assert md["mpjpe"] == pytest.approx(ms["mpjpe"], rel=1e-3)
