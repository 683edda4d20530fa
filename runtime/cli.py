"""``runtime``: serve the fused pose model at a sensing station (torch-free)."""

from __future__ import annotations

from sensors.core.cli_util import run_subcommands

COMMANDS = {
    "serve": ("runtime.serve", "ingest the four sensor streams over ZeroMQ and serve fused poses"),
    "replay": ("runtime.replay", "offline validation: replay a dataset through the real pipeline"),
    "bench": ("runtime.bench", "latency and throughput figures of the pipeline"),
    "config": ("runtime.config", "show every config key with its type, default and resolved value"),
    "info": ("runtime.inference", "check an ONNX model and print its metadata and provider"),
    "report": ("runtime.rehab.report", "rehabilitation session report (HTML) of a pose recording"),
    "recover": ("runtime.recover", "make whole what a killed recorder left (NPZ parts, cut JSONL lines)"),
    "rehab-eval": ("runtime.rehab.evaluate", "accuracy of repetition counts and ranges of motion on a generated dataset"),
    "keys": ("sensors.core.keys", "CurveZMQ keys: init a key directory, add/revoke/list client keys"),
    "view": ("runtime.view.command", "live station viewer: a web page of the pose stream or of a recording"),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("runtime", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
