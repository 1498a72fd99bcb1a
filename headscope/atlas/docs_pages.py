"""Each atlas section links to its method's docs page. The report must open offline and its links must
resolve wherever the folder is moved, so the pages are rendered into the report (report/docs/NAME.html,
with the images they show) from the repository's docs/ folder. Links from those pages to pages that are
not rendered become plain text; without a docs/ folder (headscope installed from a wheel) the sections
name the page instead of linking it."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import markdown

from ..fileio import atomic_write
from ..paths import data_dir

_CSS = (
    "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:900px;margin:2em auto;"
    "padding:0 1em;line-height:1.5;color:#222}code,pre{background:#f6f6f6}pre{padding:.6em;overflow-x:auto}"
    "table{border-collapse:collapse}th,td{border-bottom:1px solid #e5e5e5;padding:.2em .6em}img{max-width:100%}"
)
_LINK = re.compile(r'(href|src)="([^"#:]+?)(#[^"]*)?"')


def docs_dir() -> Path | None:
    """The repository's docs/ folder (next to data/), or None when headscope runs from a wheel."""
    try:
        folder = data_dir().parent / "docs"
    except Exception:  # no data/ either: certainly no docs
        return None
    return folder if folder.is_dir() else None


def render_docs(pages: list[str], out_dir: Path) -> dict[str, str]:
    """Render docs pages into out_dir/docs/; returns {page: href relative to out_dir} of those written."""
    src = docs_dir()
    if src is None:
        return {}
    wanted = [p for p in dict.fromkeys(pages) if (src / p).is_file()]
    hrefs = {p: f"docs/{Path(p).stem}.html" for p in wanted}
    for page in wanted:
        body = markdown.markdown(
            (src / page).read_text(encoding="utf-8"), extensions=["tables", "fenced_code", "toc"], output_format="html"
        )
        body = _LINK.sub(lambda m: _relink(m, src, out_dir / "docs", wanted), body)
        title = html.escape(Path(page).stem.replace("-", " "))
        doc = (
            f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<link rel='icon' href='data:,'><style>{_CSS}</style></head><body>"
            f"<p><a href='../report.html'>&larr; back to the atlas</a> · headscope docs: {html.escape(page)}</p>"
            f"{body}</body></html>\n"
        )
        _write_page(out_dir / hrefs[page], doc)
    return hrefs


def _write_page(path: Path, doc: str) -> None:
    atomic_write(path, lambda p: p.write_text(doc, encoding="utf-8"))


def _relink(m: re.Match, src: Path, dest: Path, rendered: list[str]) -> str:
    attr, target, anchor = m.group(1), m.group(2), m.group(3) or ""
    if target.endswith(".md"):
        name = Path(target).name
        if name in rendered and "/" not in target:
            return f'{attr}="{Path(name).stem}.html{anchor}"'
        return 'data-unlinked="' + html.escape(target) + '"'  # a page not in the report: keep the text only
    path = (src / target).resolve()
    if attr == "src" and path.is_file() and src in path.parents:  # an image the page shows: copy it along
        copy = dest / path.relative_to(src)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        return m.group(0)
    return 'data-unlinked="' + html.escape(target) + '"'
