"""One-file HTML report: metadata, then per section a description, an interactive figure and a top-k table.

plotly.js is written once, as plotly.min.js beside report.html, and loaded by a relative <script src>
from the page and from every figures/*.html: a report with ten figures is ~5 MB rather than ~50 MB,
and it opens offline (no external URLs) as long as the folder is kept together.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from headscope._version import __version__
from headscope.fileio import atomic_write
from headscope.viz.export import HTML_CONFIG, PLOTLY_JS, ExportFormat, export_figures, write_plotly_js

if TYPE_CHECKING:
    from headscope.results import HeadScores


@dataclass
class ReportSection:
    title: str
    description: str
    figure: go.Figure
    table: pd.DataFrame | None = None

    @classmethod
    def from_scores(cls, scores: HeadScores, k: int = 10, description: str | None = None, **plot_kw) -> ReportSection:
        """Heatmap + top-k table of a HeadScores, described by its own description unless given."""
        return cls(
            title=scores.name,
            description=scores.description if description is None else description,
            figure=scores.plot(**plot_kw),
            table=scores.top(k),
        )


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;max-width:1100px;
 margin:2em auto;padding:0 1.2em;line-height:1.5}
h1{font-size:1.7em;margin-bottom:.2em}
h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2.2em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
th,td{padding:.25em .7em;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:top}
th{background:#f6f6f6;font-weight:600} td.num,table.topk td{font-variant-numeric:tabular-nums}
table.meta th{width:11em} .fig{overflow-x:auto;margin:.8em 0} .files{font-size:.85em;color:#666}
nav ol{padding-left:1.4em} details summary{cursor:pointer;color:#555} pre{margin:0;white-space:pre-wrap}
footer{margin-top:3em;font-size:.8em;color:#888}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "section"


def _meta_rows(meta: dict[str, Any]) -> str:
    meta = dict(meta)

    # Fixed order for the fields a reader looks for first; anything else the caller passed follows.
    def take(*keys, default=None):  # accept the obvious aliases so callers don't get duplicate rows
        found = [meta.pop(k) for k in keys if k in meta]
        return found[0] if found else default

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("model", take("model", default="—")),
        ("date", take("date", "created", default=now)),
        ("headscope version", take("headscope_version", "headscope version", "headscope", default=__version__)),
    ]
    prompts = take("prompts")
    params = take("params", "parameters")
    out = [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
    if prompts is not None:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        items = "".join(f"<li><code>{html.escape(repr(p))}</code></li>" for p in prompts)
        out.append(
            f"<tr><th>prompts</th><td><details><summary>{len(prompts)} prompt(s)</summary>"
            f"<ol start=0>{items}</ol></details></td></tr>"
        )
    if params:
        text = json.dumps(params, indent=1, default=str, ensure_ascii=False)
        out.append(f"<tr><th>parameters</th><td><pre>{html.escape(text)}</pre></td></tr>")
    out += [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta.items()]
    return "".join(out)


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, classes="topk", border=0, na_rep="—", float_format=lambda x: f"{x:.4g}", escape=True)


def write_report(
    sections: Sequence[ReportSection],
    out_dir: str | os.PathLike,
    title: str = "headscope report",
    meta: dict[str, Any] | None = None,
    *,
    static: bool = False,
    formats: Sequence[ExportFormat] = ("png", "svg", "html"),
) -> Path:
    """Write out_dir/report.html; with static=True also out_dir/figures/<NN-slug>.{png,svg,html}.

    A missing browser only warns (HTML report and figure HTML are still written).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plotly_js(out_dir)
    sections = list(sections)
    stems = [f"{i + 1:02d}-{_slug(s.title)}" for i, s in enumerate(sections)]
    files: dict[str, dict[str, Path]] = {}
    if static and sections:
        files = export_figures(
            [(s.figure, st) for s, st in zip(sections, stems)],
            out_dir / "figures",
            formats,
            plotly_js=out_dir / PLOTLY_JS,
        )

    body = []
    if len(sections) > 1:
        body.append(
            "<nav><ol>"
            + "".join(f"<li><a href='#{st}'>{html.escape(s.title)}</a></li>" for s, st in zip(sections, stems))
            + "</ol></nav>"
        )
    for i, (s, st) in enumerate(zip(sections, stems)):
        fig_html = pio.to_html(
            s.figure, include_plotlyjs=False, full_html=False, config=HTML_CONFIG, div_id=f"fig-{st}"
        )
        links = " · ".join(f"<a href='figures/{p.name}'>{fmt.upper()}</a>" for fmt, p in files.get(st, {}).items())
        body.append(
            f"<section id='{st}'><h2>{i + 1}. {html.escape(s.title)}</h2>"
            + (f"<p>{html.escape(s.description)}</p>" if s.description else "")
            + f"<div class='fig'>{fig_html}</div>"
            + (f"<p class='files'>Figure files: {links}</p>" if links else "")
            + (f"<h3>Top heads</h3>{_table_html(s.table)}" if s.table is not None else "")
            + "</section>"
        )

    doc = (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>\n"
        f"<script src='{PLOTLY_JS}'></script>\n</head><body>"
        f"<h1>{html.escape(title)}</h1><table class='meta'>{_meta_rows(meta or {})}</table>"
        + "\n".join(body)
        + f"<footer>Generated by headscope {html.escape(__version__)}. Works offline: keep plotly.min.js beside it.</footer>"
        "</body></html>\n"
    )
    return atomic_write(out_dir / "report.html", lambda p: p.write_text(doc, encoding="utf-8"))
