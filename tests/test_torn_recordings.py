"""Recordings that survive a torn end: a cut JSONL line stays one skipped line, NPZ parts left by
kill -9 are read and recovered, a restart keeps the previous run's config; what the report prints
cannot drive the terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from exporters.metrics import RuntimeMetrics
from exporters.recorder import open_recorder, parts_dir, read_recording
from runtime.config import RuntimeConfig
from runtime.view.frames import load_recording

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
import numpy as np
from exporters.recorder import open_recorder
rec = open_recorder(sys.argv[1], flush_s=0.2)
i = 0
while True:
    rec.write({"tick": i, "tick_ns": 1_000_000_000 + i * 100_000_000, "joints": np.full((17, 3), 0.1, np.float32),
               "presence": np.ones(4, np.uint8), "degraded": np.zeros(4, np.uint8), "degradation": np.zeros(4),
               "exercise": "squat", "session": sys.argv[2]})
    i += 1
    if i == 5:
        print("writing", flush=True)
    time.sleep(0.01)
"""


def _write_then_kill(path: Path, seconds: float = 1.0, session: str = "s1") -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), session], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_a_cut_jsonl_line_is_skipped_and_counted_and_the_restart_starts_a_new_line(tmp_path, caplog):
    path = tmp_path / "rec.jsonl"
    _write_then_kill(path, 0.5)
    with open(path, "rb+") as f:   # kill -9 in the middle of a line: the last one is cut short
        f.truncate(path.stat().st_size - 40)
    complete = len(path.read_text().splitlines()) - 1
    rec = open_recorder(path)
    assert rec.torn
    for i in range(3):
        rec.write({"tick": 10_000 + i, "tick_ns": 10**12 + i, "joints": np.zeros((17, 3)), "presence": np.ones(4),
                   "degraded": np.zeros(4), "degradation": np.zeros(4)})
    rec.close()
    got = read_recording(path)
    assert got.bad_lines == [complete + 1] and len(got.rows) == complete + 3
    assert [r["tick"] for r in got.rows[-3:]] == [10_000, 10_001, 10_002]   # not glued onto the fragment
    frames = load_recording(path)                                            # runtime view --recording
    assert len(frames) == complete + 3
    assert "1 unreadable line(s) skipped" in caplog.text


def test_a_file_of_nothing_but_garbage_is_still_an_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n[1, 2]\n")
    with pytest.raises(ValueError, match="none of its lines"):
        read_recording(bad)


def test_report_reads_the_npz_parts_of_a_killed_recorder_and_recover_merges_them(tmp_path, caplog):
    pytest.importorskip("matplotlib")
    from runtime.cli import main

    path = tmp_path / "rec.npz"
    _write_then_kill(path, 1.0)
    assert not path.exists() and parts_dir(path).is_dir()
    got = read_recording(path)
    assert got.from_parts and len(got.rows) >= 20
    assert main(["report", "--recording", str(path), "--out", str(tmp_path / "r.html")]) == 0
    assert "runtime recover" in caplog.text
    (parts_dir(path) / "part-999999.npz").write_bytes(b"PK\x03\x04 torn")   # an unreadable part
    assert main(["recover", str(path)]) == 0
    data = np.load(path)
    assert data["tick"].tolist()[: len(got.rows)] == [r["tick"] for r in got.rows]
    assert not parts_dir(path).exists()
    aside = list(tmp_path.glob("rec.npz.parts.unreadable-*"))
    assert len(aside) == 1 and (aside[0] / "part-999999.npz").exists()   # set aside, never deleted
    assert main(["recover", str(path)]) == 2                                 # complete: nothing to do
    assert main(["recover", str(tmp_path / "none.npz")]) == 2


def test_recover_writes_the_readable_lines_of_a_jsonl(tmp_path, capsys):
    from runtime.cli import main

    path = tmp_path / "rec.jsonl"
    path.write_text('{"tick": 0}\n{"tick": 1, "jo\n{"tick": 2}\n')
    out = tmp_path / "clean.jsonl"
    assert main(["recover", str(path), "--out", str(out)]) == 0
    assert "2 records; 1 unreadable line(s) skipped (line 2" in capsys.readouterr().out
    assert [json.loads(x)["tick"] for x in out.read_text().splitlines()] == [0, 2]
    assert main(["recover", str(path), "--out", str(path)]) == 2   # the recording itself is never changed


def test_a_restart_keeps_the_previous_runs_config(tmp_path):
    from runtime.serve import build_outputs

    meta = SimpleNamespace(schema_version=1, fusion="gated", config_hash="h", rgb_window=1, lidar_cap=1,
                           mmwave_cap=1, producer={}, baseline=None)
    rec = tmp_path / "rec.jsonl"
    for station in ("first", "second"):
        cfg = RuntimeConfig.from_dict({"station": station, "recorder": {"path": str(rec)},
                                       "security": {"plaintext": True}, "output": {"endpoint": "inproc://p-" + station}})
        build_outputs(cfg, SimpleNamespace(metadata=meta), RuntimeMetrics()).close()
    configs = sorted(tmp_path.glob("rec.jsonl.config*.yaml"))
    assert len(configs) == 2
    texts = {p.name: p.read_text() for p in configs}
    assert "station: second" in texts["rec.jsonl.config.yaml"]
    assert any("station: first" in t for n, t in texts.items() if n != "rec.jsonl.config.yaml")


def test_report_escapes_control_characters_from_header_fields(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from runtime.cli import main

    path = tmp_path / "rec.jsonl"
    _write_then_kill(path, 0.3, session="\x1b]0;owned\x07\x1b[2J\u202e")
    assert main(["report", "--recording", str(path), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b" in out
