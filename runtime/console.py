"""Compact live view of the pipeline on the terminal (``runtime serve --console``).

Printed at most once per ``interval_s`` (default 1 s), for example::

    tick 1234  fused    latency   4.2 ms  ticks/s 10.0  dropped 0
                          rgb        lidar       mmwave         wifi
    present                 ●            ●            ●            ○
    share                0.41         0.44         0.15         0.00
    degradation          0.00         0.02         0.10         1.00
    status                 ok           ok           ok DEGR:missing
    pelvis  x +0.05  y +0.21  z 3.21 m   head y -1.32   wrists L( -0.31 -0.22) R( +0.33 -0.19)
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import numpy as np

from sensors.core import schema

_J = schema.JOINT_INDEX


def render(result, ticks_per_s: float = 0.0, dropped: int = 0) -> str:
    """Text block for one ``TickResult``."""
    lat_ms = result.latency_ns / 1e6
    lines = [f"tick {result.tick:>6}  {result.outcome:<8} latency {lat_ms:6.1f} ms  "
             f"ticks/s {ticks_per_s:5.1f}  dropped {dropped}"]
    head = "".join(f"{m:>13}" for m in schema.MODALITIES)
    lines.append(f"{'':12}{head}")
    lines.append(f"{'present':12}" + "".join(f"{'●' if p else '○':>13}" for p in result.presence))
    c = result.contributions
    shares = c.shares if c is not None else np.zeros(schema.N_MODALITIES)
    lines.append(f"{'share':12}" + "".join(f"{s:13.2f}" for s in shares))
    if c is not None and c.shares_gt is not None:
        lines.append(f"{'share (gt)':12}" + "".join(f"{s:13.2f}" for s in c.shares_gt))
    d = result.degradation
    lines.append(f"{'degradation':12}" + "".join(f"{s:13.2f}" for s in d.score))
    status = [("DEGR:" + (h.worst() if h.score >= 0.5 else "model")) if flag else "ok"
              for flag, h in zip(d.degraded, result.health)]
    lines.append(f"{'status':12}" + "".join(f"{s:>13}" for s in status))
    if result.pose is not None:
        p = result.pose
        pel, head_j = p[_J["pelvis"]], p[_J["head"]]
        lw, rw = p[_J["left_wrist"]], p[_J["right_wrist"]]
        lines.append(f"pelvis  x {pel[0]:+.2f}  y {pel[1]:+.2f}  z {pel[2]:.2f} m   head y {head_j[1]:+.2f}   "
                     f"wrists L({lw[0]:+.2f} {lw[1]:+.2f}) R({rw[0]:+.2f} {rw[1]:+.2f})")
    return "\n".join(lines)


class ConsoleView:
    """Pipeline output printing ``render`` at most every ``interval_s`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 1.0, stats=None):
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.stats = stats
        self._last = 0.0
        self._ticks_at_last = 0
        self._count = 0

    def __call__(self, result) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        rate = (self._count - self._ticks_at_last) / (now - self._last) if self._last else 0.0
        self._last, self._ticks_at_last = now, self._count
        dropped = self.stats.dropped if self.stats is not None else 0
        self.stream.write(render(result, rate, dropped) + "\n\n")
        self.stream.flush()
