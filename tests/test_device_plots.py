"""training.device (--device parsing and selection, CPU path real, CUDA rules on reported
availability), run plots and the TensorBoard log."""

from __future__ import annotations

import numpy as np
import pytest

from training import device as dev
from training.device import Available, DeviceError

NO_GPU = Available(cuda=False, count=0, torch_version="2.13.0+cpu", cuda_build=None)
TWO_GPUS = Available(cuda=True, count=2, torch_version="2.13.0+cu126", cuda_build="12.6")


@pytest.mark.parametrize("spec,want", [("auto", ("auto", None)), ("CPU", ("cpu", None)), ("cuda", ("cuda", None)),
                                       ("cuda:1", ("cuda", 1)), (" cuda:0 ", ("cuda", 0))])
def test_parse_accepts_the_documented_forms(spec, want):
    assert dev.parse(spec) == want


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", "auto:1", "", "mps"])
def test_parse_refuses_anything_else_naming_the_choices(spec):
    with pytest.raises(DeviceError, match=r"auto \| cpu \| cuda \| cuda:N"):
        dev.parse(spec)


def test_select_rules():
    assert dev.select("auto", NO_GPU) == "cpu"
    assert dev.select("cpu", TWO_GPUS) == "cpu"
    assert dev.select("auto", TWO_GPUS) == "cuda:0"
    assert dev.select("cuda", TWO_GPUS) == "cuda:0"
    assert dev.select("cuda:1", TWO_GPUS) == "cuda:1"
    # torchrun: each rank its LOCAL_RANK's GPU; one named GPU for several ranks is refused
    assert dev.select("auto", TWO_GPUS, local_rank=1, world=2) == "cuda:1"
    assert dev.select("cuda", TWO_GPUS, local_rank=1, world=2) == "cuda:1"
    with pytest.raises(DeviceError, match="torchrun runs 2 processes"):
        dev.select("cuda:0", TWO_GPUS, local_rank=0, world=2)
    with pytest.raises(DeviceError, match="GPU 2 requested, but torch sees 2"):
        dev.select("cuda:2", TWO_GPUS)
    with pytest.raises(DeviceError, match="CPU-only build of torch.*README"):
        dev.select("cuda", NO_GPU)
    with pytest.raises(DeviceError, match="built for CUDA 12.6, but no usable GPU"):
        dev.select("cuda:0", Available(False, 0, "2.13.0+cu126", "12.6"))
    assert dev.backend("cuda:1") == "nccl" and dev.backend("cpu") == "gloo"


def test_the_choice_is_described_in_one_line():
    line = dev.describe("auto", "cpu", NO_GPU)
    assert line.startswith("--device auto: using the CPU (torch ") and line.endswith(", a CPU-only build, sees no GPU)")
    assert dev.describe("cpu", "cpu", TWO_GPUS) == "--device cpu: using the CPU (asked for)"
    line = dev.describe("auto", "cuda:1", Available(True, 2, "2.13.0+cu126", "12.6", "NVIDIA L4"))
    assert line == "--device auto: using cuda:1 (NVIDIA L4; torch 2.13.0+cu126 sees 2 GPUs, CUDA 12.6)"


def test_auto_logs_what_it_picked(caplog):
    pytest.importorskip("torch")
    with caplog.at_level("INFO", logger="training.device"):
        device = dev.resolve("auto")
    messages = [r.getMessage() for r in caplog.records if r.name == "training.device"]
    where = "the CPU" if device == "cpu" else device
    assert len(messages) == 1 and messages[0].startswith(f"--device auto: using {where} ("), messages


def test_this_machine_cpu_path_and_honest_cuda_refusal():
    torch = pytest.importorskip("torch")
    from training import distributed

    info = distributed.setup("cpu")
    assert info.device == "cpu" and not info.enabled
    assert distributed.setup("auto").device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees none"):
            distributed.setup("cuda")


def test_config_and_cli_carry_the_device():
    pytest.importorskip("torch")
    import argparse

    from training import fit
    from training.config import config_hash, resolve

    p = argparse.ArgumentParser()
    fit.add_arguments(p)
    args = p.parse_args(["--preset", "tiny", "--device", "cuda:1", "--tensorboard"])
    cfg = resolve(args.preset, None, fit.flags_from_args(args), args.set)
    assert cfg.train.device == "cuda:1" and cfg.train.tensorboard
    assert config_hash(cfg) == config_hash(resolve("tiny")), "where a run executes is not part of its hash"
    with pytest.raises(ValueError, match="train.device: --device must be"):
        resolve("tiny", overrides=["train.device=gpu"])


# --- plots ---------------------------------------------------------------------------------------

def _history(n_epochs: int):
    return [{"epoch": e, "loss_task": 0.1 / (e + 1), "loss_balance": 0.02 if e < 1 else 0.0, "train_mpjpe": 90.0 - e,
             "val_mpjpe": 95.0 - e, "train_pa_mpjpe": 60.0, "val_pa_mpjpe": 62.0, "in_window": e < 1,
             "shapley": {"rgb": 0.5, "lidar": 0.3, "mmwave": 0.1, "wifi": 0.05}} for e in range(n_epochs)]


def test_curves_after_one_epoch_have_markers_and_svg(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from training import plots

    captured = {}
    real_save = plots._save
    plots._save = lambda fig, stem: captured.setdefault("fig", fig) and real_save(fig, stem)
    try:
        paths = plots.plot_curves(_history(1), tmp_path / "curves", "run-7 (abc123)")
    finally:
        plots._save = real_save
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    fig = captured["fig"]
    assert fig._suptitle.get_text().startswith("run-7 (abc123)")
    for ax in fig.axes:
        for line in ax.get_lines():
            assert line.get_marker() not in (None, "", "None"), "one epoch must show as a point"
    plt.close(fig)


def test_log_loss_axis_leaves_out_zero_awc_instead_of_diving(tmp_path):
    from training import plots

    v = plots._positive([0.5, 0.0, -1.0, 2.0])
    assert v[0] == 0.5 and np.isnan(v[1]) and np.isnan(v[2]) and v[3] == 2.0
    plots.plot_curves(_history(3), tmp_path / "c")   # epochs 1, 2 have L_AWC = 0: no error, no dive


def test_skeleton_sides_equal_axes_and_per_frame_error(tmp_path):
    import matplotlib.pyplot as plt

    from sensors.core import schema
    from training import plots

    assert plots.edge_side(0, 4) == "left" and plots.edge_side(8, 14) == "right" and plots.edge_side(7, 8) == "centre"
    sides = {plots.edge_side(a, b) for a, b in schema.SKELETON_EDGES}
    assert sides == {"left", "right", "centre"}
    rng = np.random.default_rng(0)
    gt = rng.normal([0, 0, 3], [0.15, 0.3, 0.1], size=(2, 17, 3)).astype(np.float32)
    pred = gt + np.float32(0.05)
    captured = {}
    real_save = plots._save
    plots._save = lambda fig, stem: captured.setdefault("fig", fig) and real_save(fig, stem)
    try:
        paths = plots.plot_skeletons(pred, gt, ["A02 chest", "A03 chest"], tmp_path / "sk", "run")
    finally:
        plots._save = real_save
    assert {p.suffix for p in paths} == {".png", ".svg"}
    axes = [a for a in captured["fig"].axes if a.name == "3d"]
    assert len(axes) == 2
    want_mm = np.linalg.norm(np.full(3, 0.05)) * 1000
    for ax in axes:
        spans = [np.diff(lim)[0] for lim in (ax.get_xlim(), ax.get_ylim(), ax.get_zlim())]
        assert np.allclose(spans, spans[0]), spans               # equal axes
        assert spans[0] < 2.0, "axes fit the poses, not a fixed 2 m box"
        assert f"MPJPE {want_mm:.1f} mm" in ax.get_title()
        colors = {tuple(np.round(matplotlib_rgba(line.get_color()), 3)) for line in ax.get_lines()}
        assert {tuple(np.round(matplotlib_rgba(c), 3)) for c in ("tab:blue", "tab:red")} <= colors
    plt.close(captured["fig"])


def matplotlib_rgba(c):
    from matplotlib.colors import to_rgba

    return to_rgba(c)


def test_tensorboard_log_holds_the_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training import plots

    writer = plots.tensorboard_writer(tmp_path)
    for rec in _history(2):
        plots.tensorboard_epoch(writer, {**rec, "time": {"train": 1.5}})
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    val = [(e.step, round(e.value, 3)) for e in acc.Scalars("mm/val_mpjpe")]
    assert val == [(0, 95.0), (1, 94.0)]
    assert [round(e.value, 3) for e in acc.Scalars("shapley/rgb")] == [0.5, 0.5]
    assert {"loss/loss_task", "loss/loss_balance", "seconds/train"} <= set(acc.Tags()["scalars"])
