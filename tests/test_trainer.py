"""The trainer end to end: every fusion and balancing method, outputs, resume, determinism, evaluate."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from training_fakes import fake_split

from training import config
from training.checkpoint import load_checkpoint
from training.cli import main
from training.trainer import fit

torch.set_num_threads(1)

CASES = [("concat", "none"), ("mlp", "none"), ("attention", "none"), ("concat", "ogm-ge"),
         ("concat", "uniform"), ("concat", "awc"), ("attention", "awc"), ("concat", "agm"),
         ("concat", "g-blending"), ("concat", "modality-level")]
OUTPUTS = ("config.yaml", "log.jsonl", "checkpoint.pt", "best.pt", "metrics.json", "plots/curves.png",
           "plots/contributions.png", "plots/skeletons.png")


@pytest.fixture(scope="module")
def array_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("array-cache")


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _fit_cli(tiny_dataset, array_cache, out, *extra):
    argv = ["fit", "--preset", "tiny", "--data", str(tiny_dataset), "--out", str(out), "--no-progress",
            "--set", f"data.cache_dir={array_cache}", *extra]
    assert main(argv) == 0


@pytest.mark.parametrize("fusion,balance", CASES)
def test_fit_each_fusion_and_balance_on_tiny_dataset(tiny_dataset, array_cache, tmp_path, fusion, balance):
    out = tmp_path / "run"
    _fit_cli(tiny_dataset, array_cache, out, "--fusion", fusion, "--balance", balance)
    for name in OUTPUTS:
        assert (out / name).is_file(), f"{name} missing"
    log = _log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["loss_task"] < log[0]["loss_task"]
    for r in log:
        assert all(math.isfinite(r[k]) for k in ("val_mpjpe", "val_pa_mpjpe", "train_mpjpe", "train_pa_mpjpe"))
        assert set(r["time"]) >= {"forward", "backward", "shapley", "train", "eval"}
        assert all(math.isfinite(v) for v in r["shapley"].values())
    # tiny preset: learning window K = 1 (AWC, uniform, modality-level); the others act every epoch
    every_epoch = balance in ("ogm-ge", "agm", "g-blending")
    assert log[0]["in_window"] == (balance != "none") and log[1]["in_window"] == every_epoch
    if balance in ("awc", "uniform"):
        assert log[0]["loss_balance"] > 0 and log[1]["loss_balance"] == 0
        assert set(log[0]["groups"].values()) <= {"S", "I"} and "S" in log[0]["groups"].values()
        assert log[0]["fisher"]["rgb"]["sum"] > 0 and log[0]["time"]["fisher"] > 0
        assert sum(log[0]["superior_fraction"].values()) >= 1.0 and "groups_theta0" in log[0]
    elif balance in ("none", "ogm-ge", "agm"):
        assert all(r["loss_balance"] == 0 for r in log)
    if balance == "ogm-ge":
        assert all(0 < k <= 1 for k in log[0]["ogm_coefficients"].values())
    if balance == "agm":
        assert all(k > 0 for k in log[0]["agm_coefficients"].values())
    if balance == "g-blending":
        assert math.isclose(sum(log[1]["gblend_weights"].values()), 1.0, rel_tol=1e-6)
    if balance == "modality-level":
        assert log[0]["resample"]["modality"] in config.ModelConfig().modalities
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["mpjpe"]) and metrics["per_action"]
    model, cfg, info = load_checkpoint(out / "best.pt")
    assert cfg.model.fusion == fusion and cfg.balance.method == balance and info["config_hash"]


def test_fit_subset_of_modalities_and_evaluate(tiny_dataset, array_cache, tmp_path, capsys):
    out = tmp_path / "rgb-lidar"
    _fit_cli(tiny_dataset, array_cache, out, "--modalities", "rgb,lidar", "--epochs", "1", "--balance", "awc")
    log = _log(out)
    assert abs(log[0]["shapley"]["mmwave"]) < 1e-9 and abs(log[0]["shapley"]["wifi"]) < 1e-9
    assert log[0]["groups"]["mmwave"] == "-" and log[0]["groups"]["wifi"] == "-"
    model, _, _ = load_checkpoint(out / "checkpoint.pt")
    assert set(model.encoders) == {"rgb", "lidar"}
    capsys.readouterr()
    rc = main(["evaluate", "--checkpoint", str(out / "best.pt"), "--protocol", "P1", "--split", "S1",
               "--out", str(tmp_path / "eval.json")])
    assert rc == 0
    table = capsys.readouterr().out
    assert "A02" in table and "all" in table
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["mpjpe"] > 0 and set(result["per_action"]) <= {"A02", "A03", "A04"}
    assert abs(result["shapley"]["wifi"]) < 1e-9


def _fake_fit(out, epochs, resume=False, balance="awc"):
    cfg = config.resolve("tiny", flags={"balance": {"method": balance, "window": 2}, "out": str(out),
                                        "train": {"epochs": epochs, "plots": False}})
    train, test = fake_split(160, cfg.model, 0), fake_split(48, cfg.model, 1)
    return fit(cfg, train, test, resume=resume, progress=False)


def test_same_seed_gives_identical_runs(tmp_path):
    a = _fake_fit(tmp_path / "a", 2)
    b = _fake_fit(tmp_path / "b", 2)
    la, lb = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss_task"] for r in la] == [r["loss_task"] for r in lb]
    assert [r["loss_balance"] for r in la] == [r["loss_balance"] for r in lb]
    assert a["mpjpe"] == b["mpjpe"]


@pytest.mark.parametrize("balance", ["ogm-ge", "g-blending", "agm"])
def test_resume_continues_exactly(tmp_path, balance):
    full = _fake_fit(tmp_path / "full", 3, balance=balance)
    _fake_fit(tmp_path / "part", 1, balance=balance)
    resumed = _fake_fit(tmp_path / "part", 3, resume=True, balance=balance)
    lf, lr = _log(tmp_path / "full"), _log(tmp_path / "part")
    assert [r["epoch"] for r in lr] == [0, 1, 2]
    assert [r["loss_task"] for r in lr] == pytest.approx([r["loss_task"] for r in lf], rel=1e-6)
    assert resumed["mpjpe"] == pytest.approx(full["mpjpe"], rel=1e-6)


def test_resume_refuses_a_different_config(tmp_path):
    _fake_fit(tmp_path / "run", 1)
    with pytest.raises(ValueError, match="different config"):
        _fake_fit(tmp_path / "run", 2, resume=True, balance="uniform")


def test_config_validation_and_overrides(tmp_path):
    cfg = config.resolve("small", overrides=["train.lr=3e-4", "model.modalities=[rgb,wifi]", "balance.awc.alpha_s=5"])
    assert cfg.train.lr == 3e-4 and cfg.model.modalities == ("rgb", "wifi") and cfg.balance.awc.alpha_s == 5.0
    assert config.config_hash(cfg) == config.config_hash(config.from_dict(cfg.to_dict()))
    cfg.out = "elsewhere"
    assert config.config_hash(cfg) == config.config_hash(config.from_dict(cfg.to_dict()))
    with pytest.raises(ValueError, match="model.fusion"):
        config.resolve(flags={"model": {"fusion": "sum"}})
    with pytest.raises(ValueError, match="unknown key.*train.learning_rate"):
        config.resolve(overrides=["train.learning_rate=1"])
    with pytest.raises(ValueError, match="unknown key.*lr.*has: balance, data, model, out, train"):
        config.resolve(overrides=["lr=1"])
    with pytest.raises(ValueError, match="subset of"):
        config.resolve(flags={"model": {"modalities": ["rgb", "radar"]}})
    paper = config.resolve("paper")
    assert (paper.balance.awc.alpha_s, paper.balance.awc.alpha_i, paper.balance.window) == (20000.0, 10000.0, 20)
    assert (paper.train.epochs, paper.train.batch_size, paper.train.lr_step) == (50, 192, 30)


def test_study_runs_arms_and_writes_report(tiny_dataset, array_cache, tmp_path):
    report, out = tmp_path / "results.md", tmp_path / "study"
    argv = ["study", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--protocols", "P1",
            "--seeds", "0", "1", "--epochs", "2", "--arms", "all-none", "all-awc",
            "--test-frames", "100", "--report", str(report), "--figure", str(tmp_path / "fig" / "s.png"),
            "--no-progress", "--set", f"data.cache_dir={array_cache}", "--set", "train.plots=false"]
    assert main(argv) == 0
    cfg = config.from_dict(json.loads(json.dumps(__import__("yaml").safe_load(
        (out / "P1" / "all-awc-s1" / "config.yaml").read_text()))))
    assert (cfg.train.epochs, cfg.balance.window, cfg.train.lr_step, cfg.train.seed) == (2, 1, 1, 1)
    text = report.read_text()
    assert "| all-awc | rgb+lidar+mmwave+wifi | awc | 2 |" in text
    assert "51.16 / 34.46" in text  # the paper's numbers beside ours
    assert "| awc | 2 | s0: " in text and "s1: " in text  # paired differences per seed
    assert "An AWC epoch inside the window" in text
    assert (tmp_path / "fig" / "s.png").stat().st_size > 0 and "](fig/s.png)" in text
    # notes below the marker survive a rewrite; finished runs are not retrained
    report.write_text(text + "\nhand-written notes\n")
    mtime = (out / "P1" / "all-awc-s0" / "metrics.json").stat().st_mtime
    assert main([*argv, "--report-only"]) == 0 and main(argv) == 0
    assert "hand-written notes" in report.read_text()
    assert (out / "P1" / "all-awc-s0" / "metrics.json").stat().st_mtime == mtime


def test_study_plan_schedule_and_claims(tmp_path):
    import argparse
    import os

    from training import study, study_arms

    p = argparse.ArgumentParser()
    study.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path), "--seeds", "0", "1", "2"])
    sched = study_arms.Schedule(30)
    assert (sched.window, sched.lr_step, sched.ogm_window) == (12, 18, 15)
    jobs = study.planned(args)
    main = [(pr, a.name, s) for pr, a, s in jobs if a.group == "main"]
    assert len(main) == 2 * 3 * (len(study_arms.METHODS) + 1 + 4)  # P1 + P2, 3 seeds, 12 arms
    sweeps = [(pr, a, s) for pr, a, s in jobs if a.group != "main"]
    assert all(pr == "P1" and s == 0 for pr, _, s in sweeps)
    names = {a.name for _, a, _ in sweeps}
    assert {"awc-aS0-aI10000", "awc-aS20000-aI0", "awc-aS2000-aI1000", "awc-aS200000-aI100000"} <= names
    assert {"awc-K3", "awc-K6", "awc-K18", "awc-K30", "all-attention-awc", "all-awc-S2", "all-ogm-ge-sgd"} <= names
    cfg = study.run_config(args, next(a for _, a, _ in sweeps if a.name == "all-awc-S2"), "P1", 0)
    assert cfg.data.split == "S2" and cfg.balance.window == 12 and cfg.train.lr_step == 18
    # claims: a run held by a live process is skipped, a dead claim is taken over
    run = tmp_path / "P1" / "x-s0"
    run.mkdir(parents=True)
    (run / "claim.json").write_text(json.dumps({"pid": os.getppid()}))
    assert not study._claim(run)
    (run / "claim.json").write_text(json.dumps({"pid": 2 ** 22 + 12345}))  # beyond pid_max: not alive
    assert study._claim(run) and json.loads((run / "claim.json").read_text())["pid"] == os.getpid()


def test_fit_never_replaces_a_run_unless_told(tiny_dataset, array_cache, tmp_path, capsys):
    """An existing run folder is refused (naming --resume and --overwrite); --overwrite deletes the old
    run's outputs before training, so nothing of it is left beside the new run; --resume continues."""
    from training.fit import RUN_FILES, run_outputs

    out = tmp_path / "run"
    _fit_cli(tiny_dataset, array_cache, out, "--epochs", "1", "--balance", "awc", "--set", "train.plots=false")
    first = (out / "best.pt").read_bytes()
    assert set(run_outputs(out)) >= {"config.yaml", "log.jsonl", "best.pt", "metrics.json"}
    assert set(run_outputs(out)) <= set(RUN_FILES) | {"plots", "tensorboard"}
    capsys.readouterr()
    argv = ["fit", "--preset", "tiny", "--data", str(tiny_dataset), "--out", str(out), "--no-progress",
            "--set", f"data.cache_dir={array_cache}", "--set", "train.plots=false", "--epochs", "1",
            "--balance", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == first and _log(out)[0]["in_window"], "the AWC run is intact"
    (out / "plots").mkdir(exist_ok=True)
    (out / "plots" / "stale.png").write_bytes(b"old run")
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "plots" / "stale.png").exists(), "--overwrite leaves nothing of the old run"
    assert [r["in_window"] for r in _log(out)] == [False], "the log is the new run's alone"
    assert yaml.safe_load((out / "config.yaml").read_text())["balance"]["method"] == "none"
    # --resume continues the run in place (one more epoch), refused together with --overwrite
    assert main([*argv[:-4], "--epochs", "2", "--balance", "none", "--resume"]) == 0
    assert [r["epoch"] for r in _log(out)] == [0, 1]
    with pytest.raises(SystemExit):
        main([*argv, "--resume", "--overwrite"])
