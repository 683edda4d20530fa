"""``sensors``: generate, inspect and replay MM-Fi-format datasets; stream real sensors to the runtime."""

from __future__ import annotations

from sensors.core.cli_util import run_subcommands

COMMANDS = {
    "simulate": ("sensors.simulate.cli", "write a synthetic dataset in MM-Fi's exact layout and formats"),
    "inspect": ("sensors.inspect", "read an MM-Fi-format dataset back and print a summary"),
    "realism": ("sensors.simulate.realism", "print the realism figures of a generated dataset"),
    "replay": ("sensors.replay", "replay a dataset as four timed sensor streams over ZeroMQ"),
    "fuzz": ("sensors.fuzz", "send random, mutated and boundary-value messages to a live runtime, check the accounting"),
    "camera": ("sensors.adapters.camera", "RGB camera (V4L2, video, images) + ONNX keypoint model -> rgb stream"),
    "ouster": ("sensors.adapters.ouster", "Ouster LiDAR (live or pcap + metadata) -> lidar stream"),
    "iwr6843": ("sensors.adapters.iwr6843", "TI IWR6843 out-of-box demo (UART or dump) -> mmwave stream"),
    "csi": ("sensors.adapters.csi", "Atheros CSI tool (log, growing log, TCP) -> wifi stream"),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("sensors", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
