"""Figure export (html always; png/svg through kaleido + the system Chromium) and the one-file HTML report."""

import re
import warnings

import numpy as np
import pytest

from headscope.results import HeadScores
from headscope.viz import ReportSection, export_figure, export_figures, find_browser, top_heads_bar, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# First line of the bundled plotly.min.js; counting it counts inlined copies of the library.
PLOTLY_BANNER = "plotly.js v"


def _scores():
    rng = np.random.default_rng(0)
    return HeadScores(
        rng.normal(size=(4, 8)),
        name="induction",
        n_kv_heads=2,
        model="tiny",
        params={"seq_len": 16},
        prompts=["p0"],
        description="Prefix matching on repeats.",
    )


@pytest.fixture
def real_browser(monkeypatch):
    """The system Chromium that setup installs; its absence is a setup bug, so fail, never skip."""
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    try:
        return find_browser()
    except Exception as e:
        pytest.fail(f"no Chromium for kaleido ({e}); setup must `apt-get install chromium`")


def _no_external_scripts(html: str) -> bool:
    return not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html, re.I)


def test_export_html_only_needs_no_browser(tmp_path):
    out = export_figure(_scores().plot(), tmp_path, "heat", formats=("html",))
    assert set(out) == {"html"}
    html = out["html"].read_text()
    # Offline: plotly.js is one shared local file beside the figures, loaded by a relative path.
    assert 'src="plotly.min.js"' in html and PLOTLY_BANNER not in html and _no_external_scripts(html)
    assert (tmp_path / "plotly.min.js").read_text().count(PLOTLY_BANNER) == 1
    export_figure(_scores().plot(), tmp_path, "heat2", formats=("html",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.html", "heat2.html", "plotly.min.js"]


def test_export_inline_html_works_alone(tmp_path):
    out = export_figure(_scores().plot(), tmp_path, "heat", formats=("html",), plotly_js="inline")
    assert out["html"].read_text().count(PLOTLY_BANNER) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.html"]


def test_bad_browser_path_warns_once_and_still_writes_html(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    with pytest.warns(RuntimeWarning, match="BROWSER_PATH") as rec:
        out = export_figure(_scores().plot(), tmp_path / "figs", "heat")
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert "apt-get install chromium" in str(rec[0].message)
    assert set(out) == {"html"} and out["html"].is_file()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["heat.html", "plotly.min.js"]  # no temp/png


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="bmp"):
        export_figure(_scores().plot(), tmp_path, "heat", formats=("html", "bmp"))


def test_real_chromium_writes_png_and_svg_in_one_batch(tmp_path, real_browser):
    s = _scores()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # any export failure must fail the test
        out = export_figures([(s.plot(), "heat"), (top_heads_bar(s, k=5), "top")], tmp_path)
    for stem in ("heat", "top"):
        assert set(out[stem]) == {"html", "png", "svg"}, out
        png = out[stem]["png"].read_bytes()
        assert png[:8] == PNG_MAGIC and len(png) > 1000
        assert out[stem]["svg"].read_text().lstrip().startswith("<svg")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp files cleaned up


def test_report_loads_plotly_once_from_its_folder(tmp_path):
    s = _scores()
    sections = [
        ReportSection.from_scores(s, k=5),
        ReportSection("Top heads", "Bar chart <of> the best heads.", top_heads_bar(s), None),
    ]
    path = write_report(
        sections,
        tmp_path,
        "My <report>",
        {"model": "tiny", "prompts": ["p0", "p1"], "params": {"seq_len": 16}, "seed": 3},
    )
    assert path == tmp_path / "report.html"
    html = path.read_text()
    assert PLOTLY_BANNER not in html and "<script src='plotly.min.js'>" in html  # one shared local copy
    assert (tmp_path / "plotly.min.js").read_text().count(PLOTLY_BANNER) == 1
    assert _no_external_scripts(html)
    assert html.count("Plotly.newPlot") == 2
    assert "My &lt;report&gt;" in html and "Bar chart &lt;of&gt; the best heads." in html
    assert "Prefix matching on repeats." in html and "seq_len" in html and "seed" in html
    assert "2 prompt(s)" in html and "headscope version" in html
    assert html.count("<table") == 2  # metadata + one top-k table (second section has none)
    top_label = s.top(1)["label"].item()
    assert top_label in html
    assert not (tmp_path / "figures").exists()  # static=False writes only the report


def test_report_static_without_browser_warns_but_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "missing"))
    with pytest.warns(RuntimeWarning, match="BROWSER_PATH"):
        path = write_report([ReportSection.from_scores(_scores())], tmp_path, "r", {}, static=True)
    assert path.is_file()
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["01-induction.html"]


def test_report_static_with_real_chromium(tmp_path, real_browser):
    path = write_report([ReportSection.from_scores(_scores())], tmp_path, "r", {"model": "tiny"}, static=True)
    figs = tmp_path / "figures"
    assert sorted(p.name for p in figs.iterdir()) == ["01-induction.html", "01-induction.png", "01-induction.svg"]
    assert (figs / "01-induction.png").read_bytes()[:8] == PNG_MAGIC
    assert "figures/01-induction.png" in path.read_text()
