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
import html
import logging
from pathlib import Path

from runtime.rehab import angles as ang
from runtime.rehab.exercises import EXERCISES
from runtime.rehab.figures import Trace, segment_figure
from runtime.rehab.monitor import RehabConfig, Segment, segment_summary, symmetry_of
from runtime.rehab.page import CSS, TRUST_NOTE, fmt, table, write_outputs
from runtime.rehab.records import load_records, records_from_poses, run_monitor
from runtime.rehab.trust import trust_words
from sensors.core import schema
from sensors.core.cli_util import require_packages, terminal_safe
from sensors.core.pose_record import PoseRecord

__all__ = ["build_report", "format_summary", "load_records", "records_from_poses", "run_monitor", "write_report"]

log = logging.getLogger(__name__)
MAX_FIGURE_SEGMENTS = 200     # segments drawn (a longer recording lists the rest in the tables only)


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------
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


UNTRUSTED = "untrusted: the model was never trained on this exercise"


def _verdict(r: dict) -> str:
    """A repetition's trust, in words: ok, or low with the reasons."""
    if not r.get("low_confidence"):
        return "<span class='ok'>ok</span>"
    why = "; ".join(trust_words(r.get("trust_flags"))) or "low confidence"
    return f"<span class='low'>low: {html.escape(why)}</span>"


def _trust_cell(s: dict) -> str:
    if s.get("exercise_trained") is False:
        return "<span class='low'>untrusted</span>"
    return f"<span class='{'low' if s['low_confidence'] else 'ok'}'>{s['low_confidence']}</span>"


def _principal(s: dict) -> str:
    return "—" if not s.get("principal") else html.escape(ang.channel_label(s["principal"]))


def summary_rows(report: dict) -> list[list]:
    rows = []
    for s in report["segments"]:
        sym = s["symmetry"]
        asked = s.get("requested") if s["exercise"] == "unknown" and s.get("requested") else None
        rows.append([f"{fmt(asked or s['exercise'])} {fmt(s['name'])}", fmt(s["session"]), _principal(s),
                     str(s["count"]), fmt(s["rom_mean_deg"]), fmt(s["rom_min_deg"]), fmt(s["rom_max_deg"]),
                     fmt(s["duration_mean_s"], 2), fmt(s["reps_per_min"]),
                     "—" if not sym else fmt(sym["symmetry_pct"]), fmt(s["fused_fraction"], 2), _trust_cell(s)])
    return rows


SUMMARY_HEADERS = ["exercise", "session", "principal angle", "reps", "ROM mean (°)", "min", "max", "duration (s)",
                   "reps/min", "L/R symmetry (%)", "fused", "low conf."]
def render_html(segments: list[Segment], traces: list[Trace], title: str, source: str, station: str = "") -> str:
    report = build_report(segments)
    untrusted = sum(s.get("exercise_trained") is False for s in report["segments"])
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(source)}"
             + (f" · station {html.escape(station)}" if station else "") + " · "
             f"{report['total_repetitions']} repetitions in {len(segments)} exercise segment(s), "
             f"{report['low_confidence_repetitions']} low-confidence"
             + (f", {untrusted} segment(s) untrusted" if untrusted else "") + "</p>"]
    parts.append("<h2>Summary</h2>" + table(SUMMARY_HEADERS, summary_rows(report)))
    if report["mirror_symmetry"]:
        parts.append("<p>One-sided exercises, left version against right version:</p>" + table(
            ["exercises", "angle", "left ROM (°)", "right ROM (°)", "reps L / R", "symmetry (%)"],
            [[f"{m['left']} / {m['right']}", html.escape(ang.ANGLE_WORDS[m["angle"]][0]), fmt(m["left_rom_deg"]),
              fmt(m["right_rom_deg"]), f"{m['left_reps']} / {m['right_reps']}", fmt(m["symmetry_pct"])]
             for m in report["mirror_symmetry"]]))
    parts.append(TRUST_NOTE)
    for i, (seg, s) in enumerate(zip(segments, report["segments"])):
        parts.extend(_segment_section(seg, s, traces[i] if i < len(traces) and traces[i].segment is seg else None,
                                      i < MAX_FIGURE_SEGMENTS))
    parts.append("</body></html>")
    return "\n".join(parts)


def _segment_section(seg: Segment, s: dict, trace: Trace | None, draw: bool) -> list[str]:
    ex = seg.exercise
    name = f"{fmt(s['exercise'])} · {fmt(s['name'])}" if ex or not seg.requested else \
        f"{fmt(seg.requested)} · {fmt(s['name'])}"
    parts = [f"<h2>{name}" + (f" · {fmt(s['session'])}" if s["session"] else "") + "</h2>"]
    if seg.trained is False:
        parts.append(f"<p class='untrusted'>{UNTRUSTED}: every figure below comes from a model that never saw "
                     "it, and is not a measurement.</p>")
    motion = ex.motion if ex else "unknown exercise: generic repetitions on the angle that moved most"
    parts.append(f"<p class='sub'>{html.escape(motion)} · principal angle {_principal(s)} · "
                 f"{s['count']} repetitions · {s['ticks']} ticks</p>")
    if trace is not None and trace.angles and draw:
        parts.append(f"<img alt='angles of {html.escape(seg.code)}' src='{segment_figure(trace)}'>")
    if s["symmetry"]:
        sym = s["symmetry"]
        parts.append(f"<p>Left/right: mean ROM {fmt(sym['left_rom_deg'])}° left ({sym['left_reps']} reps) "
                     f"vs {fmt(sym['right_rom_deg'])}° right ({sym['right_reps']}), symmetry "
                     f"{fmt(sym['symmetry_pct'])} %.</p>")
    reps = [[str(r["index"]), r["side"], fmt(r["start_s"], 1), fmt(r["duration_s"], 2), fmt(r["rom_deg"]),
             fmt(r["peak_deg"]), fmt((r.get("side_rom_deg") or {}).get("left")),
             fmt((r.get("side_rom_deg") or {}).get("right")), fmt(r.get("fused_fraction"), 2),
             ", ".join(r.get("degraded") or []) or "none", _shares(r.get("mean_shares")), _verdict(r)]
            for r in seg.counted_reps]
    if reps:
        parts.append(table(["#", "side", "start (s)", "duration (s)", "ROM (°)", "peak (°)", "ROM left", "ROM right",
                             "fused", "degraded", "mean shares", "trust"], reps))
    return parts


def write_report(records: list[PoseRecord], out, title: str = "Rehabilitation session report", source: str = "",
                 config: RehabConfig | None = None, exercise: str | None = None, json_out=None) -> dict:
    """Monitor ``records``, write the HTML page to ``out`` (and the figures as JSON); returns the data."""
    traces: list[Trace] = []
    segments = run_monitor(records, config, exercise, traces)
    station = next((r.station for r in records if r.station), "")
    page = render_html(segments, traces, title, source, station)
    data = build_report(segments)
    write_outputs(page, data, out, json_out)
    return data


def format_summary(data: dict) -> str:
    """A few lines for the terminal: one per segment."""
    lines = [f"{'exercise':<30}{'session':<16}{'reps':>5}{'ROM mean':>10}{'min':>7}{'max':>7}{'s/rep':>7}"
             f"{'sym %':>7}{'low':>5}  trust"]
    for s in data["segments"]:
        sym = (s["symmetry"] or {}).get("symmetry_pct")
        name = f"{s.get('requested') or s['exercise']} {s['name']}"
        lines.append(f"{name[:29]:<30}{(s['session'] or '-')[:15]:<16}{s['count']:>5}"
                     f"{fmt(s['rom_mean_deg']):>10}{fmt(s['rom_min_deg']):>7}{fmt(s['rom_max_deg']):>7}"
                     f"{fmt(s['duration_mean_s'], 2):>7}{fmt(sym):>7}{s['low_confidence']:>5}  "
                     f"{UNTRUSTED if s.get('exercise_trained') is False else 'ok'}")
    lines.append(f"total {data['total_repetitions']} repetitions, {data['low_confidence_repetitions']} "
                 "low-confidence")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recording", required=True, nargs="+", metavar="FILE_OR_DIR",
                   help="pose recording(s) (.jsonl or .npz) of runtime serve/replay; several recordings, or a "
                        "folder of them, give the progress across sessions")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--exercise", default=None, metavar="CODE", help="exercise of records that carry none")
    p.add_argument("--title", default=None, help="page title (default: session report / progress report)")


def run(args: argparse.Namespace) -> int:
    require_packages("matplotlib")   # the `report` extra: the one-line hint before reading anything
    from runtime.rehab import progress

    paths = [args.recording] if isinstance(args.recording, str) else list(args.recording)
    try:
        files = progress.recording_files(paths)
        config = RehabConfig(exercise=args.exercise or "")
        if len(files) == 1 and not any(Path(p).is_dir() for p in paths):
            data = write_report(load_records(files[0]), args.out, args.title or "Rehabilitation session report",
                                str(files[0]), config, args.exercise, args.json_out)
            text = format_summary(data)
        else:
            data = progress.write_progress(files, args.out, args.title or "Rehabilitation progress report", config,
                                           args.exercise, args.json_out)
            text = progress.format_progress(data)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s", err)
        return 2
    print(terminal_safe(text))   # exercise and session names come from sensor headers
    print(f"report: {args.out}")
    return 0
