"""Screenshots of an atlas page for the docs: the top of the page, the role map, the head table (sorted
by its induction column, largest first), the attention viewer and the token view on an induction head.

Usage: python scripts/atlas_screenshot.py headscope-report docs/figures
(writes atlas_top.png, atlas_role_map.png, atlas_table.png, atlas_viewer.png and atlas_token_view.png;
needs the system Chromium, as the browser test does)
"""

import sys
from pathlib import Path

from headscope.atlas import Atlas
from headscope.testing.browser import open_page

SHOTS = ("atlas_top", "atlas_role_map", "atlas_table", "atlas_viewer", "atlas_token_view")


def _induction_head(report: Path) -> tuple[int, int]:
    """The strongest induction head, else the first role's top head, else L0H0."""
    top = Atlas.load(report).top_heads_by_role()
    return next(((a, b) for r, a, b in top if r == "induction"), top[0][1:] if top else (0, 0))


def main(report: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    layer, head = _induction_head(Path(report))
    with open_page(Path(report) / "report.html", width=1280, height=900) as (page, problems):
        page.screenshot(path=str(out_dir / "atlas_top.png"))
        page.locator("#role-map-section").screenshot(path=str(out_dir / "atlas_role_map.png"))
        names = [n.replace("\u200b", "") for n in page.locator("#head-table tr.names th").all_inner_texts()]
        if "induction_score" in names:
            page.locator("#head-table tr.names th").nth(names.index("induction_score")).click()
        page.evaluate(
            "() => { const b = document.getElementById('head-table-box'); b.style.maxHeight = '22em'; "
            "b.scrollLeft = 420; }"
        )  # a sideways scroll: the head columns stay
        page.locator("#head-table-section").screenshot(path=str(out_dir / "atlas_table.png"))
        page.select_option("#viewer-layer", str(layer))
        page.select_option("#viewer-head", str(head))
        page.wait_for_timeout(300)
        page.locator("#viewer").screenshot(path=str(out_dir / "atlas_viewer.png"))
        toks = page.locator("#token-view .hs-tv-head").first.locator(".hs-tv-tok")
        texts = toks.all_text_contents()
        # hover a token of a repeated phrase's second copy (the default prompt's second " spiral"): an
        # induction head lights the token after its first copy
        second = [
            i
            for i in range(2, len(texts))
            if (texts[i - 1], texts[i]) in {(texts[j - 1], texts[j]) for j in range(1, i - 1)}
        ]
        spiral = [i for i, t in enumerate(texts) if t == " spiral"]
        if len(spiral) > 1 or second:
            toks.nth(spiral[1] if len(spiral) > 1 else second[0]).hover()
        page.locator("#token-view-section").screenshot(path=str(out_dir / "atlas_token_view.png"))
    if problems:
        raise SystemExit(f"the page reported problems: {problems}")
    print("wrote " + ", ".join(str(out_dir / f"{s}.png") for s in SHOTS))


if __name__ == "__main__":
    main(*sys.argv[1:3])
