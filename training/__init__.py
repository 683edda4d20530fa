"""awc-pose training: model, AWC balancing, baselines, trainer, evaluation, ONNX export (needs torch)."""

try:
    import torch
except ModuleNotFoundError:   # `training --help` and `training config show` work without the train extra
    torch = None
else:
    # Flush subnormal floats to zero (and read them as zero) in every process that trains or
    # evaluates on a CPU. As a run converges, weights, gradients and Adam's moments shrink into the
    # subnormal range (< 1.2e-38), which x86 CPUs compute on in microcode, many times slower:
    # late epochs ran 4.7x slower than early ones (docs/training.md, "Training speed"). Nothing a
    # float32 pose model computes depends on values that small. Set here, once, so the trainer,
    # evaluation, probes, export and every torchrun rank all get it; tests/test_train_speed.py
    # guards it. (onnxruntime turns it off in a thread that opens a session; fit never opens one.)
    torch.set_flush_denormal(True)
