"""The report's figures (matplotlib PNGs as data URIs, nothing fetched): one segment's angles over
time with its repetitions shaded (``segment_figure``), and one exercise's trend across sessions
(``trend_figure``). matplotlib is the ``report`` extra, imported only when a figure is drawn.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import numpy as np

from runtime.rehab import angles as ang
from runtime.rehab.monitor import Segment


@dataclass
class Trace:
    """The smoothed angles of one segment, tick by tick, for the figures."""

    segment: Segment
    t_s: list[float] = field(default_factory=list)
    angles: list[np.ndarray] = field(default_factory=list)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("the report draws its figures with matplotlib: pip install '.[report]' "
                           "(or matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


COLOURS = {"left": "#1f77b4", "right": "#d62728", "both": "#2ca02c", "none": "#7f3fbf"}


def segment_figure(trace: Trace) -> str:
    """Principal angle(s) with repetitions shaded, secondary angles below; a PNG data URI."""
    plt = _plt()
    seg = trace.segment
    t = np.asarray(trace.t_s)
    a = np.stack(trace.angles) if trace.angles else np.zeros((0, ang.N_CHANNELS))
    ex = seg.exercise
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top, bottom = axes
    if ex is not None:
        names = [ang.channel_key(ex.angle, s) for s in ex.sides]
        secondary = [k for k, (an, _) in zip(ang.CHANNEL_KEYS, ang.CHANNELS) if an in ex.secondary]
    else:
        principal = seg.counted_reps[0]["channel"] if seg.reps else None
        moved = np.nanmax(a, axis=0) - np.nanmin(a, axis=0) if len(a) else np.zeros(ang.N_CHANNELS)
        order = [ang.CHANNEL_KEYS[i] for i in np.argsort(-np.nan_to_num(moved))]
        names = [principal] if principal else order[:1]
        secondary = [k for k in order if k not in names][:3]
    for k in names:
        side = ang.CHANNELS[ang.CHANNEL_KEYS.index(k)][1]
        top.plot(t, a[:, ang.CHANNEL_KEYS.index(k)], color=COLOURS.get(side, "k"), lw=1.6, label=ang.channel_label(k))
    for r in seg.counted_reps:
        end = r["end_s"] if r["end_s"] is not None else r["peak_s"]
        low = bool(r.get("low_confidence"))
        top.axvspan(r["start_s"], end, color=COLOURS.get(r["side"], "grey"), alpha=0.12,
                    hatch="///" if low else None, ec="#d62728" if low else None, lw=0)
        top.plot([r["peak_s"]], [r["peak_deg"]], "v", color="k", ms=5)
        top.annotate(str(r["index"]), (r["peak_s"], r["peak_deg"]), textcoords="offset points", xytext=(0, 4),
                     ha="center", fontsize=7)
    top.set_ylabel("degrees")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    for k in secondary:
        bottom.plot(t, a[:, ang.CHANNEL_KEYS.index(k)], lw=1.0, label=ang.channel_label(k))
    bottom.set_ylabel("degrees")
    bottom.set_xlabel("seconds since the exercise started")
    if secondary:
        bottom.legend(loc="upper right", fontsize=7, ncol=2)
    bottom.grid(alpha=0.3)
    uri = _png(fig)
    plt.close(fig)
    return uri


def trend_figure(points: list[dict], title: str) -> str:
    """ROM (mean, min-max bar) and repetitions per session of one exercise; a point is filled when
    most of its repetitions are trusted, hollow and red otherwise (``progress.session_point``)."""
    plt = _plt()
    fig, (rom, reps) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    x = np.arange(len(points))
    for i, p in enumerate(points):
        trusted = p["trusted"]
        colour = "#2e7d32" if trusted else "#c62828"
        if p["rom_mean_deg"] is not None:
            low, high = p["rom_min_deg"], p["rom_max_deg"]
            rom.errorbar([i], [p["rom_mean_deg"]], yerr=[[p["rom_mean_deg"] - low], [high - p["rom_mean_deg"]]],
                         fmt="o", ms=7, color=colour, mfc=colour if trusted else "white", capsize=4)
        reps.bar([i], [p["count"]], color=colour, alpha=0.8 if trusted else 0.35, hatch=None if trusted else "///")
    kept = [(i, p["rom_mean_deg"]) for i, p in enumerate(points) if p["trusted"] and p["rom_mean_deg"] is not None]
    if len(kept) > 1:                                     # the trend is read on trusted points only
        rom.plot(*zip(*kept), "-", color="#2e7d32", lw=1, alpha=0.6, zorder=0, label="trend (trusted sessions)")
        rom.legend(loc="best", fontsize=7)
    rom.set_ylabel("ROM (°)")
    rom.set_title(title, fontsize=10)
    rom.grid(alpha=0.3)
    reps.set_ylabel("repetitions")
    reps.set_xticks(x, [p["label"] for p in points], rotation=20, ha="right", fontsize=8)
    reps.grid(alpha=0.3, axis="y")
    uri = _png(fig)
    plt.close(fig)
    return uri
