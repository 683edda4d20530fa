"""The contribution baseline is measured on the validation recordings the checkpoint's run held
out of training (derived from its config exactly as ``training fit`` does), or on the test subset,
said so in a warning and in the metadata, where that run validated on it."""

from __future__ import annotations

import logging

import numpy as np
import torch

from runtime.inference import OnnxPoseModel, describe
from sensors.mmfi import MMFiDataset
from training import config, distributed
from training.calibration import load_calibration
from training.data import load_splits, select_frames, sequence_ids
from training.trainer import Trainer

torch.set_num_threads(1)


def _cfg(root, out, **data) -> config.Config:
    return config.resolve("tiny", flags={"data": {"root": str(root), **data}, "out": str(out),
                                         "train": {"plots": False}})


def _trainer(cfg: config.Config) -> Trainer:
    """The trainer as ``training fit`` builds it (training.trainer.fit, without the epochs)."""
    train, test = load_splits(cfg, progress=False)
    train, test = select_frames(cfg, train), select_frames(cfg, test)
    return Trainer(cfg, train, test, distributed.setup("cpu"), progress=False)


def _recordings(split) -> set[str]:
    seqs, inverse = sequence_ids(split)
    return set(seqs[np.unique(inverse)].tolist())


def test_calibration_frames_are_the_trainers_validation_frames(tmp_path, tiny_dataset):
    # every frame, every validation frame: the trainer validates on whole held-out recordings
    cfg = _cfg(tiny_dataset, tmp_path, max_train=0, max_val=0, val_fraction=0.25)
    trainer = _trainer(cfg)
    held = trainer.validation.sequences
    assert trainer.validation.source == "sequences" and len(held) == 2   # round(0.25 x 6 recordings)
    cal = load_calibration(cfg, window=1, max_frames=10_000, progress=False)   # window 1: no frame cut off
    assert cal.source["set"] == "sequences" and cal.source["held_out"] == held
    assert cal.source["recordings"] == held and cal.source["subset"] == "train"
    # the same frames, in the same order, with the same inputs
    np.testing.assert_array_equal(cal.targets, trainer.val.tensors["joints"].numpy())
    for name in ("rgb", "lidar", "mmwave", "wifi", "presence"):
        np.testing.assert_array_equal(cal.inputs[name], trainer.val.tensors[name].numpy(), err_msg=name)
    # and none of them was trained on
    assert _recordings(trainer.train).isdisjoint(cal.source["recordings"])
    trained = {r.tobytes() for r in trainer.train.tensors["joints"].numpy()}
    assert not any(r.tobytes() in trained for r in cal.targets)


def test_held_out_recordings_follow_max_train_and_complete_frames(tmp_path, tiny_dataset):
    # the tiny preset subsamples the training frames (data.max_train) before holding recordings out,
    # and data.frames=complete drops the frames missing a modality before that
    cfg = _cfg(tiny_dataset, tmp_path, frames="complete", val_fraction=0.4)
    assert cfg.data.max_train > 0
    trainer = _trainer(cfg)
    cal = load_calibration(cfg, max_frames=300, progress=False)
    assert trainer.validation.source == "sequences"
    assert cal.source["held_out"] == trainer.validation.sequences
    assert set(cal.source["recordings"]) <= set(trainer.validation.sequences)
    assert _recordings(trainer.train).isdisjoint(cal.source["recordings"])
    assert len(trainer.validation.sequences) == 2 and len(cal.source["recordings"]) == 2   # 297 < 300 frames
    assert len(cal.targets) == 300 and len(cal.windows(30)) == 10   # --calibration-frames, whole windows


def test_a_run_validated_on_the_test_subset_calibrates_on_it_and_says_so(tmp_path, tiny_dataset, caplog):
    cfg = _cfg(tiny_dataset, tmp_path, validation="test")
    with caplog.at_level(logging.WARNING, logger="training.export"):
        cal = load_calibration(cfg, max_frames=60, progress=False)
    assert "test subset" in caplog.text and "data.validation=test" in caplog.text
    assert cal.source["set"] == "test" and cal.source["subset"] == "test"
    assert "data.validation=test" in cal.source["note"]
    test = MMFiDataset(tiny_dataset, cfg.data.protocol, cfg.data.split, "test", cfg.data.split_seed)
    assert cal.source["recordings"] == [str(test.keys[0])]   # the 60 frames asked for: one recording


def test_too_few_recordings_fall_back_to_the_test_subset(tmp_path, tiny_dataset, caplog):
    cfg = _cfg(tiny_dataset, tmp_path, val_fraction=0.05)   # 0.05 x 6 recordings rounds to none
    with caplog.at_level(logging.WARNING, logger="training.export"):
        cal = load_calibration(cfg, max_frames=60, progress=False)
    assert "too few to hold out" in caplog.text
    assert cal.source["set"] == "test" and "too few" in cal.source["note"]


def test_training_export_records_the_calibration_set(tmp_path, tiny_dataset):
    from fixtures.export_models import tiny_model

    from training import cli as training_cli
    from training.checkpoint import save_checkpoint

    model, cfg = tiny_model("mlp", seed=3)
    cfg.data.root = str(tiny_dataset)
    out = {}
    for validation in ("sequences", "test"):
        cfg.data.validation = validation
        ckpt = tmp_path / f"{validation}.pt"
        save_checkpoint(ckpt, model, cfg, epoch=1, metrics={"val_mpjpe": 99.5, "val_set": validation})
        out[validation] = tmp_path / f"{validation}.onnx"
        argv = ["export", "--checkpoint", str(ckpt), "--out", str(out[validation]), "--calibration-frames", "60"]
        assert training_cli.main(argv) == 0
    held = OnnxPoseModel.load(out["sequences"], provider="cpu", intra_op_threads=1)
    source = held.metadata.baseline.source
    assert source["set"] == "sequences" and source["held_out"] == ["E01/S02/A02"]   # 1 of 6 (val_fraction 0.1)
    assert held.metadata.validation_metrics["val_set"] == "sequences"
    assert "held-out training recording(s), never trained on" in describe(held)
    fallback = OnnxPoseModel.load(out["test"], provider="cpu", intra_op_threads=1)
    assert fallback.metadata.baseline.source["set"] == "test"
    assert "on the test subset (the checkpoint's run validated on the test subset" in describe(fallback)


def test_the_export_records_what_the_model_was_trained_on(tmp_path, tiny_dataset):
    # the contract's training facts are the trainer's own training frames: validation subjects out
    from fixtures.export_models import tiny_model

    from training import cli as training_cli
    from training.checkpoint import save_checkpoint

    model, cfg = tiny_model("concat", seed=1)
    cfg.data.root = str(tiny_dataset)
    cfg.data.split, cfg.data.max_train, cfg.data.val_fraction = "S2", 0, 0.5
    trainer = _trainer(cfg)
    ckpt, onnx_path = tmp_path / "run.pt", tmp_path / "run.onnx"
    save_checkpoint(ckpt, model, cfg, epoch=1, metrics={"val_mpjpe": 88.0, "val_set": "sequences"})
    assert training_cli.main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path),
                              "--calibration-frames", "60"]) == 0
    meta = OnnxPoseModel.load(onnx_path, provider="cpu", intra_op_threads=1).metadata
    trained = trainer.train.meta
    assert meta.trained_actions == tuple(sorted(set(trained["action"].tolist())))
    assert meta.trained_subjects == len(set(trained["subject"].tolist())) >= 1
    held = {r.split("/")[1] for r in trainer.validation.sequences}
    assert held and held.isdisjoint(trained["subject"].tolist())         # the held-out subject is not counted
    assert (meta.trained_protocol, meta.trained_split, meta.validation_mpjpe_mm) == ("P1", "S2", 88.0)
    assert meta.trained_on("a02") is True and meta.trained_on("A12") is False and meta.trained_on("") is None
    assert "protocol P1, split S2" in describe(OnnxPoseModel.load(onnx_path, provider="cpu", intra_op_threads=1))
