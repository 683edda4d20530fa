"""Online repetition detection with hysteresis on one angle signal, tick by tick.

A repetition is a movement away from rest and back: a start valley, a peak, an end valley.
``RepetitionCounter.update(tick, t_s, value)`` follows a small state machine:

* ``idle``: the running minimum over the last ``window_s`` is the candidate start; the signal
  rising ``enter_frac * min_rom_deg`` above it starts a repetition (``rising``);
* ``rising``: the peak is tracked; when the signal has come back past the middle of the range
  (below ``peak - return_frac * (peak - start)``), the repetition is **counted** if its range
  reaches the minimum (``min_rom_deg``, raised to ``adapt_frac`` x the median range of the last
  counted repetitions, so small wobbles between big movements do not count) and does not exceed
  the physiological maximum (``max_rom_deg``: such a "repetition" is a jump of the signal, counted
  in ``rejected``); otherwise it is discarded and the counter goes back to ``idle``;
* ``falling``: the end valley is tracked; it is confirmed when the signal rises again by the
  entry margin (the next repetition starts there, with no gap) or stays above it for
  ``settle_s`` (a pause). The repetition is then complete, with its duration.

Two thresholds (entry above the valley, return past the middle) are the hysteresis: noise smaller
than the entry margin neither starts nor ends a repetition, and a pause at the top or at rest
does not split or merge repetitions. The count rises when a repetition is counted, before its end
valley is known (the live count lags the movement by about half a repetition).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CounterConfig:
    min_rom_deg: float = 20.0
    enter_frac: float = 0.35     # entry margin above the start valley, x min_rom_deg
    return_frac: float = 0.5     # counted once back past this fraction of the range
    adapt_frac: float = 0.4      # the minimum range rises to this x the median of recent ranges
    adapt_last: int = 5
    window_s: float = 5.0        # idle: the start valley is the minimum over this window
    settle_s: float = 1.0        # falling: a valley held this long ends the repetition
    max_rom_deg: float = float("inf")   # larger ranges are not physiological: rejected, not counted

    def __post_init__(self):
        if self.min_rom_deg <= 0 or not 0 < self.enter_frac < 1 or not 0 < self.return_frac < 1:
            raise ValueError(f"repetition counter: need min_rom_deg > 0, enter_frac and return_frac in (0, 1); "
                             f"got {self.min_rom_deg}, {self.enter_frac}, {self.return_frac}")
        if not self.max_rom_deg > self.min_rom_deg:
            raise ValueError(f"repetition counter: max_rom_deg must exceed min_rom_deg, got {self.max_rom_deg} "
                             f"<= {self.min_rom_deg}")
        if not 0 <= self.adapt_frac < 1 or self.window_s <= 0 or self.settle_s <= 0:
            raise ValueError(f"repetition counter: need adapt_frac in [0, 1), window_s and settle_s > 0; got "
                             f"{self.adapt_frac}, {self.window_s}, {self.settle_s}")


@dataclass
class Point:
    tick: int
    t_s: float
    value: float


@dataclass
class Repetition:
    """One repetition of a signal; ticks and times of its start valley, peak and end valley."""

    index: int                     # 1, 2, ... within its counter
    side: str                      # left | right | both | none
    start: Point
    peak: Point
    end: Point | None = None       # None until the end valley is confirmed
    extra: dict = field(default_factory=dict)   # filled by the monitor (per-side ROM, trust ...)

    @property
    def rom_deg(self) -> float:
        """Range of motion: peak minus the start valley (degrees)."""
        return self.peak.value - self.start.value

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end.t_s - self.start.t_s

    def to_dict(self) -> dict:
        return {"index": self.index, "side": self.side, "start_tick": self.start.tick, "peak_tick": self.peak.tick,
                "end_tick": None if self.end is None else self.end.tick,
                "start_s": round(self.start.t_s, 3), "peak_s": round(self.peak.t_s, 3),
                "end_s": None if self.end is None else round(self.end.t_s, 3),
                "start_deg": round(self.start.value, 2), "peak_deg": round(self.peak.value, 2),
                "rom_deg": round(self.rom_deg, 2),
                "duration_s": None if self.duration_s is None else round(self.duration_s, 3), **self.extra}


class RepetitionCounter:
    """Counts repetitions of one signal online (see the module doc)."""

    def __init__(self, config: CounterConfig = CounterConfig(), side: str = "none"):
        self.config = config
        self.side = side
        self.state = "idle"
        self._window: deque[Point] = deque()
        self._start: Point | None = None
        self._peak: Point | None = None
        self._valley: Point | None = None
        self.pending: Repetition | None = None     # counted, end valley not yet confirmed
        self.count = 0
        self.rejected = 0                          # ranges over max_rom_deg: not physiological
        self.roms: deque[float] = deque(maxlen=config.adapt_last)

    @property
    def min_rom(self) -> float:
        c = self.config
        adaptive = c.adapt_frac * float(np.median(self.roms)) if self.roms else 0.0
        return max(c.min_rom_deg, adaptive)

    @property
    def enter(self) -> float:
        return self.config.enter_frac * self.config.min_rom_deg

    def update(self, tick: int, t_s: float, value: float) -> tuple[Repetition | None, Repetition | None]:
        """Feed one sample. Returns (counted, completed): the repetition counted at this tick (its
        end not yet known) and the one completed at this tick (end valley confirmed), or None."""
        if not np.isfinite(value):
            return None, None
        p = Point(int(tick), float(t_s), float(value))
        if self.state == "idle":
            return self._idle(p), None
        if self.state == "rising":
            return self._rising(p), None
        return None, self._falling(p)

    def _idle(self, p: Point) -> None:
        w = self._window
        w.append(p)
        while w and p.t_s - w[0].t_s > self.config.window_s:
            w.popleft()
        low = min(w, key=lambda q: q.value)
        if p.value - low.value >= self.enter:
            self.state, self._start, self._peak = "rising", low, p
        return None

    def _rising(self, p: Point) -> Repetition | None:
        if p.value > self._peak.value:
            self._peak = p
        rom = self._peak.value - self._start.value
        if p.value > self._peak.value - self.config.return_frac * rom:
            return None
        if rom < self.min_rom:                       # too small: not a repetition
            self._to_idle(p, self._start)
            return None
        if rom > self.config.max_rom_deg:            # no joint moves that far: a jump of the signal
            self.rejected += 1
            self._to_idle(p, p)
            return None
        self.count += 1
        self.roms.append(rom)
        self.pending = Repetition(self.count, self.side, self._start, self._peak)
        self.state, self._valley = "falling", p
        return self.pending

    def _falling(self, p: Point) -> Repetition | None:
        if p.value < self._valley.value:
            self._valley = p
        rises = p.value - self._valley.value >= self.enter
        if not rises and p.t_s - self._valley.t_s < self.config.settle_s:
            return None
        done = self._complete()
        if rises:
            self.state, self._start, self._peak = "rising", done.end, p
        else:
            self._to_idle(p, done.end)
        return done

    def _complete(self) -> Repetition:
        done, self.pending = self.pending, None
        done.end = self._valley
        return done

    def _to_idle(self, p: Point, seed: Point) -> None:
        """Back to rest; the window restarts from ``seed`` (the last valley) when recent enough."""
        self.state = "idle"
        self._window.clear()
        if p.t_s - seed.t_s <= self.config.window_s:
            self._window.append(seed)
        self._window.append(p)
        self._valley = None

    def finish(self) -> Repetition | None:
        """End of the signal: a counted repetition still falling ends at its lowest point so far."""
        if self.state != "falling" or self.pending is None:
            return None
        done = self._complete()
        self.state = "idle"
        self._window.clear()
        return done
