"""``sensors``: generate, inspect and replay MM-Fi-format datasets."""

from __future__ import annotations

from sensors.core.cli_util import run_subcommands

COMMANDS = {
    "simulate": ("sensors.simulate.cli", "write a synthetic dataset in MM-Fi's exact layout and formats"),
    "inspect": ("sensors.inspect", "read an MM-Fi-format dataset back and print a summary"),
    "realism": ("sensors.simulate.realism", "print the realism figures of a generated dataset"),
    "replay": ("sensors.replay", "replay a dataset as four timed sensor streams over ZeroMQ"),
    "fuzz": ("sensors.fuzz", "send random, mutated and boundary-value messages to a live runtime, check the accounting"),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("sensors", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
