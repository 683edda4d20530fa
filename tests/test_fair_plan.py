"""The fair test's plan: step schedules, stages that open as their decisions are written, decisions
read off held-out validation only, the frozen-groups variant and the penalty's gradient scale."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from training_fakes import fake_split

from sensors.core import schema
from training import balance_methods, config, fair_plan, study
from training.cli import main
from training.losses import mpjpe_loss
from training.model import build_model

torch.set_num_threads(1)


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    study.add_arguments(p)
    return p.parse_args(["--plan", "fair", "--out", str(tmp_path), "--data", str(tmp_path / "data"), *extra])


def _finished(run, val: float, val_set: str = "sequences", epochs: int = 3) -> None:
    run.mkdir(parents=True)
    log = [{"epoch": e, "steps": 10, "val_mpjpe": val + (epochs - 1 - e), "val_set": val_set} for e in range(epochs)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (run / "metrics.json").write_text(json.dumps({"mpjpe": 999.0}))   # the test figure is never read


def test_step_schedule_in_epochs():
    s = fair_plan.StepSchedule(total=7500, window=3000, lr_step=6000)
    assert s.in_epochs(300) == {"epochs": 25, "window": 10, "lr_step": 20}
    assert s.in_epochs(270) == {"epochs": 28, "window": 11, "lr_step": 22}   # as many steps, more epochs
    e = s.in_epochs(7)
    assert e["lr_step"] - e["window"] >= e["window"]   # full-rate steps after the window >= inside it
    assert fair_plan.StepSchedule(100, 10, 20).in_epochs(1000) == {"epochs": 2, "window": 1, "lr_step": 2}
    with pytest.raises(ValueError, match="window <= lr_step - window"):
        fair_plan.StepSchedule(total=7500, window=4000, lr_step=6000)


def test_stages_open_as_their_decisions_are_written(tmp_path):
    bench = fair_plan.jobs(_args(tmp_path, "--stage", "bench"))
    assert {a.name for _, a, _ in bench} == {"rgb", "mmwave", "wifi", *(f"lidar-cap{c}" for c in fair_plan.CAPS)}
    assert {(p, s) for p, _, s in bench} == {("P1", 0)}
    early = fair_plan.jobs(_args(tmp_path, "--stage", "main"))   # rows no decision touches may start
    assert {a.name for _, a, _ in early} == {"rgb", "wifi"} and len(early) == 2 * 2 * 3
    with pytest.raises(FileNotFoundError, match="bench.json"):
        fair_plan.jobs(_args(tmp_path, "--stage", "alpha"))
    (tmp_path / "bench.json").write_text(json.dumps({"cap": 96}))
    main_jobs = fair_plan.jobs(_args(tmp_path, "--stage", "main"))
    names = {a.name for _, a, _ in main_jobs}
    assert "lidar-cap96" in names and "all-none" in names and "all-awc-val" not in names   # not decided yet
    assert len(main_jobs) == 2 * 3 * 8
    cfg = fair_plan.run_config(_args(tmp_path), next(a for _, a, _ in main_jobs if a.name == "all-awc"), "P2", 1)
    assert (cfg.model.lidar_crop, cfg.model.lidar_cap, cfg.data.validation, cfg.data.max_train) == \
        (False, 96, "sequences", fair_plan.MAX_TRAIN)
    alpha = fair_plan.jobs(_args(tmp_path, "--stage", "alpha"))
    assert {a.name for _, a, _ in alpha} == {"awc-x0.1", "awc-x0.01", "awc-x0.001", "awc-per-batch"}
    x = fair_plan.run_config(_args(tmp_path), next(a for _, a, _ in alpha if a.name == "awc-x0.001"), "P1", 0)
    assert (x.balance.awc.alpha_s, x.balance.awc.alpha_i) == (20.0, 10.0)
    (tmp_path / "choice.json").write_text(json.dumps({"alpha_scale": 0.01, "window": 1800}))
    every = fair_plan.jobs(_args(tmp_path, "--stage", "all"))
    arms = {a.name: a for _, a, _ in every}
    assert {"awc-best-w900", "all-awc-frozen", "all-uniform", "all-awc-val-S2", "all-awc-late-lr"} <= set(arms)
    assert len({(p, a.name, s) for p, a, s in every}) == len(every)   # a run shared by two stages: once
    frozen = fair_plan.run_config(_args(tmp_path), arms["all-awc-frozen"], "P1", 0)
    assert (frozen.balance.awc.group_by, frozen.balance.awc.alpha_i, frozen.balance.awc.alpha_s) == ("first_epoch", 0.0, 200.0)
    assert fair_plan.arm_schedule(arms["all-awc-frozen"]).window == 1800
    assert fair_plan.arm_schedule(arms["all-awc-late-lr"]) == fair_plan.LATE_LR
    assert fair_plan.run_config(_args(tmp_path), arms["all-awc-val-S2"], "P1", 2).data.split == "S2"


def test_cap_is_chosen_on_validation_only(tmp_path):
    p1 = tmp_path / "P1"
    _finished(p1 / "rgb-s0", 80.0)
    for cap, val in {64: 110.0, 96: 90.0, 128: 78.0, 192: 55.0}.items():
        _finished(p1 / f"lidar-cap{cap}-s0", val)
    _finished(p1 / "mmwave-s0", 170.0)
    d = fair_plan.select_cap(tmp_path)
    assert d["cap"] == 96 and d["lidar_ratio"]["96"] == pytest.approx(90 / 80)   # 1.125: nearest 1.05 inside
    assert d["ratio"]["mmwave"] == pytest.approx(170 / 80) and "wifi" not in d["ratio"]
    _finished(p1 / "lidar-cap48-s0", 140.0)
    assert fair_plan.select_cap(tmp_path, caps=(48, 192))["cap"] is None   # 1.75 and 0.69: none inside
    _finished(tmp_path / "P2" / "rgb-s0", 80.0, val_set="test")
    with pytest.raises(ValueError, match="never made on test frames"):
        fair_plan.last_validation(tmp_path / "P2" / "rgb-s0")
    # the command writes the decision, and refuses to write one when no cap is inside the band
    args = ["study", "--plan", "fair", "--out", str(tmp_path), "--decide"]
    assert main(args) == 0 and json.loads((tmp_path / "bench.json").read_text())["cap"] == 96


def test_alpha_then_window_chosen_on_validation(tmp_path):
    p1 = tmp_path / "P1"
    _finished(p1 / "all-none-s0", 50.0)
    for name, val in {"all-awc": 60.0, "awc-x0.1": 52.0, "awc-x0.01": 49.0, "awc-x0.001": 50.5}.items():
        _finished(p1 / f"{name}-s0", val)
    d = fair_plan.select_alpha(tmp_path)
    assert d["alpha_scale"] == 0.01 and "window" not in d   # the window runs are still to come
    _finished(p1 / "awc-best-w900-s0", 48.0)
    _finished(p1 / "awc-best-w1800-s0", 49.5)
    d = fair_plan.select_alpha(tmp_path)
    assert d["window"] == 900 and d["window_val_mpjpe"][str(fair_plan.SCHEDULE.window)] == 49.0


def test_unknown_arms_are_refused_with_the_known_ones(tmp_path, capsys):
    assert main(["study", "--plan", "fair", "--out", str(tmp_path), "--arms", "nope", "--report-only"]) == 2
    assert main(["study", "--out", str(tmp_path), "--arms", "all-nope", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "unknown nope" in err and "all-awc-frozen" in err and "unknown all-nope" in err and "awc-K3" in err


def _step(model, bal, batch, phi):
    feats = model.encode(*[batch[k] for k in schema.MODEL_INPUTS[:-1]])
    task = mpjpe_loss(model.fuse(feats, batch["presence"]), batch["joints"])
    bal.observe(phi, np.zeros(schema.N_COALITIONS))
    loss = bal.loss(task, feats, batch)
    model.zero_grad(set_to_none=True)
    loss.backward()
    bal.after_backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
    return float((loss - task).detach())


def test_frozen_groups_variant_measures_then_constrains_the_early_leader():
    cfg = config.resolve("tiny", flags={"balance": {"method": "awc", "window": 3,
                                                    "awc": {"group_by": "first_epoch", "alpha_i": 0.0}}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    train = fake_split(64, cfg.model)
    model.set_mean_pose(train.tensors["joints"].mean(dim=0))
    bal = balance_methods.make(balance_methods.Context(model, cfg, train, torch.device("cpu")))
    b = train.batch(torch.arange(16))
    assert bal.epoch_start(0) == {} and bal.active                   # measuring epoch: no Fisher
    assert _step(model, bal, b, np.array([9.0, 2.0, 1.0, 0.5])) == 0.0   # unconstrained
    end = bal.epoch_end()
    assert end["groups"] == {"rgb": "S", "lidar": "I", "mmwave": "I", "wifi": "I"} and end["groups_frozen"]
    rec = bal.epoch_start(1)
    assert "fisher" in rec and bal.groups == ["S", "I", "I", "I"]
    _step(model, bal, b, np.zeros(4))
    penalty = _step(model, bal, b, np.array([0.0, 30.0, 0.0, 0.0]))   # LiDAR leads now: groups stay
    assert penalty > 0 and bal.groups == ["S", "I", "I", "I"]
    assert bal.alphas == {"rgb": cfg.balance.awc.alpha_s, "lidar": 0.0, "mmwave": 0.0, "wifi": 0.0}
    ratio = bal.epoch_end()["penalty_grad_ratio"]
    assert ratio["S"] > 0 and ratio["I"] == 0.0                       # alpha_I = 0: no pull on the others
    # a resumed run keeps the frozen groups
    again = balance_methods.make(balance_methods.Context(model, cfg, train, torch.device("cpu")))
    again.load_state_dict(bal.state_dict())
    again.epoch_start(2)
    assert again.groups == ["S", "I", "I", "I"] and again.anchors is not None


def test_penalty_gradient_ratio_matches_autograd():
    cfg = config.resolve("tiny", flags={"balance": {"method": "awc", "window": 2}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    train = fake_split(64, cfg.model)
    model.set_mean_pose(train.tensors["joints"].mean(dim=0))
    bal = balance_methods.make(balance_methods.Context(model, cfg, train, torch.device("cpu")))
    bal.epoch_start(0)
    b = train.batch(torch.arange(16))
    _step(model, bal, b, np.array([9.0, 2.0, 1.0, 0.5]))   # theta moves away from theta0
    feats = model.encode(*[b[k] for k in schema.MODEL_INPUTS[:-1]])
    task = mpjpe_loss(model.fuse(feats, b["presence"]), b["joints"])
    bal.observe(np.array([9.0, 2.0, 1.0, 0.5]), np.zeros(schema.N_COALITIONS))
    params = [p for _, p in model.encoder_parameters()["rgb"]]
    loss = bal.loss(task, feats, b)
    g_task = torch.autograd.grad(task, params, retain_graph=True, allow_unused=True)
    g_pen = torch.autograd.grad(loss - task, params, retain_graph=True, allow_unused=True)
    norm = lambda gs: float(torch.sqrt(sum((g ** 2).sum() for g in gs if g is not None)))  # noqa: E731
    want = norm(g_pen) / norm(g_task)
    bal.ratio_sum.clear()
    bal.ratio_n.clear()
    model.zero_grad(set_to_none=True)
    loss.backward()
    bal.after_backward()
    assert bal.groups[schema.MODALITY_INDEX["rgb"]] == "S"   # rgb alone in its group
    assert bal.ratio_sum["S"] == pytest.approx(want, rel=1e-4)


def test_bench_stage_runs_decides_and_reports_on_a_tiny_dataset(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fair_plan, "SCHEDULE", fair_plan.StepSchedule(total=100, window=40, lr_step=80))
    monkeypatch.setattr(fair_plan, "CAPS", (16,))
    out, report = tmp_path / "fair", tmp_path / "results.md"
    argv = ["study", "--plan", "fair", "--stage", "bench", "--arms", "rgb,lidar-cap16", "--preset",
            "tiny", "--data", str(tiny_dataset), "--out", str(out), "--report", str(report), "--test-frames", "100",
            "--no-progress", "--set", "train.plots=false"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "P1" / "lidar-cap16-s0" / "log.jsonl").read_text().splitlines()]
    cfg = config.from_dict(__import__("yaml").safe_load((out / "P1" / "lidar-cap16-s0" / "config.yaml").read_text()))
    spe = log[0]["steps"]
    assert (cfg.model.lidar_cap, cfg.model.lidar_crop, log[-1]["val_set"]) == (16, False, "sequences")
    assert cfg.train.epochs == round(100 / spe) and len(log) == cfg.train.epochs   # the schedule, in steps
    capsys.readouterr()
    if main(["study", "--plan", "fair", "--out", str(out), "--decide"]) == 0:   # a cap inside the band
        assert json.loads((out / "bench.json").read_text())["cap"] == 16
    else:
        assert not (out / "bench.json").exists() and '"cap": null' in capsys.readouterr().out
    assert main([*argv, "--report-only"]) == 0
    text = report.read_text()
    assert text.startswith("# Study results: the fair test of AWC") and "## Decisions" in text
    assert ("| 16 (chosen) |" in text) == (out / "bench.json").exists()
