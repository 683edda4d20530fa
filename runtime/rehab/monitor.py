"""Rehabilitation monitoring of one station, tick by tick: joint angles, repetitions of the current
exercise with their range of motion, and how much to trust each repetition.

    monitor = RehabMonitor(RehabConfig(exercise="A12"), rate_hz=10)
    out = monitor.update(tick, tick_ns, pose, presence, degraded, shares)   # every tick
    out.angles, out.count, out.last_rom_deg, out.completed                  # see RehabTick

The current exercise comes from the config (``rehab.exercise``), the command line (``runtime
serve --exercise A12``) or a client: any input message whose wire header carries ``exercise``
(and optionally ``session``) switches to it at the first tick at or after that message's capture
time. A switch ends the current segment (its repetition still falling is completed there) and
starts a new one. An empty or unknown code is the generic mode: every angle is watched, and the
one that moved through the most range in counted repetitions is reported.

Implausible angles (``runtime.rehab.angles.PlausibilityGate``): each raw angle is unwrapped against its
last plausible sample and dropped when outside the joint's physiological range, before the
smoothing, so the smoothed angle holds instead of following a wild pose across the planar cut.
A repetition records the fraction of its ticks whose counted angle was dropped
(``implausible_fraction``) and is low-confidence when that exceeds ``low_confidence_fraction``;
a range over the physiological maximum is not counted (``Segment.rejected``).

Trust (``runtime.rehab.trust``): every tick the pose also goes through the plausibility checks
(``runtime.rehab.plausibility``: bone lengths against the session's own median, angle limits,
jitter), and each repetition is judged on its ticks; with the actions the model was trained on
(``trained_actions``, from its contract), an exercise outside them makes the segment and every
repetition of it untrusted (``exercise_trained`` false, flag ``untrained_exercise``).

Pure (no I/O); ``runtime.pipeline`` calls it from ``step`` and puts the result on ``TickResult``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from runtime.rehab import angles as ang
from runtime.rehab.exercises import EXERCISES, GENERIC_MIN_ROM_DEG, UNKNOWN, Exercise, get_exercise
from runtime.rehab.plausibility import PlausibilityConfig, PoseChecker
from runtime.rehab.repetitions import CounterConfig, Repetition, RepetitionCounter
from runtime.rehab.trust import TrustConfig, TrustTracker, with_flag
from sensors.core import schema

MAX_SEGMENTS = 200          # segments kept in memory (the live runtime needs only the current one)


@dataclass(frozen=True)
class RehabConfig:
    """``exercise``: MM-Fi code of the current exercise (A01 ...), "" = unknown until a client says."""

    enabled: bool = True
    exercise: str = ""
    cutoff_hz: float = 3.0              # causal Butterworth low-pass of the angles
    filter_order: int = 2
    key_modalities: tuple[str, ...] = schema.REHAB_KEY_MODALITIES
    low_confidence_fraction: float = 0.5
    implausible_fraction: float = 0.25  # a repetition with more of its ticks failing a pose check is low-confidence
    bone_tolerance: float = 0.3         # pose check: a limb bone this fraction off its session median
    jitter_m: float = 0.08              # pose check: median joint second difference (m a tick)
    history_s: float = 300.0            # angle and trust history kept for the repetitions' figures

    def __post_init__(self):
        object.__setattr__(self, "key_modalities", tuple(self.key_modalities))
        code = str(self.exercise or "").strip().upper()
        if code and code != UNKNOWN.upper() and code not in EXERCISES:
            raise ValueError(f"rehab.exercise: expected one of {', '.join(EXERCISES)} (protocol P2) or empty for "
                             f"an unknown exercise, got {self.exercise!r}")
        object.__setattr__(self, "exercise", "" if code == UNKNOWN.upper() else code)
        if self.history_s <= 0:
            raise ValueError(f"rehab.history_s must be > 0, got {self.history_s}")
        ang.SmoothingConfig(self.cutoff_hz, self.filter_order)   # validates
        TrustConfig(self.key_modalities, self.low_confidence_fraction, self.implausible_fraction)
        PlausibilityConfig(self.bone_tolerance, self.jitter_m)


@dataclass
class Segment:
    """One stretch of ticks with the same exercise and session."""

    exercise: Exercise | None
    session: str | None
    start_tick: int
    start_ns: int
    end_tick: int = -1
    reps: list[dict] = field(default_factory=list)    # completed repetitions (Repetition.to_dict + extras)
    rejected: int = 0                                 # ranges over the physiological maximum, not counted
    requested: str = ""                               # the code as asked (a P1 action, too), "" = none
    trained: bool | None = None                       # the model learnt this exercise; None = unknown

    @property
    def code(self) -> str:
        return UNKNOWN if self.exercise is None else self.exercise.code

    @property
    def counted_reps(self) -> list[dict]:
        """The repetitions the segment's count stands for: every one of a known exercise; of an
        unknown exercise those of the one channel that moved most (summed ROM), as the live count."""
        if self.exercise is not None or not self.reps:
            return list(self.reps)
        moved: dict[str, float] = {}
        for r in self.reps:
            moved[r["channel"]] = moved.get(r["channel"], 0.0) + r["rom_deg"]
        top = max(moved, key=moved.get)
        return [r for r in self.reps if r["channel"] == top]


@dataclass
class RehabTick:
    """What the monitor says at one tick."""

    angles: np.ndarray | None          # [N_CHANNELS] smoothed degrees (angles.CHANNELS), None before a pose
    exercise: str                      # code as asked (a P2 code, another MM-Fi code) or "unknown"
    session: str | None
    principal: str | None              # channel key counted (generic mode: the one moving most)
    count: int                         # repetitions counted in the current segment
    last_rom_deg: float | None
    counted: list[Repetition] = field(default_factory=list)    # counted at this tick
    completed: list[dict] = field(default_factory=list)        # completed at this tick (with trust)
    implausible: tuple[str, ...] = ()  # channel keys whose raw angle was dropped at this tick (held)
    exercise_trained: bool | None = None   # the model learnt the current exercise; None = it does not say
    pose_checks: tuple[str, ...] = ()  # plausibility checks the pose failed at this tick

    def header(self) -> dict:
        """The ``rehab`` map of the pose message header (docs/wire.md)."""
        last = self.completed[-1] if self.completed else None
        return {
            "exercise": self.exercise, "session": self.session, "principal": self.principal,
            "exercise_trained": self.exercise_trained, "pose_checks": list(self.pose_checks),
            "reps": int(self.count),
            "last_rom_deg": None if self.last_rom_deg is None else round(float(self.last_rom_deg), 2),
            "angles_deg": None if self.angles is None else
            {k: (None if not np.isfinite(v) else round(float(v), 2)) for k, v in zip(ang.CHANNEL_KEYS, self.angles)},
            "completed": None if last is None else {k: last[k] for k in COMPLETED_KEYS if k in last},
        }


COMPLETED_KEYS = ("index", "side", "start_s", "end_s", "rom_deg", "peak_deg", "duration_s", "fused_fraction",
                  "degraded", "implausible_fraction", "implausible_pose_fraction", "trust_flags", "low_confidence")


class RehabMonitor:
    """``trained_actions``: the MM-Fi actions the served model learnt from (its contract's
    ``trained_actions``); None when unknown (nothing is then judged on it)."""

    def __init__(self, config: RehabConfig = RehabConfig(), rate_hz: float = schema.FRAME_RATE_HZ,
                 trained_actions: Iterable[str] | None = None):
        self.config = config
        self.rate_hz = rate_hz
        self.trained_actions = None if trained_actions is None else frozenset(trained_actions)
        self.filter = ang.AngleFilter(ang.N_CHANNELS, ang.SmoothingConfig(config.cutoff_hz, config.filter_order,
                                                                          rate_hz))
        self.trust = TrustTracker(TrustConfig(config.key_modalities, config.low_confidence_fraction,
                                              config.implausible_fraction, max(10, int(config.history_s * rate_hz))))
        self.checker = PoseChecker(PlausibilityConfig(config.bone_tolerance, config.jitter_m))
        # continuity restarts after 1 s without a plausible sample; at most 900 deg/s is continuous
        self.gate = ang.PlausibilityGate(max(1, round(rate_hz)), min(180.0, 900.0 / rate_hz))
        self._history: deque[tuple[int, np.ndarray]] = deque(maxlen=max(10, int(config.history_s * rate_hz)))
        self._dropped: deque[tuple[int, np.ndarray]] = deque(maxlen=self._history.maxlen)   # implausible masks
        self._requests: deque[tuple[int, str, str | None]] = deque(maxlen=64)
        self.segments: deque[Segment] = deque(maxlen=MAX_SEGMENTS)
        self._wanted: tuple[str, str | None] = (config.exercise, None)
        self._applied_ns = -(2 ** 63)
        self._counters: dict[str, RepetitionCounter] = {}
        self.last_rom: float | None = None

    # ------------------------------------------------------------------ exercise
    def request(self, t_ns: int, exercise: str | None, session: str | None = None) -> None:
        """A client said: from capture time ``t_ns`` on, the exercise is ``exercise`` (session id
        optional). Repeats of the value in effect at ``t_ns`` and fields older than the last tick
        (a late message) change nothing."""
        code = str(exercise or "").strip().upper()[:16]
        code = "" if code == UNKNOWN.upper() else code
        item = (code, None if session is None else str(session)[:128])
        t_ns = int(t_ns)
        if t_ns < self._applied_ns:
            return
        earlier = [r for r in self._requests if r[0] <= t_ns]
        if (earlier[-1][1:] if earlier else self._wanted) == item:
            return
        self._requests.append((t_ns, *item))
        self._requests = deque(sorted(self._requests), maxlen=self._requests.maxlen)

    def _apply_requests(self, tick_ns: int) -> None:
        self._applied_ns = max(self._applied_ns, tick_ns)
        while self._requests and self._requests[0][0] <= tick_ns:
            _, code, session = self._requests.popleft()
            self._wanted = (code, session)

    @property
    def current(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    def _start_segment(self, tick: int, tick_ns: int) -> Segment:
        code, session = self._wanted
        ex = get_exercise(code)
        self._finish_segment()
        if self.current is not None and self.current.session != session:
            self.checker.reset()            # another session: another person's bone lengths
        seg = Segment(ex, session, tick, tick_ns, requested=code,
                      trained=None if not code or self.trained_actions is None else code in self.trained_actions)
        self.segments.append(seg)
        self.last_rom = None
        if ex is None:
            self._counters = {k: RepetitionCounter(CounterConfig(min_rom_deg=GENERIC_MIN_ROM_DEG,
                                                                 max_rom_deg=ang.max_rom_deg(a)), side)
                              for k, (a, side) in zip(ang.CHANNEL_KEYS, ang.CHANNELS)}
        else:
            cfg = CounterConfig(min_rom_deg=ex.min_rom_deg, max_rom_deg=ang.max_rom_deg(ex.angle))
            self._counters = {side: RepetitionCounter(cfg, side) for side in
                              (("left", "right") if ex.mode == "alternating" else
                               ("both",) if ex.mode == "both" else ex.sides)}
        return seg

    def _finish_segment(self) -> list[dict]:
        seg = self.current
        done = []
        if seg is not None:
            for key, counter in self._counters.items():
                rep = counter.finish()
                if rep is not None:
                    done.append(self._complete(seg, key, rep))
            seg.rejected = sum(c.rejected for c in self._counters.values())
        return done

    def finish(self) -> list[dict]:
        """End of the stream: complete what is still falling (offline reports call this)."""
        return self._finish_segment()

    # ------------------------------------------------------------------ one tick
    def update(self, tick: int, tick_ns: int, pose: np.ndarray | None, presence, degraded,
               shares=None) -> RehabTick:
        self._apply_requests(tick_ns)
        seg = self.current
        completed: list[dict] = []
        if seg is None or (seg.requested, seg.session) != self._wanted:
            completed += self._finish_segment()
            seg = self._start_segment(tick, tick_ns)
        seg.end_tick = tick
        raw = dropped = None
        if pose is not None:
            raw, dropped = self.gate.update(ang.joint_angles(np.asarray(pose, np.float64)))
            self._dropped.append((tick, dropped))
        checks = self.checker.update(pose, dropped is not None and bool(dropped.any()))
        self.trust.add(tick, presence, degraded, shares, checks)
        smoothed = self.filter.update(raw)
        counted: list[Repetition] = []
        if smoothed is not None:
            self._history.append((tick, smoothed))
            t_s = (tick_ns - seg.start_ns) / 1e9
            for key, counter in self._counters.items():
                c, done = counter.update(tick, t_s, self._signal(seg.exercise, key, smoothed))
                if c is not None:
                    counted.append(c)
                    if seg.exercise is not None or key == self._principal_key(seg):
                        self.last_rom = c.rom_deg
                if done is not None:
                    completed.append(self._complete(seg, key, done))
        principal = self._principal_key(seg)
        count = (sum(c.count for c in self._counters.values()) if seg.exercise is not None
                 else (self._counters[principal].count if principal else 0))
        seg.rejected = sum(c.rejected for c in self._counters.values())
        implausible = () if dropped is None else tuple(k for k, d in zip(ang.CHANNEL_KEYS, dropped) if d)
        shown = seg.code if seg.exercise is not None else (seg.requested or UNKNOWN)   # a P1 code stays named
        return RehabTick(smoothed, shown, seg.session, principal, count, self.last_rom, counted, completed,
                         implausible, seg.trained, checks)

    @staticmethod
    def _signal(ex: Exercise | None, key: str, a: np.ndarray) -> float:
        if ex is None:
            return float(a[ang.CHANNEL_KEYS.index(key)])
        if key == "both":
            pair = [a[ang.CHANNEL_INDEX[(ex.angle, s)]] for s in ("left", "right")]
            return float(np.nanmean(pair)) if np.isfinite(pair).any() else float("nan")
        return float(a[ang.CHANNEL_INDEX[(ex.angle, key)]])

    def _principal_key(self, seg: Segment) -> str | None:
        if seg.exercise is not None:
            ex = seg.exercise
            return ex.angle if ex.mode in ("both", "alternating", "none") else ang.channel_key(ex.angle, ex.mode)
        moved = {k: sum(c.roms) for k, c in self._counters.items() if c.count}
        return max(moved, key=moved.get) if moved else None

    def _complete(self, seg: Segment, key: str, rep: Repetition) -> dict:
        """A repetition with its end: per-side and secondary ranges, trust; stored in the segment."""
        start, end = rep.start.tick, rep.end.tick
        rows = [a for t, a in self._history if start <= t <= end]
        window = np.stack(rows) if rows else None
        d = rep.to_dict()
        d["channel"] = key if seg.exercise is None else (
            seg.exercise.angle if key == "both" else ang.channel_key(seg.exercise.angle, key))
        d["start_ns"] = seg.start_ns + int(rep.start.t_s * 1e9)
        d["end_ns"] = seg.start_ns + int(rep.end.t_s * 1e9)
        if window is not None:
            ranges = np.nanmax(window, axis=0) - np.nanmin(window, axis=0)
            names = ([seg.exercise.angle, *seg.exercise.secondary] if seg.exercise is not None else [])
            d["rom_by_channel_deg"] = {k: round(float(r), 2) for k, (a, _), r in
                                       zip(ang.CHANNEL_KEYS, ang.CHANNELS, ranges) if a in names and np.isfinite(r)}
            if seg.exercise is not None and seg.exercise.angle in ang.LIMB_ANGLES:
                d["side_rom_deg"] = {s: d["rom_by_channel_deg"].get(ang.channel_key(seg.exercise.angle, s))
                                     for s in ("left", "right")}
        d.update(self.trust.over(start, end))
        d["implausible_fraction"] = self._implausible_fraction(seg, key, start, end)
        if d["implausible_fraction"] > self.config.low_confidence_fraction:
            with_flag(d, "implausible_angle")
        d["exercise_trained"] = seg.trained
        if seg.trained is False:
            with_flag(d, "untrained_exercise")
        seg.reps.append(d)
        return d

    def _implausible_fraction(self, seg: Segment, key: str, start: int, end: int) -> float:
        """Fraction of the ticks start..end whose counted angle (either side for ``both``) was dropped."""
        if seg.exercise is None:
            idx = [ang.CHANNEL_KEYS.index(key)]
        elif key == "both":
            idx = [ang.CHANNEL_INDEX[(seg.exercise.angle, s)] for s in ("left", "right")]
        else:
            idx = [ang.CHANNEL_INDEX[(seg.exercise.angle, key)]]
        rows = [bool(m[idx].any()) for t, m in self._dropped if start <= t <= end]
        return round(float(np.mean(rows)), 3) if rows else 0.0


def segment_summary(seg: Segment) -> dict:
    """Per-segment figures: count, range of motion (mean/min/max), tempo, symmetry, trust."""
    reps = seg.counted_reps
    roms = np.array([r["rom_deg"] for r in reps]) if reps else np.zeros(0)
    durs = np.array([r["duration_s"] for r in reps if r["duration_s"] is not None])
    out = {"exercise": seg.code, "name": "unknown exercise" if seg.exercise is None else seg.exercise.name,
           "requested": seg.requested or None, "exercise_trained": seg.trained,
           "session": seg.session, "count": len(reps), "ticks": seg.end_tick - seg.start_tick + 1,
           "principal": reps[0]["channel"] if reps else None,
           "rom_mean_deg": _r(roms.mean()) if roms.size else None, "rom_min_deg": _r(roms.min()) if roms.size else None,
           "rom_max_deg": _r(roms.max()) if roms.size else None,
           "duration_mean_s": _r(durs.mean()) if durs.size else None,
           "reps_per_min": None, "symmetry": None,
           "low_confidence": sum(bool(r.get("low_confidence")) for r in reps),
           "rejected": seg.rejected,
           "fused_fraction": _r(np.mean([r["fused_fraction"] for r in reps if r.get("fused_fraction") is not None]))
           if reps else None}
    if len(reps) >= 2:
        span = (max(r["end_s"] or r["peak_s"] for r in reps) - min(r["start_s"] for r in reps))
        out["reps_per_min"] = _r(60.0 * len(reps) / span) if span > 0 else None
    out["symmetry"] = symmetry(seg)
    return out


def symmetry(seg: Segment) -> dict | None:
    """Left/right symmetry within a segment: ``both`` from each repetition's per-side range,
    ``alternating`` from the left and right repetitions. 100 = equal ranges."""
    return reps_symmetry(seg.exercise, seg.reps)


def reps_symmetry(ex: Exercise | None, reps: list[dict]) -> dict | None:
    """``symmetry`` of the repetitions ``reps`` of exercise ``ex`` (of one segment or several)."""
    if ex is None or not reps or ex.mode not in ("both", "alternating"):
        return None
    if ex.mode == "both":
        left = [r["side_rom_deg"]["left"] for r in reps if (r.get("side_rom_deg") or {}).get("left") is not None]
        right = [r["side_rom_deg"]["right"] for r in reps if (r.get("side_rom_deg") or {}).get("right") is not None]
    else:
        left = [r["rom_deg"] for r in reps if r["side"] == "left"]
        right = [r["rom_deg"] for r in reps if r["side"] == "right"]
    return symmetry_of(left, right)


def symmetry_of(left: list[float], right: list[float]) -> dict | None:
    if not left or not right:
        return None
    lm, rm = float(np.mean(left)), float(np.mean(right))
    big = max(abs(lm), abs(rm))
    return {"left_rom_deg": _r(lm), "right_rom_deg": _r(rm), "left_reps": len(left), "right_reps": len(right),
            "symmetry_pct": _r(100.0 * min(abs(lm), abs(rm)) / big) if big > 0 else None}


def _r(x, nd: int = 2):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)
