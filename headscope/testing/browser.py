"""Open a headscope page in a real, headless Chromium (Playwright driving the system's Chromium, which
setup installs; Playwright cannot download its own browser here) and read what it rendered.

Used by the atlas's browser test and by `scripts/atlas_screenshot.py` (the screenshots in docs/).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..viz.export import find_browser

# What every plotly figure on the page drew: its size, the painted pixels of its heatmap images (a
# heatmap is an <image> plotly paints from a canvas), and the non-empty SVG paths of other traces.
_FIGURES_JS = """
async () => {
  const out = [];
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const box = gd.getBoundingClientRect();
    let painted = 0, colours = 0;
    const images = [...gd.querySelectorAll('.heatmaplayer image')];
    for (const im of images) {
      const img = new Image();
      img.src = im.getAttribute('href') || im.getAttribute('xlink:href');
      await img.decode();
      const c = document.createElement('canvas');
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] > 0) { painted += 1; seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); }
      }
      colours = Math.max(colours, seen.size);
    }
    const paths = [...gd.querySelectorAll('.scatterlayer path, .barlayer path, .boxlayer path, .plot path')].filter((p) => (p.getAttribute('d') || '').length > 4).length;
    out.push({id: gd.id, width: box.width, height: box.height, heatmaps: images.length, painted, colours, paths,
              traces: (gd._fullData || []).length});
  }
  return out;
}
"""


@contextlib.contextmanager
def open_page(path: str | Path, *, width: int = 1300, height: int = 1000):
    """Yield (page, problems) for a file (or an http:// address): `problems` collects console errors and warnings, uncaught exceptions and
    failed requests while the page is open."""
    from playwright.sync_api import sync_playwright  # test-only dependency (the `test` extra)

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_browser(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
            served = isinstance(path, str) and path.startswith(("http://", "https://"))
            page.goto(str(path) if served else Path(path).resolve().as_uri())
            page.wait_for_load_state("load")
            page.wait_for_timeout(300)  # plotly draws after load
            yield page, problems
        finally:
            browser.close()


def rendered_figures(page) -> list[dict]:
    """One dict per plotly figure on the page (see _FIGURES_JS)."""
    return page.evaluate(_FIGURES_JS)
