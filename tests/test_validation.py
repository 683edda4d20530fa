"""Validation during training: whole held-out training recordings choose best.pt; the fallback to
the test subset; the setting's checks; and the study, which keeps validating on the test subset so
its runs train on the same frames as before held-out validation existed."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pytest
import torch
from training_fakes import fake_arrays, fake_split

from sensors.core import schema
from sensors.core.settings import ConfigError
from training import config, distributed, study, study_arms
from training.checkpoint import load_checkpoint, read_checkpoint
from training.data import (
    Split,
    evenly_spaced,
    from_arrays,
    hold_out_validation,
    holdout_sequences,
    sequence_ids,
)
from training.evaluate import evaluate_model
from training.trainer import Trainer, fit

torch.set_num_threads(1)


def recorded_split(n_seq: int, per: int, cfg: config.Config, seed: int = 0) -> Split:
    """``n_seq`` recordings of ``per`` consecutive frames each (subject S01.., actions cycling)."""
    a = fake_arrays(n_seq * per, cfg.model, seed)
    seq = np.repeat(np.arange(n_seq), per)
    a["env"] = np.array(["E01"] * len(seq))
    a["subject"] = np.array([f"S{s + 1:02d}" for s in seq])
    a["action"] = np.array([schema.PROTOCOLS["P1"][s % 3] for s in seq])
    a["frame"] = np.tile(np.arange(per), n_seq)
    return from_arrays(a, cfg.model.modalities)


def _keys(split: Split) -> set[str]:
    seqs, inverse = sequence_ids(split)
    return set(seqs[inverse].tolist())


def _cfg(out, epochs: int = 2, **data) -> config.Config:
    return config.resolve("tiny", flags={"data": data, "out": str(out), "train": {"epochs": epochs, "plots": False}})


def _trainer(cfg: config.Config, train: Split, test: Split) -> Trainer:
    return Trainer(cfg, train, test, distributed.setup("cpu"), progress=False)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_held_out_recordings_are_whole_and_never_trained_on(tmp_path):
    cfg = _cfg(tmp_path, val_fraction=0.25, max_val=30)
    train, test = recorded_split(8, 20, cfg), fake_split(48, cfg.model, 1)
    kept, val = hold_out_validation(cfg.data, train, test)
    assert val.source == "sequences" and len(val.sequences) == 2 and not val.note  # round(0.25 x 8)
    assert len(kept) == 6 * 20                                  # every frame of the two recordings left
    assert _keys(kept).isdisjoint(val.sequences) and _keys(val.frames) == set(val.sequences)
    assert len(val.frames) == 30                                # data.max_val of the 40 held-out frames
    assert val.describe() == {"set": "sequences", "frames": 30, "unit": "recording", "sequences": val.sequences}
    # the rule is deterministic and spread through the sorted recordings, not the first ones
    assert val.sequences == ["E01/S01/A02", "E01/S08/A03"] == hold_out_validation(cfg.data, train, test)[1].sequences
    # the Trainer fits (mean pose, balancer, optimiser) on the kept frames only
    trainer = _trainer(cfg, train, test)
    assert len(trainer.train) == 120 and _keys(trainer.train).isdisjoint(trainer.validation.sequences)
    assert torch.allclose(trainer.model.mean_pose.cpu(), kept.tensors["joints"].mean(dim=0))


def test_cross_subject_splits_hold_out_whole_subjects(tmp_path):
    """S2 and S3 test on unseen people, so validation holds out every recording of whole training
    subjects (round(val_fraction x subjects)); S1 holds out single recordings."""
    cfg = _cfg(tmp_path, val_fraction=0.25, split="S2")
    a = fake_arrays(8 * 3 * 10, cfg.model, 0)             # 8 subjects x 3 actions x 10 frames
    seq = np.repeat(np.arange(24), 10)
    a["env"] = np.array(["E01"] * len(seq))
    a["subject"] = np.array([f"S{s // 3 + 1:02d}" for s in seq])
    a["action"] = np.array([schema.PROTOCOLS["P1"][s % 3] for s in seq])
    a["frame"] = np.tile(np.arange(10), 24)
    train, test = from_arrays(a, cfg.model.modalities), fake_split(48, cfg.model, 1)
    kept, val = hold_out_validation(cfg.data, train, test)
    held_subjects = {r.split("/")[1] for r in val.sequences}
    assert val.unit == "subject" and held_subjects == {"S01", "S08"}            # round(0.25 x 8), spread
    assert len(val.sequences) == 6 and len(kept) == 6 * 3 * 10                  # all three recordings of each
    assert held_subjects.isdisjoint(set(kept.meta["subject"].tolist()))
    assert val.describe()["unit"] == "subject"
    for split in ("S1", "S3"):
        cfg.data.split = split
        unit = hold_out_validation(cfg.data, train, test)[1].unit
        assert unit == ("recording" if split == "S1" else "subject")
    # two subjects are too few to hold one out at 0.1: the test subset stands in, and says why
    cfg.data.split, cfg.data.val_fraction = "S2", 0.1
    few = train.take(np.flatnonzero(np.isin(train.meta["subject"], ["S01", "S02"])))
    _, fallback = hold_out_validation(cfg.data, few, test)
    assert fallback.source == "test" and "2 training subject(s) are too few" in fallback.note


def test_best_pt_is_chosen_on_the_held_out_recordings(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out, epochs=3, val_fraction=0.25)
    cfg.train.lr = 3e-3
    train, test = recorded_split(8, 20, cfg), fake_split(48, cfg.model, 1)
    trainer = _trainer(cfg, train, test)
    result = trainer.fit()
    log = _log(out)
    assert [r["val_set"] for r in log] == ["sequences"] * 3
    vals = [r["val_mpjpe"] for r in log]
    best = read_checkpoint(out / "best.pt")
    assert best["epoch"] == int(np.argmin(vals)) == result["best_epoch"]
    assert best["metrics"]["val_set"] == "sequences" and result["best_val_mpjpe"] == min(vals)
    assert result["validation"]["set"] == "sequences" and len(result["validation"]["sequences"]) == 2
    assert _keys(trainer.train).isdisjoint(result["validation"]["sequences"])
    # the recorded figure is best.pt's error on those held-out frames, not on the test subset
    model, _, _ = load_checkpoint(out / "best.pt")
    assert evaluate_model(model, trainer.val, with_shapley=False)["mpjpe"] == pytest.approx(min(vals), rel=1e-5)
    # metrics.json stays the last-epoch model on the whole test subset
    assert result["frames"] == len(test)
    assert result["mpjpe"] == pytest.approx(evaluate_model(trainer.model, test, with_shapley=False)["mpjpe"])


def test_too_few_recordings_fall_back_to_the_test_subset_and_say_so(tmp_path, caplog):
    out = tmp_path / "run"
    cfg = _cfg(out, epochs=1)
    train, test = fake_split(160, cfg.model, 0), fake_split(48, cfg.model, 1)   # 3 recordings: 0.1 x 3 rounds to 0
    with caplog.at_level(logging.WARNING, logger="training.trainer"):
        result = fit(cfg, train, test, progress=False)
    assert "too few to hold out" in caplog.text
    assert [r["val_set"] for r in _log(out)] == ["test"]
    assert result["validation"]["set"] == "test" and "too few" in result["validation"]["note"]
    assert read_checkpoint(out / "best.pt")["metrics"]["val_set"] == "test"
    one = recorded_split(1, 20, cfg)   # a single recording is never held out, whatever the fraction
    cfg.data.val_fraction = 0.5
    kept, val = hold_out_validation(cfg.data, one, test)
    assert kept is one and val.source == "test" and len(val.frames) == len(test)


def test_validation_settings_are_checked():
    with pytest.raises(ConfigError, match=r"data.validation must be one of \('sequences', 'test'\), got 'train'"):
        config.resolve(overrides=["data.validation=train"])
    for bad in ("0", "0.6", "-0.1"):
        with pytest.raises(ConfigError, match=r"data.val_fraction .* must be in \(0, 0.5\]"):
            config.resolve(overrides=[f"data.val_fraction={bad}"])
    assert config.Config().data.validation == "sequences"
    # a config saved before the setting existed was trained validating on the test subset
    saved = config.Config().to_dict()
    del saved["data"]["validation"], saved["data"]["val_fraction"]
    assert config.from_dict(saved).data.validation == "test"


def _study_args(tmp_path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    study.add_arguments(p)
    return p.parse_args(["--out", str(tmp_path / "study"), "--data", str(tmp_path / "data"), "--preset", "tiny",
                         *extra])


def test_study_runs_train_on_the_same_frames_as_before(tmp_path):
    args = _study_args(tmp_path)
    jobs = study.planned(args)
    assert jobs and all(study.run_config(args, a, p, s).data.validation == "test" for p, a, s in jobs)
    arms = {a.name: a for _, a, _ in jobs}
    for name in ("all-none", "all-g-blending", "rgb"):
        cfg = study.run_config(args, arms[name], "P1", 0)
        train, test = recorded_split(8, 20, cfg), fake_split(48, cfg.model, 1)
        trainer = _trainer(cfg, train, test)
        # before held-out validation: every training frame (minus G-Blending's own held-out
        # recordings) was trained on and the evenly spaced test frames validated
        before = holdout_sequences(train, cfg.balance.g_blending.holdout)[1] if name == "all-g-blending" else np.arange(160)
        assert torch.equal(trainer.train.tensors["joints"], train.tensors["joints"][before])
        assert np.array_equal(trainer.train.meta["subject"], train.meta["subject"][before])
        assert torch.equal(trainer.val.tensors["joints"],
                           test.tensors["joints"][evenly_spaced(len(test), cfg.data.max_val)])
        assert trainer.validation.source == "test" and not trainer.validation.note
    cfg.data.validation = "sequences"   # what the pin prevents: recordings leave training
    assert len(_trainer(cfg, train, test).train) < 160


def test_study_resumes_and_skips_runs_from_before_the_setting(tmp_path, monkeypatch):
    args = _study_args(tmp_path, "--arms", "all-none", "--seeds", "0", "--protocols", "P1", "--group", "main",
                       "--epochs", "2")
    (_, arm, _), = study.planned(args)
    cfg = study.run_config(args, arm, "P1", 0)
    cfg.train.plots = False
    train, test = recorded_split(8, 20, cfg), fake_split(48, cfg.model, 1)
    cfg.train.epochs = 1
    fit(cfg, train, test, progress=False)                        # interrupted after one epoch ...
    out = study_arms.run_dir(tmp_path / "study", "P1", arm, 0)
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["data"]["validation"], state["config"]["data"]["val_fraction"]
    torch.save(state, ckpt)                                      # ... by the code before the setting
    default = config.from_dict(cfg.to_dict())
    default.data.validation = "sequences"
    with pytest.raises(ValueError, match="different config .*data.validation differ"):
        fit(default, train, test, resume=True, progress=False)   # a plain fit may not change it midway
    cfg.train.epochs = 2
    result = fit(cfg, train, test, resume=True, progress=False)  # the study's config continues it
    assert [r["epoch"] for r in _log(out)] == [0, 1] and result["epochs"] == 2
    # a finished run (metrics.json) is never trained again, whatever its config.yaml predates
    (tmp_path / "data" / "E01" / "S01" / "A02").mkdir(parents=True)
    saved = json.loads(json.dumps(config.Config().to_dict()))
    del saved["data"]["validation"]
    (out / "config.yaml").write_text(json.dumps(saved))
    before = (out / "metrics.json").read_bytes()

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("training.trainer.fit", no_training)
    study.run_all(args)
    assert (out / "metrics.json").read_bytes() == before and not (out / "claim.json").exists()
