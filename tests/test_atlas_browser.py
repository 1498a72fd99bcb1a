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
    n_divs = path.read_text().count("class=\"plotly-graph-div\"")
    assert len(figures) == n_divs + 1 >= 10  # + the viewer, drawn by the page's own script
    for fig in figures:
        assert fig["width"] > 100 and fig["height"] > 100 and fig["traces"] >= 1, fig
        assert fig["painted"] > 0 or fig["paths"] > 0, f"blank figure: {fig}"
    role_map = next(f for f in figures if f["id"] == "role-map")
    assert role_map["colours"] >= 4  # induction, previous-token, sink, local, no clear role, ...


def test_head_table_sorts_and_filters(report):
    path, truth = report
    with open_page(path) as (page, problems):
        headers = page.locator("#head-table thead th")
        names = headers.all_inner_texts()
        col = names.index("induction_score")
        headers.nth(col).click()
        headers.nth(col).click()  # second click: descending
        assert headers.nth(col).get_attribute("aria-sort") == "descending"
        values = [float(v) for v in page.locator(f"#head-table tbody tr td:nth-child({col + 1})").evaluate_all(
            "cells => cells.map(c => c.dataset.v)") if v != ""]
        assert values == sorted(values, reverse=True) and len(values) > 1
        top = page.locator("#head-table tbody tr").first.locator("td").first.inner_text()
        assert top == f"L{truth.induction[0]}H{truth.induction[1]}"
        page.select_option("#role-filter", "previous-token")
        visible = page.locator("#head-table tbody tr:not([hidden])")
        assert visible.count() >= 1
        assert f"L{truth.previous_token[0]}H{truth.previous_token[1]}" in visible.all_inner_texts()[0]
        assert page.locator("#head-count").inner_text().startswith(f"{visible.count()} of ")
        page.select_option("#role-filter", "")
        page.fill("#head-filter", "L1H")
        assert page.locator("#head-table tbody tr:not([hidden])").count() == 4
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
    assert problems == []


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
