"""Per-modality fault injection for replayed sensor streams.

A fault is written ``modality:kind@start_s[+duration_s][=param]``, times in seconds of replayed
capture time from the first frame of the replay, e.g.

    lidar:stop@5          LiDAR sends nothing from 5 s on
    mmwave:freeze@3+4     radar repeats its last frame (new timestamps) from 3 s to 7 s
    wifi:nan@2+1          CSI values become NaN for 1 s (param = fraction of values, default 1)
    rgb:noise@4+2         heavy Gaussian noise on the keypoints for 2 s (param = sigma)
    lidar:skew@2=0.3      LiDAR capture timestamps shifted by +0.3 s from 2 s on (param = seconds)

Kinds: ``stop``, ``freeze``, ``noise`` (sigma in the modality's units: pixels, metres — applied
to x, y, z only for mmWave — or dB/rad for CSI), ``nan`` (fraction of values set to NaN; a keypoint
or point cloud with NaN is dropped by the receiver as ``non_finite``, CSI keeps it), ``skew``.
Pure numpy; the random generator is passed in, so an injection is reproducible from its seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from sensors.core import schema

FAULT_KINDS: tuple[str, ...] = ("stop", "freeze", "noise", "nan", "skew")
DEFAULT_PARAM: dict[str, dict[str, float]] = {
    "noise": {m: spec.fault_noise for m, spec in schema.MODALITY_SPECS.items()},
    "nan": {m: 1.0 for m in schema.MODALITIES},
    "skew": {m: 0.3 for m in schema.MODALITIES},
}
_NUM = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_SPEC = re.compile(rf"^(?P<mod>[a-z]+):(?P<kind>[a-z]+)@(?P<start>{_NUM})(?:\+(?P<dur>{_NUM}))?"
                   rf"(?:=(?P<param>-?(?:{_NUM})))?$")


@dataclass(frozen=True)
class Fault:
    modality: str
    kind: str
    start_s: float
    duration_s: float | None = None  # None = until the end of the replay
    param: float | None = None       # None = the kind's default for the modality

    def __post_init__(self):
        if self.modality not in schema.MODALITIES:
            raise ValueError(f"fault modality must be one of {schema.MODALITIES}, got {self.modality!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"fault start must be >= 0 s, got {self.start_s}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"fault duration must be > 0 s, got {self.duration_s}")
        if self.kind == "nan" and self.param is not None and not 0 < self.param <= 1:
            raise ValueError(f"nan fault param is the fraction of values in (0, 1], got {self.param}")
        if self.kind in ("stop", "freeze") and self.param is not None:
            raise ValueError(f"a {self.kind} fault takes no =param, got {self.param}")

    @property
    def label(self) -> str:
        return f"{self.modality}:{self.kind}"

    @property
    def value(self) -> float:
        return DEFAULT_PARAM[self.kind][self.modality] if self.param is None else self.param

    def active(self, t_s: float) -> bool:
        end = math.inf if self.duration_s is None else self.start_s + self.duration_s
        return self.start_s <= t_s < end


def parse_fault(spec: str) -> Fault:
    """``"mmwave:freeze@3+4"`` -> Fault. A ValueError shows the expected form."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"bad fault spec {spec!r}: expected modality:kind@start_s[+duration_s][=param], "
                         f"e.g. lidar:stop@5, mmwave:freeze@3+4, lidar:skew@2=0.3 (kinds: {', '.join(FAULT_KINDS)})")
    try:
        return Fault(m["mod"], m["kind"], float(m["start"]), float(m["dur"]) if m["dur"] else None,
                     float(m["param"]) if m["param"] else None)
    except ValueError as err:
        raise ValueError(f"bad fault spec {spec!r}: {err}") from err


@dataclass
class Injected:
    arrays: dict[str, np.ndarray] | None  # None = send nothing (stop)
    t_shift_ns: int                       # add to the capture timestamp (skew)
    labels: tuple[str, ...]               # "modality:kind" of every fault that acted


class FaultInjector:
    """Applies the faults of one replay, message by message, keeping what ``freeze`` repeats."""

    def __init__(self, faults: list[Fault] | tuple[Fault, ...], rng: np.random.Generator):
        self.faults = tuple(faults)
        self.rng = rng
        self._last: dict[str, dict[str, np.ndarray]] = {}  # last unfrozen data per modality

    def apply(self, modality: str, t_s: float, arrays: dict[str, np.ndarray]) -> Injected:
        """arrays of one message of ``modality`` captured ``t_s`` seconds into the replay."""
        active = [f for f in self.faults if f.modality == modality and f.active(t_s)]
        if any(f.kind == "stop" for f in active):
            return Injected(None, 0, tuple(f.label for f in active if f.kind == "stop"))
        out, shift = dict(arrays), 0
        frozen = any(f.kind == "freeze" for f in active)
        if frozen and modality in self._last:
            out = dict(self._last[modality])
        elif not frozen:
            self._last[modality] = dict(arrays)
        for f in active:
            if f.kind == "noise":
                out = {k: self._noise(modality, k, v, f.value) for k, v in out.items()}
            elif f.kind == "nan":
                out = {k: self._nan(v, f.value) for k, v in out.items()}
            elif f.kind == "skew":
                shift += int(round(f.value * 1e9))
        return Injected(out, shift, tuple(f.label for f in active))

    def _noise(self, modality: str, name: str, values: np.ndarray, sigma: float) -> np.ndarray:
        out = np.array(values, dtype=np.float64, copy=True)
        # point clouds: on the positions (x, y, z) only, not on the radar's SNR and velocity
        cols = slice(0, 3) if schema.MODALITY_SPECS[modality].kind == schema.POINTS else slice(None)
        if out.size:
            out[..., cols] += self.rng.normal(0.0, sigma, out[..., cols].shape)
        return out

    def _nan(self, values: np.ndarray, fraction: float) -> np.ndarray:
        out = np.array(values, dtype=np.float64, copy=True)
        if out.size:
            out[self.rng.random(out.shape) < fraction] = np.nan
        return out
