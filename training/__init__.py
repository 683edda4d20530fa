"""awc-pose training: model, AWC balancing, baselines, trainer, evaluation, ONNX export (needs torch)."""
