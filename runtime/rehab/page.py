"""The HTML pieces the rehabilitation reports share (self-contained: plain HTML and CSS, figures
as data URIs, nothing fetched), and where a report is written.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def fmt(x, nd: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return html.escape(str(x))


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:1.5em;margin-bottom:0}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.sub{color:#666;margin-top:4px}table{border-collapse:collapse;margin:8px 0;font-size:0.88em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.low{color:#c62828;font-weight:600}.ok{color:#2e7d32}
img{max-width:100%}.note{color:#555;font-size:0.9em}
.untrusted{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px;color:#8e1c1c;font-weight:600}
"""


TRUST_NOTE = ("<p class='note'>ROM = range of motion of the principal angle from the start of a repetition to its "
              "peak; symmetry = 100 × smaller / larger mean ROM of the two sides. Trust: fused = share of the "
              "repetition's ticks fused with all four modalities; a repetition is low-confidence when a key sensor "
              "was degraded during it or missing for most of it, when its poses were implausible (bone lengths, "
              "angle limits, jitter), or when the model was never trained on the exercise (untrusted). "
              "Definitions: docs/rehab.md.</p>")


def write_outputs(page: str, data: dict, out, json_out=None) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if json_out:
        Path(json_out).write_text(json.dumps(data, indent=1, default=_jsonable))


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
