"""``runtime report``: the session report of a recording, as one self-contained HTML page.

    runtime report --recording runs/poses.jsonl --out report.html [--exercise A12] [--json report.json]
    runtime replay ... --rehab-report report.html       # the same from a replay's pose stream

The recorded poses go through the same ``RehabMonitor`` as the live station (same smoothing, same
repetition counter, same trust), segment by segment (a segment = one exercise of one session, as
the recording's ``exercise``/``session`` fields say; ``--exercise`` sets it for recordings that
carry none). Per segment the page shows the principal angle over time with every repetition
shaded (red hatching = low confidence) and the secondary angles, the range-of-motion table,
tempo, left/right symmetry and the trust figures of each repetition; a summary on top, and the
symmetry between the left and right versions of one-sided exercises (A07/A08, A09/A10, A15/A16,
A24/A25) when both are in the recording.

Self-contained: plain HTML and CSS, the figures are matplotlib PNGs embedded as data URIs,
nothing is fetched from anywhere. matplotlib is the ``report`` extra (``pip install '.[report]'``).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporters.recorder import read_rows
from runtime.rehab import angles as ang
from runtime.rehab.exercises import EXERCISES
from runtime.rehab.monitor import RehabConfig, RehabMonitor, Segment, segment_summary, symmetry_of
from sensors.core import schema
from sensors.core.cli_util import require_packages, terminal_safe
from sensors.core.pose_record import PoseRecord

log = logging.getLogger(__name__)
MAX_FIGURE_SEGMENTS = 200     # segments drawn (a longer recording lists the rest in the tables only)


# ---------------------------------------------------------------------------------------------
# Records: the ticks the monitor needs, from a recording or from the pose stream (PoseRecord)
# ---------------------------------------------------------------------------------------------
REQUIRED = ("tick", "tick_ns", "joints", "presence", "degraded")


def load_records(path) -> list[PoseRecord]:
    """Per-tick records of a JSONL or NPZ recording (``runtime serve --record``)."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"recording {path} holds no ticks: was the runtime fed any sensor data while recording?")
    missing = [k for k in REQUIRED if k not in rows[0]]
    if missing:
        raise ValueError(f"recording {path}: records lack {missing}; expected a pose recording of `runtime serve`")
    return [PoseRecord.from_row(r) for r in rows]


def records_from_poses(poses) -> list[PoseRecord]:
    """Per-tick records of the pose stream (decoded ``pose`` wire messages or their records, e.g.
    what a replay collected), in tick-time order."""
    records = [p if isinstance(p, PoseRecord) else PoseRecord.from_message(p) for p in poses]
    return sorted(records, key=lambda r: r.tick_ns)


def _f64(x, shape: tuple[int, ...]) -> np.ndarray | None:
    return None if x is None else np.asarray(x, np.float64).reshape(shape)


@dataclass
class Trace:
    """The smoothed angles of one segment, tick by tick, for the figures."""

    segment: Segment
    t_s: list[float] = field(default_factory=list)
    angles: list[np.ndarray] = field(default_factory=list)


def run_monitor(records: list[PoseRecord], config: RehabConfig | None = None, exercise: str | None = None,
                traces: list[Trace] | None = None) -> list[Segment]:
    """Feed the records through a fresh monitor; returns every segment (and fills ``traces``).

    ``exercise``: the exercise of records that carry none (older recordings)."""
    config = config or RehabConfig()
    rate = schema.FRAME_RATE_HZ
    if len(records) >= 2:
        step = np.median(np.diff([r.tick_ns for r in records])) / 1e9
        rate = 1.0 / step if step > 0 else rate
    mon = RehabMonitor(config, rate)
    segments: list[Segment] = []
    four = (schema.N_MODALITIES,)
    for r in records:
        code = r.exercise if r.exercise not in (None, "") else (exercise or "")
        mon.request(r.tick_ns, code, r.session or None)
        out = mon.update(r.tick, r.tick_ns, _f64(r.joints, (schema.N_JOINTS, 3)), _f64(r.presence, four),
                         _f64(r.degraded, four), _f64(r.shares, four))
        seg = mon.current
        if not segments or segments[-1] is not seg:
            segments.append(seg)
            if traces is not None:
                traces.append(Trace(seg))
        if traces is not None and out.angles is not None:
            traces[-1].t_s.append((r.tick_ns - seg.start_ns) / 1e9)
            traces[-1].angles.append(out.angles)
    mon.finish()
    return segments


# ---------------------------------------------------------------------------------------------
# Figures and page
# ---------------------------------------------------------------------------------------------
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
        top.plot(t, a[:, ang.CHANNEL_KEYS.index(k)], color=COLOURS.get(side, "k"), lw=1.6, label=k)
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
        bottom.plot(t, a[:, ang.CHANNEL_KEYS.index(k)], lw=1.0, label=k)
    bottom.set_ylabel("degrees")
    bottom.set_xlabel("seconds since the exercise started")
    if secondary:
        bottom.legend(loc="upper right", fontsize=7, ncol=2)
    bottom.grid(alpha=0.3)
    uri = _png(fig)
    plt.close(fig)
    return uri


def _fmt(x, nd: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return html.escape(str(x))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _shares(s: dict | None) -> str:
    return "—" if not s else " ".join(f"{m} {s[m]:.2f}" for m in schema.MODALITIES if m in s)


def mirror_symmetry(summaries: list[tuple[Segment, dict]]) -> list[dict]:
    """Left/right symmetry of one-sided exercises from their two versions (A07/A08 ...)."""
    by_code: dict[str, list[float]] = {}
    for seg, _ in summaries:
        if seg.exercise is not None and seg.exercise.mirror:
            by_code.setdefault(seg.code, []).extend(r["rom_deg"] for r in seg.reps)
    out = []
    for code, roms in sorted(by_code.items()):
        ex = EXERCISES[code]
        if ex.mode != "left" or ex.mirror not in by_code:
            continue
        sym = symmetry_of(roms, by_code[ex.mirror])
        if sym:
            out.append({"left": code, "right": ex.mirror, "angle": ex.angle, **sym})
    return out


def build_report(segments: list[Segment]) -> dict:
    """Everything the page shows, as plain data (also written with ``--json``)."""
    summaries = [(s, segment_summary(s)) for s in segments]
    return {"segments": [{**summ, "repetitions": s.counted_reps} for s, summ in summaries],
            "mirror_symmetry": mirror_symmetry(summaries),
            "total_repetitions": sum(summ["count"] for _, summ in summaries),
            "low_confidence_repetitions": sum(summ["low_confidence"] for _, summ in summaries)}


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:1.5em;margin-bottom:0}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.sub{color:#666;margin-top:4px}table{border-collapse:collapse;margin:8px 0;font-size:0.88em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.low{color:#c62828;font-weight:600}.ok{color:#2e7d32}
img{max-width:100%}.note{color:#555;font-size:0.9em}
"""


def render_html(segments: list[Segment], traces: list[Trace], title: str, source: str) -> str:
    report = build_report(segments)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(source)} · "
             f"{report['total_repetitions']} repetitions in {len(segments)} exercise segment(s), "
             f"{report['low_confidence_repetitions']} low-confidence</p>"]
    rows = []
    for s in report["segments"]:
        sym = s["symmetry"]
        rows.append([f"{_fmt(s['exercise'])} {_fmt(s['name'])}", _fmt(s["session"]), _fmt(s["principal"]),
                     str(s["count"]), _fmt(s["rom_mean_deg"]), _fmt(s["rom_min_deg"]), _fmt(s["rom_max_deg"]),
                     _fmt(s["duration_mean_s"], 2), _fmt(s["reps_per_min"]),
                     "—" if not sym else _fmt(sym["symmetry_pct"]),
                     _fmt(s["fused_fraction"], 2),
                     f"<span class='{'low' if s['low_confidence'] else 'ok'}'>{s['low_confidence']}</span>"])
    parts.append("<h2>Summary</h2>" + _table(
        ["exercise", "session", "principal angle", "reps", "ROM mean (°)", "min", "max", "duration (s)",
         "reps/min", "L/R symmetry (%)", "fused", "low conf."], rows))
    if report["mirror_symmetry"]:
        parts.append("<p>One-sided exercises, left version against right version:</p>" + _table(
            ["exercises", "angle", "left ROM (°)", "right ROM (°)", "reps L / R", "symmetry (%)"],
            [[f"{m['left']} / {m['right']}", m["angle"], _fmt(m["left_rom_deg"]), _fmt(m["right_rom_deg"]),
              f"{m['left_reps']} / {m['right_reps']}", _fmt(m["symmetry_pct"])] for m in report["mirror_symmetry"]]))
    parts.append("<p class='note'>ROM = range of motion of the principal angle from the start of a repetition "
                 "to its peak; symmetry = 100 × smaller / larger mean ROM of the two sides. Trust: fused = "
                 "share of the repetition's ticks fused with all four modalities; a repetition is "
                 "low-confidence when a key modality was degraded or absent for most of it. Definitions: "
                 "docs/rehab.md.</p>")
    for i, (seg, s) in enumerate(zip(segments, report["segments"])):
        ex = seg.exercise
        parts.append(f"<h2>{_fmt(s['exercise'])} · {_fmt(s['name'])}"
                     + (f" · {_fmt(s['session'])}" if s["session"] else "") + "</h2>")
        parts.append(f"<p class='sub'>{html.escape(ex.motion if ex else 'unknown exercise: generic repetitions on the angle that moved most')}"
                     f" · principal angle {_fmt(s['principal'])} · {s['count']} repetitions · "
                     f"{s['ticks']} ticks</p>")
        trace = traces[i] if i < len(traces) and traces[i].segment is seg else None
        if trace is not None and trace.angles and i < MAX_FIGURE_SEGMENTS:
            parts.append(f"<img alt='angles of {html.escape(seg.code)}' src='{segment_figure(trace)}'>")
        if s["symmetry"]:
            sym = s["symmetry"]
            parts.append(f"<p>Left/right: mean ROM {_fmt(sym['left_rom_deg'])}° left ({sym['left_reps']} reps) "
                         f"vs {_fmt(sym['right_rom_deg'])}° right ({sym['right_reps']}), symmetry "
                         f"{_fmt(sym['symmetry_pct'])} %.</p>")
        reps = []
        for r in seg.counted_reps:
            low = r.get("low_confidence")
            reps.append([str(r["index"]), r["side"], _fmt(r["start_s"], 1), _fmt(r["duration_s"], 2),
                         _fmt(r["rom_deg"]), _fmt(r["peak_deg"]),
                         _fmt((r.get("side_rom_deg") or {}).get("left")),
                         _fmt((r.get("side_rom_deg") or {}).get("right")),
                         _fmt(r.get("fused_fraction"), 2), ", ".join(r.get("degraded") or []) or "none",
                         _shares(r.get("mean_shares")),
                         "<span class='low'>low</span>" if low else "<span class='ok'>ok</span>"])
        if reps:
            parts.append(_table(["#", "side", "start (s)", "duration (s)", "ROM (°)", "peak (°)", "ROM left",
                                 "ROM right", "fused", "degraded", "mean shares", "confidence"], reps))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(records: list[PoseRecord], out, title: str = "Rehabilitation session report", source: str = "",
                 config: RehabConfig | None = None, exercise: str | None = None, json_out=None) -> dict:
    """Monitor ``records``, write the HTML page to ``out`` (and the figures as JSON); returns the data."""
    traces: list[Trace] = []
    segments = run_monitor(records, config, exercise, traces)
    page = render_html(segments, traces, title, source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    data = build_report(segments)
    if json_out:
        Path(json_out).write_text(json.dumps(data, indent=1, default=_jsonable))
    return data


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def format_summary(data: dict) -> str:
    """A few lines for the terminal: one per segment."""
    lines = [f"{'exercise':<30}{'session':<16}{'reps':>5}{'ROM mean':>10}{'min':>7}{'max':>7}{'s/rep':>7}"
             f"{'sym %':>7}{'low':>5}"]
    for s in data["segments"]:
        sym = (s["symmetry"] or {}).get("symmetry_pct")
        lines.append(f"{(s['exercise'] + ' ' + s['name'])[:29]:<30}{(s['session'] or '-')[:15]:<16}{s['count']:>5}"
                     f"{_fmt(s['rom_mean_deg']):>10}{_fmt(s['rom_min_deg']):>7}{_fmt(s['rom_max_deg']):>7}"
                     f"{_fmt(s['duration_mean_s'], 2):>7}{_fmt(sym):>7}{s['low_confidence']:>5}")
    lines.append(f"total {data['total_repetitions']} repetitions, {data['low_confidence_repetitions']} "
                 "low-confidence")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recording", required=True, help="pose recording (.jsonl or .npz) of runtime serve/replay")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--exercise", default=None, metavar="CODE", help="exercise of records that carry none")
    p.add_argument("--title", default="Rehabilitation session report")


def run(args: argparse.Namespace) -> int:
    require_packages("matplotlib")   # the `report` extra: the one-line hint before reading anything
    try:
        records = load_records(args.recording)
        data = write_report(records, args.out, args.title, str(args.recording),
                            RehabConfig(exercise=args.exercise or ""), args.exercise, args.json_out)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s", err)
        return 2
    print(terminal_safe(format_summary(data)))   # exercise and session names come from sensor headers
    print(f"report: {args.out}")
    return 0
