"""Recorders never truncate, flush at least every second, and survive kill -9 with what was written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from exporters.recorder import load_parts, open_recorder, parts_dir, recover_parts

REPO = Path(__file__).resolve().parents[1]


def _rec(i: int) -> dict:
    return {"tick": i, "joints": np.full((17, 3), i, np.float32), "presence": np.ones(4, np.uint8)}


def test_jsonl_appends_across_restarts_and_rotates(tmp_path):
    path = tmp_path / "r.jsonl"
    for start in (0, 3):
        rec = open_recorder(path)
        for i in range(start, start + 3):
            rec.write(_rec(i))
        rec.close()
    assert [json.loads(line)["tick"] for line in path.read_text().splitlines()] == list(range(6))
    rec = open_recorder(path, rotate_mb=0.001)    # ~1 kB per file
    for i in range(10):
        rec.write(_rec(i))
    rec.close()
    assert rec.rotated and all(p.exists() for p in rec.rotated)
    lines = sum(len(p.read_text().splitlines()) for p in [path, *rec.rotated])
    assert lines == 16   # the 6 earlier ticks + 10 new, nothing lost by rotation


def test_npz_restart_keeps_the_previous_recording(tmp_path):
    path = tmp_path / "r.npz"
    rec = open_recorder(path)
    for i in range(3):
        rec.write(_rec(i))
    rec.close()
    rec = open_recorder(path)
    assert rec.rotated is not None and np.load(rec.rotated)["tick"].tolist() == [0, 1, 2]
    for i in range(5):
        rec.write(_rec(10 + i))
    rec.close()
    assert np.load(path)["tick"].tolist() == list(range(10, 15))
    assert not parts_dir(path).exists()


def test_npz_parts_are_written_every_flush_interval(tmp_path):
    path = tmp_path / "r.npz"
    rec = open_recorder(path, flush_s=0.0)    # a part per tick
    for i in range(4):
        rec.write(_rec(i))
    assert len(list(parts_dir(path).glob("part-*.npz"))) == 4 and not path.exists()
    assert [int(r["tick"]) for r in load_parts(parts_dir(path))] == [0, 1, 2, 3]
    rec.close()
    assert np.load(path)["joints"].shape == (4, 17, 3)


WRITER = """
import sys, time
import numpy as np
from exporters.recorder import open_recorder
rec = open_recorder(sys.argv[1], flush_s=0.2)
i = 0
while True:
    rec.write({"tick": i, "joints": np.full((17, 3), i, np.float32)})
    i += 1
    if i == 5:
        print("writing", flush=True)
    time.sleep(0.01)
"""


def test_kill_9_leaves_the_written_part_readable(tmp_path):
    path = tmp_path / "rec.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    records = load_parts(parts_dir(path))
    ticks = [int(r["tick"]) for r in records]
    assert len(ticks) >= 20 and ticks == list(range(len(ticks)))   # ~1.5 s of 100 Hz, in order, no gap
    recovered = recover_parts(path)
    data = np.load(recovered)
    assert data["tick"].tolist() == ticks and (data["joints"][:, 0, 0] == ticks).all()
    # a recorder opened on the same path recovers the parts itself and never overwrites
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.6)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    rec = open_recorder(path)
    assert rec.recovered is not None and rec.recovered != recovered and len(np.load(rec.recovered)["tick"]) >= 5
    rec.close()
    assert np.load(recovered)["tick"].tolist() == ticks
