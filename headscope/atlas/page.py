"""The atlas page: report.html beside plotly.min.js, attention.js (the viewer's data), figures/ and
docs/. Sections: role map, head table, attention viewer, token view, one per step, provenance."""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path

import plotly.io as pio

from .._version import __version__
from ..confidence import interval_text
from ..fileio import atomic_write
from ..viz.export import HTML_CONFIG, export_figures, write_plotly_js
from ..viz.token_view import TOKEN_VIEW_CSS, token_view_js
from .docs_pages import render_docs
from .roles import NO_HEADS, NO_ROLE, role_colour

ROLE_RULE = (
    "A head <b>has</b> a role when its score passes the role's cut (a fixed threshold from the paper, "
    "a headscope convention, or the analyzer's own selection; each rule is listed below). Its "
    "<b>strength</b> in that role is its score relative to the role's best head in this model (1 = the "
    "best; best / score for a role of small values). A head is coloured by its "
    "strongest <b>specific</b> role (induction, previous-token, duplicate, retrieval, safety, "
    "vision-aware); only when it has none, by its strongest <b>generic</b> role (sink, local, "
    "global), since most heads of a chat model put attention on the first token and a sink score "
    "would hide everything else. A head with no role is <i>no clear role</i>. Hover a head for every "
    "role it has; click it to open it in the attention viewer."
)

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;max-width:1200px;margin:2em auto;
 padding:0 1.2em;line-height:1.5}
h1{font-size:1.7em;margin-bottom:.2em} h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2.2em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0} th,td{padding:.2em .6em;border-bottom:1px solid #e5e5e5;
 text-align:left;vertical-align:top} th{background:#f6f6f6;font-weight:600} td.n{font-variant-numeric:tabular-nums;text-align:right}
th[aria-sort=ascending]::after{content:" ▲"} th[aria-sort=descending]::after{content:" ▼"}
.scroll{max-height:32em;overflow:auto;border:1px solid #eee}
#head-table{border-collapse:separate;border-spacing:0;margin:0}
#head-table td{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:12em;vertical-align:middle}
#head-table thead th{position:sticky;z-index:2;vertical-align:bottom;line-height:1.25}
#head-table tr.groups th{top:0;height:1.6em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:16em;
 text-align:center;border-left:2px solid #fff;background:#ececec;font-weight:500}
#head-table tr.names th{top:calc(1.6em + .4em + 1px);cursor:pointer;min-width:3em;max-width:9em}
#head-table .sticky{position:sticky;z-index:1;background:#fff;box-sizing:border-box}
#head-table thead .sticky,#head-table .sticky-group{z-index:3;background:#f6f6f6}
#head-table .sticky-group{position:sticky;left:0}
#head-table .s0{left:0;width:5.5em;min-width:5.5em;max-width:5.5em}
#head-table .s1{left:5.5em;width:3.6em;min-width:3.6em;max-width:3.6em}
#head-table .s2{left:9.1em;width:3.6em;min-width:3.6em;max-width:3.6em;border-right:1px solid #ccc}
#head-table tbody tr:hover td{background:#f3f7ff} #head-table tr.names th[data-kind=number]{text-align:right}
.fig{overflow-x:auto;margin:.8em 0}
.files,.muted{font-size:.85em;color:#666} .swatch{display:inline-block;width:1em;height:1em;border:1px solid #999;vertical-align:middle}
.skipped{color:#8a6d3b;background:#fcf8e3;padding:.4em .8em} nav ol{columns:2;padding-left:1.4em} pre{white-space:pre-wrap;margin:0}
.controls{margin:.5em 0} .controls input,.controls select{margin-right:1em} #viewer-prompt{width:100%;max-width:60em}
footer{margin-top:3em;font-size:.8em;color:#888}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _num(x) -> tuple[str, str]:
    """(data-v, shown text) of a table cell."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "", "—"
    if isinstance(x, float):
        return repr(x), f"{x:.3g}"
    return str(x), str(x)


def _fig_div(fig, div_id: str) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config=HTML_CONFIG, div_id=div_id)


def _legend(atlas, rm) -> str:
    counts = rm.counts()
    rows, seen = [], set()
    for r in atlas.roles():
        first = r.name not in seen
        seen.add(r.name)
        swatch = f"<span class='swatch' style='background:{role_colour(r.name, rm.names)}'></span>" if first else ""
        rows.append(
            f"<tr><td>{swatch} {_esc(r.name) if first else ''}</td><td class='n'>{counts.get(r.name, 0) if first else ''}"
            f"</td><td>{'specific' if r.specific else 'generic'}</td><td>{_esc(r.rule)}</td>"
            f"<td>{_esc(r.step)}</td><td class='n'>{len(r.members)}</td></tr>"
        )
    rows.append(
        f"<tr><td><span class='swatch' style='background:{role_colour(NO_ROLE)}'></span> {NO_ROLE}</td>"
        f"<td class='n'>{counts[NO_ROLE]}</td><td></td><td>no role passes its cut</td><td></td><td></td></tr>"
    )
    return (
        "<table class='legend'><thead><tr><th>role</th><th>heads coloured</th><th>tier</th><th>rule</th>"
        "<th>from</th><th>heads that pass</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


# The head table's fixed columns: the first three stay in view while the scores scroll sideways.
_HEAD_COLUMNS = ("label", "layer", "head", "kv_group", "role", "role_strength", "all_roles")
_STICKY = ("label", "layer", "head")
_TEXT_COLUMNS = ("label", "role", "all_roles")


def _hover(label: str, name: str, value, shown: str, column=None, at: tuple[int, int] | None = None) -> list[str]:
    """The hover text of one head-table cell, one line each: the head, the column and the full value.
    column: the step's Column (None for the head's own columns) and `at` the (layer, head), so a line
    read from the step's data (a confidence interval, ...) can be appended here."""
    full = shown if not isinstance(value, float) or shown == "—" else f"{value:.6g}"
    lines = [f"{label} · {name}: {full}"]
    if column is not None and getattr(column, "ci", None) is not None and at is not None:
        ci, (layer, head) = column.ci, at
        lines.append(
            interval_text(
                float(column.values[layer, head]),
                float(ci.low[layer, head]),
                float(ci.high[layer, head]),
                ci.level,
                ci.n,
                ci.unit,
            )
        )
    return lines


def _column_groups(atlas, names) -> list[tuple[str, int]]:
    """(group title, span) for the header row above the column names: the head (sticky), its roles, then one
    group per step (a step's columns are adjacent in the table)."""
    columns = atlas.columns()
    titles = {s.key: s.title for s in atlas.steps}
    groups: list[tuple[str, int]] = []
    for name in names:
        title = (
            "head"
            if name in _STICKY
            else "role"
            if name in _HEAD_COLUMNS
            else titles.get(columns[name].step, columns[name].step)
        )
        if groups and groups[-1][0] == title:
            groups[-1] = (title, groups[-1][1] + 1)
        else:
            groups.append((title, 1))
    return groups


def _head_table(atlas) -> str:
    df = atlas.to_dataframe()
    columns = atlas.columns()
    names = list(df.columns)

    def cls(c):
        out = ["n"] if c not in _TEXT_COLUMNS else []
        if c in _STICKY:
            out.append(f"sticky s{_STICKY.index(c)}")
        return f" class='{' '.join(out)}'" if out else ""

    groups = "".join(
        f"<th colspan='{n}' class='group{' sticky-group' if i == 0 else ''}' title='{_esc(t)}'>{_esc(t)}</th>"
        for i, (t, n) in enumerate(_column_groups(atlas, names))
    )
    head = "".join(
        f"<th data-col='{i}' data-kind='{'text' if c in _TEXT_COLUMNS else 'number'}'{cls(c)} "
        f"title='{_esc(columns[c].description) if c in columns else _esc(c)}'>{_esc(c).replace('_', '_<wbr>')}</th>"
        for i, c in enumerate(names)
    )
    body = []
    for rec in df.to_dict("records"):
        search = f"{rec['label']} {rec['role']} {rec['all_roles']}".lower()
        cells = []
        for c in names:
            v, shown = _num(rec[c])
            title = "\n".join(_hover(rec["label"], c, rec[c], shown, columns.get(c), (rec["layer"], rec["head"])))
            cells.append(f"<td data-v='{_esc(v)}'{cls(c)} title='{_esc(title)}'>{_esc(shown)}</td>")
        roles = "|".join(rec["all_roles"].split(", ")) if rec["all_roles"] else ""
        body.append(
            f"<tr data-search='{_esc(search)}' data-roles='{_esc(roles)}' data-layer='{rec['layer']}'>"
            f"{''.join(cells)}</tr>"
        )
    role_names = list(dict.fromkeys(r.name for r in atlas.roles()))
    options = "".join(f"<option value='{_esc(n)}'>{_esc(n)}</option>" for n in role_names)
    layers = "".join(f"<option value='{i}'>L{i}</option>" for i in range(atlas.n_layers))
    return (
        f"<div class='controls'><input id='head-filter' type='search' placeholder='filter: L3H, induction, ...' "
        f"title='filters as you type: a head label or a role'>"
        f"<select id='role-filter' title='heads that pass this role&#39;s cut'><option value=''>any role</option>"
        f"{options}</select><select id='layer-filter'><option value=''>any layer</option>{layers}</select>"
        f"<span id='head-count' class='muted'></span></div>"
        f"<p class='files'>Download: <a href='scores/heads.csv'>CSV</a> · <a href='scores/heads.parquet'>Parquet</a>"
        f" (one row per head; click a column header to sort, largest first; click again for smallest first; "
        f"hover a cell for its full value)</p>"
        f"<div class='scroll' id='head-table-box'><table id='head-table' class='sortable'><thead>"
        f"<tr class='groups'>{groups}</tr><tr class='names'>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _kinds_note(atlas) -> str:
    """A hybrid's layers without attention: said once above the head table (they have no rows there)."""
    return (
        f"<p class='muted'>{_esc(atlas.note[:1].upper() + atlas.note[1:])} (grey on the role map).</p>"
        if atlas.note
        else ""
    )


def _viewer_how(v: dict) -> str:
    if v["windowed"]:
        return (
            f"The prompt has {v['n_tokens']} tokens, more than {v['max_tokens']}: the rows are its last "
            f"{len(v['queries'])} queries; the columns its first {v['sink_keys']} keys, a '…' column holding the "
            "attention on every key in between, and the same last positions (each row still sums to one)."
        )
    return (
        f"The whole prompt ({v['n_tokens']} tokens); longer prompts are windowed to the last "
        f"{v['max_tokens'] - v['sink_keys']} queries and the first {v['sink_keys']} keys + '…'."
    )


def _viewer(atlas) -> str:
    v = atlas.viewer
    if v is None:
        return "<p class='muted'>No viewer data in this atlas.</p>"
    layers = "".join(f"<option value='{i}'>L{i}</option>" for i in v.get("attention_layers", range(v["n_layers"])))
    heads = "".join(f"<option value='{i}'>H{i}</option>" for i in range(v["n_heads"]))
    # Served by `headscope view`, the page finds POST attention and shows the text box (atlas.js);
    # opened as a file, it shows the line saying how.
    prompt_box = (
        "<div id='viewer-prompt-box' class='controls' hidden><textarea id='viewer-prompt' rows='3' "
        "placeholder='Type a prompt, then Show (or Ctrl+Enter)'></textarea><br><button id='viewer-run' "
        "type='button'>Show</button> <span id='viewer-status' class='muted'></span></div>"
        "<p id='viewer-static-note' class='muted'>Type your own prompt: run <code>headscope view --report "
        "<span class='report-folder'>THIS_FOLDER</span></code> and open the address it prints (the "
        "viewer and the token view then take any prompt).</p>"
    )
    return (
        f"<p><span id='viewer-how'>{_esc(_viewer_how(v))}</span> Values are stored in steps of 1/255. Pick a "
        f"head here or click one on the role map.</p>{prompt_box}"
        f"<div class='controls'><label>layer <select id='viewer-layer'>{layers}</select></label>"
        f"<label>head <select id='viewer-head'>{heads}</select></label></div><div id='viewer-plot'></div>"
    )


def _token_view(atlas) -> str:
    if atlas.viewer is None:
        return "<p class='muted'>No viewer data in this atlas.</p>"
    top = atlas.top_heads_by_role()
    labels = ", ".join(f"L{layer}H{head}" for _, layer, head in top) or "L0H0"
    which = "; ".join(f"{role}: L{layer}H{head}" for role, layer, head in top)
    return (
        f"<p>The viewer's prompt as text, one box per head (default: each role's strongest head"
        f"{' — ' + _esc(which) if which else ''}). Hover a token to light up, in every head, the tokens it "
        "attends to (darker = more attention); click it to keep it. In a notebook: "
        "<code>headscope.viz.token_view(model, prompt, heads=[(layer, head), ...])</code>.</p>"
        f"<div class='controls'><label>heads <input id='token-view-heads' size='40' value='{_esc(labels)}' "
        "title='head labels, e.g. L17H3, L1H2 (updates as you type)'></label></div><div id='token-view'></div>"
    )


def _step_section(i: int, step, figures: dict, files: dict, docs: dict) -> str:
    sid = f"step-{step.key}"
    link = (
        f"<a href='{docs[step.docs]}'>docs: {_esc(step.docs)}</a>"
        if step.docs in docs
        else f"docs: {_esc(step.docs)} (in headscope's docs/ folder)"
    )
    out = [
        f"<section id='{sid}'><h2>{i}. {_esc(step.title)}</h2><p>{_esc(step.what)} <span class='muted'>({link})</span></p>"
    ]
    if step.status != "ok":
        out.append(f"<p class='skipped'>Not run on this model: {_esc(step.reason)}</p></section>")
        return "".join(out)
    out += [f"<p class='muted'>{_esc(n)}</p>" for n in step.notes]
    for j in range(len(step.figures)):
        stem = f"{i:02d}-{step.key}-{j + 1}"
        out.append(f"<div class='fig'>{_fig_div(figures[stem], 'fig-' + stem)}</div>")
        links = " · ".join(f"<a href='figures/{p.name}'>{fmt.upper()}</a>" for fmt, p in files.get(stem, {}).items())
        if links:
            out.append(f"<p class='files'>Figure files: {links}</p>")
    if step.top:
        rows = "".join(
            f"<tr><td class='n'>{t['rank']}</td><td>{_esc(t['label'])}</td><td class='n'>{_num(t['score'])[1]}</td></tr>"
            for t in step.top
        )
        out.append(
            f"<details><summary>Top heads</summary><table><thead><tr><th>rank</th><th>head</th><th>score</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></details>"
        )
    params = json.dumps(step.params, indent=1, default=str, ensure_ascii=False)
    out.append(
        f"<details><summary>Parameters ({step.seconds:.1f} s)</summary><pre>{_esc(params)}</pre></details></section>"
    )
    return "".join(out)


def _provenance(atlas) -> str:
    p = dict(atlas.provenance)
    versions = p.pop("versions", {})
    rows = [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in p.items() if k != "steps"]
    rows.append(
        "<tr><th>versions</th><td>" + ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in versions.items()) + "</td></tr>"
    )
    timing = "".join(
        f"<tr><td>{_esc(s.key)}</td><td>{_esc(s.status)}</td><td class='n'>{s.seconds:.1f} s</td></tr>"
        for s in atlas.steps
    )
    return (
        f"<table class='meta'>{''.join(rows)}</table><h3>Steps</h3><table><thead><tr><th>step</th><th>status</th>"
        f"<th>time</th></tr></thead><tbody>{timing}</tbody></table>"
        "<p class='muted'>Every number on this page is in scores/ (atlas.json, steps/, viewer.json, heads.csv): "
        "<code>headscope report --from THIS_FOLDER</code> rebuilds the page without the model.</p>"
    )


def write_page(atlas, out_dir: str | Path, *, static: bool = True) -> Path:
    """Write out_dir/report.html (+ plotly.min.js, attention.js, figures/, docs/)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plotly_js(out_dir)
    if atlas.viewer is not None:
        data = "window.HEADSCOPE_VIEWER = " + json.dumps(atlas.viewer) + ";\n"
        atomic_write(out_dir / "attention.js", lambda p: p.write_text(data, encoding="utf-8"))
    ran = [s for s in atlas.steps if s.status == "ok"]
    figures = {
        f"{i:02d}-{s.key}-{j + 1}": pio.from_json(f)
        for i, s in enumerate(atlas.steps, 1)
        if s.status == "ok"
        for j, f in enumerate(s.figures)
    }  # parsed once: exported and shown
    role_fig = atlas.plot()
    files = export_figures(
        [(role_fig, "00-role-map"), *((f, stem) for stem, f in figures.items())],
        out_dir / "figures",
        ("png", "svg", "html") if static else ("html",),
        plotly_js=out_dir / "plotly.min.js",
    )
    docs = render_docs([s.docs for s in atlas.steps], out_dir)
    rm = atlas.role_map()
    n_role = int(((rm.role != NO_ROLE) & (rm.role != NO_HEADS)).sum())
    total = len(atlas.attention_layers) * atlas.n_heads
    nav = [
        "<li><a href='#role-map-section'>Role map</a></li>",
        "<li><a href='#head-table-section'>Head table</a></li>",
        "<li><a href='#viewer'>Attention viewer</a></li>",
        "<li><a href='#token-view-section'>Token view</a></li>",
    ]
    nav += [
        f"<li><a href='#step-{s.key}'>{_esc(s.title)}</a>{'' if s.status == 'ok' else ' (not run)'}</li>"
        for s in atlas.steps
    ]
    nav.append("<li><a href='#provenance'>Provenance</a></li>")
    role_links = " · ".join(
        f"<a href='figures/{p.name}'>{fmt.upper()}</a>" for fmt, p in files.get("00-role-map", {}).items()
    )
    js = (
        token_view_js()
        + "\n"
        + resources.files("headscope.atlas").joinpath("static/atlas.js").read_text(encoding="utf-8")
    )
    layers = (
        f"{atlas.n_layers} layers ({len(atlas.attention_layers)} with attention)"
        if atlas.layer_kinds
        else f"{atlas.n_layers} layers"
    )
    summary = (
        f"{layers} x {atlas.n_heads} heads ({atlas.n_kv_heads} KV heads per layer); "
        f"{n_role} of {total} heads have a role; {len(ran)} of {len(atlas.steps)} steps ran "
        f"({atlas.preset} preset, {atlas.provenance.get('seconds', 0):.0f} s)."
    )
    body = [
        f"<h1>Head atlas of {_esc(atlas.model)}</h1><p>{_esc(summary)}</p><nav><ol>{''.join(nav)}</ol></nav>",
        f"<section id='role-map-section'><h2>Role map</h2><p>{ROLE_RULE}</p>"
        f"<div class='fig'>{_fig_div(role_fig, 'role-map')}</div>"
        + (f"<p class='files'>Figure files: {role_links}</p>" if role_links else "")
        + _legend(atlas, rm)
        + "</section>",
        f"<section id='head-table-section'><h2>Head table</h2>{_kinds_note(atlas)}{_head_table(atlas)}</section>",
        f"<section id='viewer'><h2>Attention viewer</h2>{_viewer(atlas)}</section>",
        f"<section id='token-view-section'><h2>Token view</h2>{_token_view(atlas)}</section>",
        *[_step_section(i, s, figures, files, docs) for i, s in enumerate(atlas.steps, 1)],
        f"<section id='provenance'><h2>Provenance</h2>{_provenance(atlas)}</section>",
    ]
    viewer_script = "<script src='attention.js'></script>" if atlas.viewer is not None else ""
    doc = (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>"
        f"<title>Head atlas of {_esc(atlas.model)}</title><style>{_CSS}{TOKEN_VIEW_CSS}</style>\n"
        f"<script src='plotly.min.js'></script>{viewer_script}\n</head><body>"
        + "\n".join(body)
        + f"<footer>headscope {_esc(__version__)} · opens offline: plotly.min.js, attention.js, figures/ and docs/ "
        "sit beside this page; keep the folder together.</footer>"
        f"<script>{js}</script></body></html>\n"
    )
    return atomic_write(out_dir / "report.html", lambda p: p.write_text(doc, encoding="utf-8"))
