"""The atlas page in a real browser (headless Chromium through Playwright): no console errors, every
figure drawn, the head table sorts and filters, the viewer follows the chosen head, every link resolves."""

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from headscope.atlas import build_atlas
from headscope.testing import planted_model
from headscope.testing.browser import open_page, rendered_figures


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model, truth = planted_model()
    out = tmp_path_factory.mktemp("atlas-browser")
    page = build_atlas(model, out, static=True, progress=False)  # static: the PNG/SVG links exist too
    return page, truth


def _local_target(page_path: Path, href: str) -> Path | None:
    url = urlparse(href)
    if url.scheme in ("http", "https", "data", "javascript", "mailto"):
        return None
    return (page_path.parent / unquote(url.path)).resolve() if url.path else None


def test_page_renders_without_errors_and_every_figure_is_drawn(report):
    path, _ = report
    with open_page(path) as (page, problems):
        figures = rendered_figures(page)
        page.screenshot(path=str(path.parent / "top.png"))
    assert problems == []
    n_divs = path.read_text().count('class="plotly-graph-div"')
    assert len(figures) == n_divs + 1 >= 10  # + the viewer, drawn by the page's own script
    for fig in figures:
        assert fig["width"] > 100 and fig["height"] > 100 and fig["traces"] >= 1, fig
        assert fig["painted"] > 0 or fig["paths"] > 0, f"blank figure: {fig}"
    role_map = next(f for f in figures if f["id"] == "role-map")
    assert role_map["colours"] >= 4  # induction, previous-token, sink, local, no clear role, ...


def test_head_table_sorts_and_filters(report):
    path, truth = report
    with open_page(path) as (page, problems):
        headers = page.locator("#head-table thead tr.names th")
        names = [n.replace("\u200b", "") for n in headers.all_inner_texts()]
        col = names.index("induction_score")
        headers.nth(col).click()  # first click on a score: largest first
        assert headers.nth(col).get_attribute("aria-sort") == "descending"
        values = [
            float(v)
            for v in page.locator(f"#head-table tbody tr td:nth-child({col + 1})").evaluate_all(
                "cells => cells.map(c => c.dataset.v)"
            )
            if v != ""
        ]
        assert values == sorted(values, reverse=True) and len(values) > 1
        top = page.locator("#head-table tbody tr").first.locator("td").first.inner_text()
        assert top == f"L{truth.induction[0]}H{truth.induction[1]}"
        headers.nth(col).click()  # second click: smallest first
        assert headers.nth(col).get_attribute("aria-sort") == "ascending"
        values = [
            float(v)
            for v in page.locator(f"#head-table tbody tr td:nth-child({col + 1})").evaluate_all(
                "cells => cells.map(c => c.dataset.v)"
            )
            if v != ""
        ]
        assert values == sorted(values)
        page.select_option("#role-filter", "previous-token")
        visible = page.locator("#head-table tbody tr:not([hidden])")
        assert visible.count() >= 1
        assert f"L{truth.previous_token[0]}H{truth.previous_token[1]}" in visible.all_inner_texts()[0]
        assert page.locator("#head-count").inner_text().startswith(f"{visible.count()} of ")
        page.select_option("#role-filter", "")
        page.locator("#head-filter").press_sequentially("L1H")  # typed, no Enter: the rows narrow as one types
        assert page.locator("#head-table tbody tr:not([hidden])").count() == 4
        page.locator("#head-filter").fill("")
        page.select_option("#layer-filter", "0")
        shown = page.locator("#head-table tbody tr:not([hidden]) td:first-child").all_inner_texts()
        assert len(shown) == 4 and all(t.startswith("L0H") for t in shown)
    assert problems == []


def test_head_table_keeps_the_head_in_view_and_rows_one_line(report):
    """After sorting the far-right column (the box scrolls to it), the top row's label is still inside the
    table's box; every row is one line tall; each step's columns have a group header."""
    path, _ = report
    with open_page(path) as (page, problems):
        box = page.locator("#head-table-box")
        assert page.evaluate(
            "() => { const b = document.getElementById('head-table-box'); return b.scrollWidth > b.clientWidth; }"
        )  # the table is wider than its box
        last = page.locator("#head-table thead tr.names th").last
        last.click()
        page.evaluate("() => { const b = document.getElementById('head-table-box'); b.scrollLeft = b.scrollWidth; }")
        assert page.evaluate("() => document.getElementById('head-table-box').scrollLeft") > 100
        label = page.locator("#head-table tbody tr").first.locator("td").first
        b, lb = box.bounding_box(), label.bounding_box()
        assert b["x"] <= lb["x"] and lb["x"] + lb["width"] <= b["x"] + b["width"], (b, lb)
        assert b["y"] <= lb["y"] and lb["y"] + lb["height"] <= b["y"] + b["height"], (b, lb)
        assert label.inner_text().startswith("L")
        # the label is the topmost element at its own centre (not hidden under the scrolled cells)
        hit = page.evaluate(
            "([x, y]) => document.elementFromPoint(x, y).textContent",
            [lb["x"] + lb["width"] / 2, lb["y"] + lb["height"] / 2],
        )
        assert hit == label.inner_text()
        line = page.evaluate("() => parseFloat(getComputedStyle(document.querySelector('#head-table td')).lineHeight)")
        heights = page.locator("#head-table tbody tr").evaluate_all(
            "rs => rs.map(r => r.getBoundingClientRect().height)"
        )
        assert all(h < 1.6 * line for h in heights), (line, max(heights))
        groups = page.locator("#head-table thead tr.groups th").all_inner_texts()
        assert "Classic attention patterns" in groups and "attention-sinks" in groups
    assert problems == []


def test_viewer_follows_the_chosen_head(report):
    path, truth = report
    with open_page(path) as (page, problems):
        layer, head = truth.induction
        page.select_option("#viewer-layer", str(layer))
        page.select_option("#viewer-head", str(head))
        page.wait_for_timeout(200)
        title = page.locator("#viewer-plot .gtitle").text_content()
        assert title.startswith(f"L{layer}H{head}")
        keys = page.evaluate("() => document.getElementById('viewer-plot').layout.xaxis.ticktext")
        token_view = page.locator("#token-view .hs-tv-head").first.locator(".hs-tv-tok").all_text_contents()
    assert problems == []
    assert len(keys) > 10 and "…" not in keys and "…" not in token_view  # the default prompt is shown whole


def test_every_link_resolves(report):
    path, _ = report
    pages = [path, *sorted((path.parent / "docs").glob("*.html"))]
    assert len(pages) > 3  # the docs pages of the analyzers that ran
    for html_file in pages:
        with open_page(html_file) as (page, problems):
            hrefs = page.locator("a[href]").evaluate_all("as => as.map(a => a.getAttribute('href'))")
            srcs = page.locator("img[src], script[src]").evaluate_all("es => es.map(e => e.getAttribute('src'))")
            ids = set(page.locator("[id]").evaluate_all("es => es.map(e => e.id)"))
        assert problems == [], (html_file, problems)
        for href in hrefs + srcs:
            if href.startswith("#"):
                assert href[1:] in ids, (html_file.name, href)
                continue
            target = _local_target(html_file, href)
            assert target is None or target.is_file(), (html_file.name, href)
            assert not re.match(r"https?://", href) or html_file != path, f"external link in the atlas: {href}"


def test_token_view_shows_each_roles_top_head_on_the_viewer_prompt(report):
    """The token view's boxes are the roles' strongest heads; hovering a token lights its keys by the
    viewer's numbers; typing labels changes the boxes; the file page says how to type a prompt."""
    import numpy as np

    from headscope.atlas import Atlas
    from headscope.atlas.viewer import decode

    path, truth = report
    atlas = Atlas.load(path.parent)
    pattern = decode(atlas.viewer)
    expected = [f"L{a}H{b}" for _, a, b in atlas.top_heads_by_role()]
    with open_page(path) as (page, problems):
        titles = page.locator("#token-view .hs-tv-title").all_text_contents()
        q = len(atlas.viewer["queries"]) - 1
        first = page.locator("#token-view .hs-tv-head").first
        first.locator(".hs-tv-tok").nth(q).hover()
        alphas = first.locator(".hs-tv-tok").evaluate_all(
            "ts => ts.map(t => { const m = getComputedStyle(t).backgroundColor.match(/[\\d.]+/g); "
            "return m && m.length === 4 ? parseFloat(m[3]) : (t.style.background ? 1 : 0); })"
        )
        page.fill("#token-view-heads", f"L{truth.induction[0]}H{truth.induction[1]}, L0H1")
        after = page.locator("#token-view .hs-tv-title").all_text_contents()
        note = page.locator("#viewer-static-note").inner_text()
    assert problems == []
    assert titles == expected and "induction" in [r for r, _, _ in atlas.top_heads_by_role()]
    layer, head = (int(x) for x in titles[0][1:].split("H"))
    np.testing.assert_allclose(alphas, np.minimum(pattern[layer, head, q], 1), atol=2e-3)
    assert after == [f"L{truth.induction[0]}H{truth.induction[1]}", "L0H1"]
    assert f"headscope view --report {path.parent}" in note
