"""Screenshots of an atlas page for the docs: the top of the page and the role map section.

Usage: python scripts/atlas_screenshot.py headscope-report docs/figures
(writes atlas_top.png and atlas_role_map.png; needs the system Chromium, as the browser test does)
"""

import sys
from pathlib import Path

from headscope.testing.browser import open_page


def main(report: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_page(Path(report) / "report.html", width=1280, height=900) as (page, problems):
        page.screenshot(path=str(out_dir / "atlas_top.png"))
        page.locator("#role-map-section").screenshot(path=str(out_dir / "atlas_role_map.png"))
    if problems:
        raise SystemExit(f"the page reported problems: {problems}")
    print(f"wrote {out_dir / 'atlas_top.png'} and {out_dir / 'atlas_role_map.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
