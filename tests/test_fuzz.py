"""A short run of the fuzz benchmark (`sensors fuzz`) against a live, secured runtime: no crash, no
readiness loss, and every message sent is received or counted under a drop reason."""

from __future__ import annotations

import json

import pytest

from sensors import cli


def test_short_fuzz_run_against_a_live_secured_runtime(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from training.export import export_untrained

    model = export_untrained(tmp_path / "tiny.onnx", preset="tiny", seed=0)
    out = tmp_path / "fuzz.json"
    code = cli.main(["fuzz", "--serve-model", str(model), "--secure", "--messages", "3000", "--rate", "1500",
                     "--seed", "3", "--nice", "0", "--no-progress", "--report", str(out)])
    report = json.loads(out.read_text())
    assert report["crashes"] == 0 and report["exit_code_after_sigterm"] == 0
    assert report["not_ready_seconds"] == 0 and report["tick_errors"] == 0
    assert report["sent"] == report["received"] + report["dropped"] and report["balanced"]
    assert report["sent_by_kind"]["random"] == 1000 and report["not_taken_by_runtime"] == 0
    assert {"malformed", "out_of_range", "clock", "bad_version"} <= set(report["dropped_by_reason"])
    assert report["ticks"]["fused"] + report["ticks"]["partial"] > 0   # poses kept flowing
    assert code in (0, 1)   # 1 only if the pose rate dipped below 9 Hz on a loaded machine
