"""``training``: fit, evaluate and export the fused pose model (needs the ``train`` extra)."""

from __future__ import annotations

from sensors.cli_util import run_subcommands

COMMANDS = {
    "fit": ("training.fit", "train a model (AWC or a baseline) on MM-Fi or a generated dataset"),
    "evaluate": ("training.evaluate", "MPJPE / PA-MPJPE of a checkpoint, per action and overall"),
    "export": ("training.export", "export a checkpoint to a self-describing ONNX file"),
    "study": ("training.study", "AWC vs plain training and the paper's baselines over seeds, P1 and P2, sweeps; report"),
    "config": ("training.config", "show every config key with its type, default and resolved value"),
    "bench-export": ("training.bench_export", "per-frame latency: onnxruntime vs torch, coalitions"),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("training", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
