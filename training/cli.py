"""``training``: fit, evaluate and export the fused pose model (needs the ``train`` extra)."""

from __future__ import annotations

import sys

from sensors.core.cli_util import run_subcommands
from sensors.core.settings import ConfigError

COMMANDS = {
    "fit": ("training.fit", "train a model (AWC or a baseline) on MM-Fi or a generated dataset"),
    "evaluate": ("training.evaluate", "MPJPE / PA-MPJPE of a checkpoint, per action and overall"),
    "export": ("training.export", "export a checkpoint to a self-describing ONNX file"),
    "study": ("training.study", "AWC vs plain training and the paper's baselines over seeds, P1 and P2, sweeps; report"),
    "probe": ("training.probe", "linear probe of each modality's encoder in trained models (under-optimised modalities)"),
    "config": ("training.config", "show every config key with its type, default and resolved value"),
    "bench": ("training.bench_train", "training speed early vs late in a run (from its checkpoint), per phase"),
    "bench-export": ("training.bench_export", "per-frame latency: onnxruntime vs torch, coalitions"),
}


def main(argv: list[str] | None = None) -> int:
    """Usage errors (a config, device, checkpoint or file that cannot be used) are one line on
    stderr and exit code 2, as in ``runtime``; anything else is a bug and keeps its traceback."""
    try:
        return run_subcommands("training", __doc__, COMMANDS, argv)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        return _usage_error(err)
    except ValueError as err:
        # the two other user errors, importable only with torch installed
        from training.checkpoint import CheckpointError
        from training.device import DeviceError

        if isinstance(err, CheckpointError | DeviceError):
            return _usage_error(err)
        raise


def _usage_error(err: Exception) -> int:
    print(f"training: error: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
