"""``runtime report`` over several recordings, or a folder of them: a patient's progress across
sessions, as a therapist follows it over weeks.

    runtime report --recording runs/patient-7/ --out progress.html [--json-out progress.json]
    runtime report --recording week1.jsonl week2.jsonl week3.npz --out progress.html

Each recording is one session (a visit), dated by its first tick and labelled with the file's
name; sessions are put in time order. Recordings of one station less than ``SESSION_GAP_S`` apart
(the files a recorder rotated by size, a runtime restarted within the visit) are one session.
Every session goes through a fresh ``RehabMonitor``, the same as the live station and the
single-session report. Per exercise, one point per session that
holds it: repetitions, range of motion (mean, min, max), left/right symmetry (per-side ranges of a
two-sided exercise; left against right repetitions of mark time; a one-sided exercise against its
mirror done in the same session), and the trust of the point: how many of its repetitions are
low-confidence and why, and whether the model was trained on the exercise. A point is **trusted**
when the model learnt the exercise and at most half of its repetitions are low-confidence; the
figure draws the others hollow and red, the tables say why. A trend is read on trusted points.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from exporters.recorder import RECORDERS
from runtime.rehab import angles as ang
from runtime.rehab.exercises import EXERCISES, UNKNOWN
from runtime.rehab.figures import trend_figure
from runtime.rehab.monitor import RehabConfig, Segment, reps_symmetry, symmetry_of
from runtime.rehab.page import CSS, TRUST_NOTE, fmt, table, write_outputs
from runtime.rehab.records import load_records, run_monitor
from runtime.rehab.trust import FLAGS

TRUSTED_MAX_LOW = 0.5     # a session point is trusted with at most this fraction of low-confidence repetitions
SESSION_GAP_S = 600.0     # recordings of a station closer than this (10 minutes) are one session


def recording_files(paths) -> list[Path]:
    """The recordings named: files as given (read, or refused as missing, by ``read_recording``),
    folders as the recordings (.jsonl, .npz) inside them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in RECORDERS and f.is_file()
                           and not any(d.name.endswith(".parts") for d in f.parents))   # parts still being written
            if not found:
                raise ValueError(f"folder {p} holds no pose recording (.jsonl or .npz): point --recording at the "
                                 "recordings of `runtime serve --record`")
            out.extend(found)
        else:   # a missing file, or a killed recorder's NPZ parts: the reader (read_recording) says which
            out.append(p)
    return out


@dataclass
class Session:
    path: Path                 # its (first) recording
    start_ns: int
    station: str
    segments: list[Segment]
    files: int = 1

    @property
    def label(self) -> str:
        when = datetime.fromtimestamp(self.start_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M")
        return f"{when} {self.path.stem.split('.')[0]}"


def load_session(path: Path, config: RehabConfig | None = None, exercise: str | None = None) -> Session:
    return load_sessions([path], config, exercise)[0]


def load_sessions(files: list[Path], config: RehabConfig | None = None, exercise: str | None = None
                  ) -> list[Session]:
    """The recordings as sessions in time order, those of a station less than ``SESSION_GAP_S``
    apart joined into one."""
    loaded = sorted(((f, load_records(f)) for f in files), key=lambda fr: min(r.tick_ns for r in fr[1]))
    groups: list[tuple[list[Path], list]] = []
    for f, records in loaded:
        station = next((r.station for r in records if r.station), "")
        if groups:
            last = groups[-1][1]
            same = next((r.station for r in last if r.station), "") == station
            if same and min(r.tick_ns for r in records) - max(r.tick_ns for r in last) < SESSION_GAP_S * 1e9:
                groups[-1][0].append(f)
                last.extend(records)
                continue
        groups.append(([f], list(records)))
    return [Session(paths[0], min(r.tick_ns for r in records), next((r.station for r in records if r.station), ""),
                    run_monitor(sorted(records, key=lambda r: r.tick_ns), config, exercise), len(paths))
            for paths, records in groups]


def exercise_key(seg: Segment) -> str:
    """The code a segment is filed under: its P2 code, or the code asked for (a P1 action), or unknown."""
    return seg.code if seg.exercise is not None else (seg.requested or UNKNOWN)


def session_point(session: Session, code: str) -> dict | None:
    """One exercise in one session: count, ROM, symmetry and trust (see the module doc)."""
    segs = [s for s in session.segments if exercise_key(s) == code]
    reps = [r for s in segs for r in s.counted_reps]
    if not segs:
        return None
    roms = np.array([r["rom_deg"] for r in reps], np.float64)
    ex = EXERCISES.get(code)
    sym = reps_symmetry(ex, reps)
    if sym is None and ex is not None and ex.mirror:                   # one-sided: against its mirror
        mirror = [r["rom_deg"] for s in session.segments if exercise_key(s) == ex.mirror for r in s.counted_reps]
        own = [r["rom_deg"] for r in reps]
        sym = symmetry_of(own, mirror) if ex.mode == "left" else symmetry_of(mirror, own)
    trained = [s.trained for s in segs]
    low = sum(bool(r.get("low_confidence")) for r in reps)
    flags = Counter(f for r in reps for f in (r.get("trust_flags") or ()))
    untrained = any(t is False for t in trained)
    return {"label": session.label, "source": str(session.path), "start_ns": session.start_ns,
            "count": len(reps), "rom_mean_deg": _r(roms.mean()) if roms.size else None,
            "rom_min_deg": _r(roms.min()) if roms.size else None, "rom_max_deg": _r(roms.max()) if roms.size else None,
            "symmetry_pct": None if not sym else sym["symmetry_pct"], "low_confidence": low,
            "exercise_trained": False if untrained else (True if all(trained) else None),
            "trust_flags": {f: flags[f] for f in FLAGS if flags[f]},
            "trusted": bool(reps) and not untrained and low <= TRUSTED_MAX_LOW * len(reps),
            "principal": reps[0]["channel"] if reps else None}


def _r(x) -> float:
    return round(float(x), 2)


def build_progress(sessions: list[Session]) -> dict:
    """Everything the progress page shows, as plain data (also written with ``--json-out``)."""
    sessions = sorted(sessions, key=lambda s: s.start_ns)
    codes = sorted({exercise_key(seg) for s in sessions for seg in s.segments})
    exercises = {}
    for code in codes:
        points = [p for s in sessions if (p := session_point(s, code)) is not None]
        ex = EXERCISES.get(code)
        exercises[code] = {"name": ex.name if ex else "unknown exercise", "points": points,
                           "principal": next((p["principal"] for p in points if p["principal"]), None)}
    return {"sessions": [{"label": s.label, "source": str(s.path), "files": s.files, "station": s.station,
                          "start_ns": s.start_ns,
                          "exercises": sorted({exercise_key(seg) for seg in s.segments})} for s in sessions],
            "exercises": exercises}


def _point_trust(p: dict) -> str:
    if p["exercise_trained"] is False:
        return "<span class='low'>untrusted: the model was never trained on this exercise</span>"
    if not p["count"]:
        return "—"
    why = "; ".join(f"{w} ({p['trust_flags'][f]})" for f, w in FLAGS.items() if f in p["trust_flags"])
    cls = "ok" if p["trusted"] else "low"
    return f"<span class='{cls}'>{p['count'] - p['low_confidence']}/{p['count']} trusted</span>" + \
        (f" <span class='note'>{html.escape(why)}</span>" if why else "")


def render_progress_html(data: dict, title: str) -> str:
    sessions = data["sessions"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='sub'>{len(sessions)} session(s), "
             f"{sessions[0]['label']} to {sessions[-1]['label']}"
             + (f" · station {html.escape(sessions[0]['station'])}" if sessions[0]["station"] else "") + "</p>",
             "<h2>Sessions</h2>" + table(["session", "recording", "exercises"],
                                          [[fmt(s["label"]), fmt(s["source"]), fmt(", ".join(s["exercises"]))]
                                           for s in sessions])]
    for code, ex in data["exercises"].items():
        points = ex["points"]
        principal = "—" if not ex["principal"] else html.escape(ang.channel_label(ex["principal"]))
        parts.append(f"<h2>{fmt(code)} · {fmt(ex['name'])}</h2><p class='sub'>principal angle {principal} · "
                     f"{len(points)} session(s) · filled points trusted, hollow red points not</p>")
        if any(p["exercise_trained"] is False for p in points):
            parts.append("<p class='untrusted'>untrusted: the model was never trained on this exercise; these "
                         "points are not measurements.</p>")
        if any(p["count"] for p in points):
            parts.append(f"<img alt='progress of {html.escape(code)}' src='{trend_figure(points, ex['name'])}'>")
        parts.append(table(["session", "reps", "ROM mean (°)", "min", "max", "L/R symmetry (%)", "trust"],
                            [[fmt(p["label"]), str(p["count"]), fmt(p["rom_mean_deg"]), fmt(p["rom_min_deg"]),
                              fmt(p["rom_max_deg"]), fmt(p["symmetry_pct"]), _point_trust(p)] for p in points]))
    parts.append(TRUST_NOTE + "</body></html>")
    return "\n".join(parts)


def write_progress(files: list[Path], out, title: str = "Rehabilitation progress report",
                   config: RehabConfig | None = None, exercise: str | None = None, json_out=None) -> dict:
    """Every recording of ``files`` as one session; the progress page to ``out``; returns the data."""
    data = build_progress(load_sessions(files, config, exercise))
    write_outputs(render_progress_html(data, title), data, out, json_out)
    return data


def format_progress(data: dict) -> str:
    """The terminal's version: per exercise, one line per session."""
    lines = []
    for code, ex in data["exercises"].items():
        lines.append(f"{code} {ex['name']}")
        for p in ex["points"]:
            trust = ("untrusted (never trained on)" if p["exercise_trained"] is False else
                     f"{p['count'] - p['low_confidence']}/{p['count']} trusted")
            lines.append(f"  {p['label'][:40]:<42}{p['count']:>4} reps  ROM {fmt(p['rom_mean_deg']):>6}°  "
                         f"sym {fmt(p['symmetry_pct']):>5} %  {trust}")
    return "\n".join(lines)
