"""Training CLI usage errors: one line on stderr, what was expected, exit code 2 (as `runtime`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = (
    "import importlib.abc, sys\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'torch':\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from training.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def training(*argv: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", BLOCK_TORCH, *argv] if block_torch else [sys.executable, "-m", "training", *argv]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_misspelt_preset(tmp_path):
    line = one_line_error(training("fit", "--preset", "smal", "--out", str(tmp_path / "r")))
    assert "unknown preset 'smal'" in line and "small" in line


def test_bad_override_key(tmp_path):
    line = one_line_error(training("fit", "--preset", "tiny", "--out", str(tmp_path / "r"), "--set", "train.lrr=3"))
    assert "train.lrr" in line and "train has:" in line and "lr" in line


def test_bad_device(tmp_path):
    line = one_line_error(training("fit", "--preset", "tiny", "--out", str(tmp_path / "r"), "--device", "gpu"))
    assert "auto | cpu | cuda | cuda:N" in line


def test_missing_checkpoint(tmp_path):
    for cmd in (["evaluate", "--checkpoint", str(tmp_path / "nope.pt")],
                ["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]):
        line = one_line_error(training(*cmd))
        assert "nope.pt not found" in line and "best.pt" in line


def test_onnx_or_garbage_passed_as_checkpoint(tmp_path):
    onnx_file = tmp_path / "awc.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")
    line = one_line_error(training("evaluate", "--checkpoint", str(onnx_file)))
    assert "exported ONNX model, not a training checkpoint" in line and "runtime serve --model" in line
    junk = tmp_path / "junk.pt"
    junk.write_text("garbage\n")
    line = one_line_error(training("export", "--checkpoint", str(junk), "--out", str(tmp_path / "m.onnx")))
    assert "is not a torch checkpoint" in line


def test_torch_missing_on_a_station(tmp_path):
    line = one_line_error(training("fit", "--preset", "tiny", "--out", str(tmp_path / "r"), block_torch=True))
    assert "'torch'" in line and "pip install 'awc-pose[train]'" in line and "CPU or CUDA" in line


@pytest.mark.parametrize("argv", [["fit", "--help"]])
def test_help_still_exits_zero(argv):
    assert training(*argv).returncode == 0


def test_an_existing_run_folder_is_refused_naming_both_ways_out(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "best.pt").write_bytes(b"a finished run")
    (run / "log.jsonl").write_text("{}\n")
    line = one_line_error(training("fit", "--preset", "tiny", "--out", str(run)))
    assert f"{run} already holds a run (log.jsonl, best.pt)" in line
    assert "--resume" in line and "--overwrite" in line
    assert (run / "best.pt").read_bytes() == b"a finished run"
    line = one_line_error(training("fit", "--preset", "tiny", "--overwrite"))
    assert "--overwrite needs the run folder: pass --out RUN" in line
