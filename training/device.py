"""Which torch device to train, evaluate or export on: ``--device auto|cpu|cuda|cuda:N``.

* ``auto``: the GPU when torch sees one (``cuda:LOCAL_RANK`` under torchrun), else the CPU;
* ``cpu``; ``cuda``: the GPU (``cuda:LOCAL_RANK`` under torchrun, else ``cuda:0``);
* ``cuda:N``: that GPU, one process only (under torchrun every rank takes its LOCAL_RANK's GPU).

``select`` is pure (it is given what torch reports), so the rules are tested without a GPU; a
request the machine cannot meet is refused with what was asked, what is there and how to fix it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

CHOICES = "auto | cpu | cuda | cuda:N"


class DeviceError(ValueError):
    """A device spec that is malformed or that this machine cannot satisfy."""


@dataclass(frozen=True)
class Available:
    """What torch reports about CUDA on this machine."""

    cuda: bool
    count: int
    torch_version: str = ""
    cuda_build: str | None = None   # torch.version.cuda: None for a CPU-only build of torch
    gpu_name: str | None = None     # the chosen GPU's name, once chosen

    @classmethod
    def probe(cls) -> Available:
        import torch

        ok = bool(torch.cuda.is_available())
        return cls(ok, torch.cuda.device_count() if ok else 0, torch.__version__, torch.version.cuda)


def parse(spec: str) -> tuple[str, int | None]:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> (kind, index or None). DeviceError otherwise."""
    text = str(spec).strip().lower()
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", text)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise DeviceError(f"--device must be {CHOICES}, got {spec!r}")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def select(spec: str, available: Available, local_rank: int = 0, world: int = 1) -> str:
    """The torch device string for ``spec`` on a machine that reports ``available``."""
    kind, index = parse(spec)
    if kind == "cpu" or (kind == "auto" and not available.cuda):
        return "cpu"
    if not available.cuda:
        build = ("a CPU-only build of torch" if available.cuda_build is None
                 else f"torch built for CUDA {available.cuda_build}, but no usable GPU or driver")
        raise DeviceError(f"--device {spec} asks for a GPU, but torch {available.torch_version} sees none "
                          f"({build}). Install the CUDA build of torch (README, Installing) or use "
                          f"--device cpu / auto")
    if index is not None and world > 1:
        raise DeviceError(f"--device {spec} names one GPU, but torchrun runs {world} processes; use "
                          f"--device cuda (each rank takes the GPU of its LOCAL_RANK) or CUDA_VISIBLE_DEVICES")
    chosen = local_rank if index is None else index
    if chosen >= available.count:
        raise DeviceError(f"--device {spec}: GPU {chosen} requested, but torch sees {available.count} "
                          f"(cuda:0..cuda:{available.count - 1})")
    return f"cuda:{chosen}"


def backend(device: str) -> str:
    """The process-group backend for ``device``: nccl on GPUs, gloo on the CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def describe(spec: str, device: str, available: Available) -> str:
    """One line saying which device ``spec`` gave and why (what torch reports)."""
    if device == "cpu":
        if parse(spec)[0] == "cpu":
            return f"--device {spec}: using the CPU (asked for)"
        build = ", a CPU-only build," if available.cuda_build is None else ""
        return f"--device {spec}: using the CPU (torch {available.torch_version}{build} sees no GPU)"
    return (f"--device {spec}: using {device} ({available.gpu_name or 'GPU'}; torch "
            f"{available.torch_version} sees {available.count} GPU{'s' if available.count != 1 else ''}, "
            f"CUDA {available.cuda_build})")


def resolve(spec: str, local_rank: int = 0, world: int = 1) -> str:
    """``select`` against what torch reports on this machine; logs what it picked and why."""
    available = Available.probe()
    device = select(spec, available, local_rank, world)
    if device.startswith("cuda"):
        import torch

        available = replace(available, gpu_name=torch.cuda.get_device_name(int(device.split(":")[1])))
    log.info("%s", describe(spec, device, available))
    return device
