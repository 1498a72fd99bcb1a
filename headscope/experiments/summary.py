"""The end of a run: figures of every unit (one export session) and summary.md / summary.json."""

from __future__ import annotations

import datetime as _dt

from ..fileio import jsonable
from ..viz.export import export_figures


def _fmt(x) -> str:
    return "—" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _md_table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


def write_summary(store, spec, info, finished: dict, run: dict) -> None:
    formats = spec.figures
    files = {}
    if formats:
        # One call, so PNG/SVG of all units share one Chromium start-up; without a browser it warns
        # once and still writes the HTML.
        files = export_figures([(f["figure"], name) for name, f in finished.items()], store.path("figures"), formats)
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    doc = {"spec": spec.name, "spec_hash": spec.hash, "model": info.name, "finished": now, "run": run, "units": {}}
    lines = [
        f"# {spec.name}",
        "",
        *([spec.description.strip(), ""] if spec.description.strip() else []),
        f"Model: `{info.name}` ({info.n_layers} layers x {info.n_heads} heads, {info.n_kv_heads} KV heads). "
        f"Finished {now}. This run computed {run['computed_now']} of {run['items']} units of work "
        f"({run['reused']} reused from an earlier run) in {run['seconds']} s.",
        "",
    ]
    for unit in spec.units:
        s = finished[unit.name]["summary"]
        figs = {fmt: str(p.relative_to(store.root)) for fmt, p in files.get(unit.name, {}).items()}
        doc["units"][unit.name] = {
            **s,
            "results": [f"results/{unit.name}.parquet", f"results/{unit.name}.json"],
            "figures": figs,
        }
        data = f", data `{unit.data.name}`" if unit.data else ""
        shown = ", ".join(f"`{p}`" for p in figs.values()) or "none"
        lines += [
            f"## {unit.name}",
            "",
            f"{unit.type} `{unit.target}`{data}. Results: `results/{unit.name}.parquet`; figure: {shown}",
            "",
        ]
        if unit.type == "evaluate":
            lines += _md_table(s["table"], ["condition", "k", "mean", "min", "max", "count"])
        else:
            lines.append(f"Top heads ({s['better']} scores first, mean over prompts):")
            lines.append("")
            lines += _md_table(s["top"], ["label", "score"])
            if s.get("selected_heads") is not None:
                shown = ", ".join(s["selected_heads"][:20]) + (" ..." if len(s["selected_heads"]) > 20 else "")
                lines += ["", f"Selected by the analyzer ({len(s['selected_heads'])}): {shown or 'none'}"]
        lines.append("")
    store.write_json("summary.json", jsonable(doc))
    store.write_text("summary.md", "\n".join(lines))
