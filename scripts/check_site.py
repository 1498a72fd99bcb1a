"""Open every page of the built docs site (site/) in headless Chromium and fail on anything it could
not load: a failed request (a missing file, a CDN the offline site must not need), a console error or
an uncaught script error, and an image that did not decode; and a notebook page without a figure (the
notebooks are executed during the build: their plots must be in the page). `make docs` runs it.

Usage: python scripts/check_site.py [site]
"""

import sys
from pathlib import Path

from headscope.testing.browser import open_page

_BROKEN_IMAGES = "() => [...document.images].filter(i => i.complete && i.naturalWidth === 0).map(i => i.src)"
_FIGURES = "() => [...document.querySelectorAll('.jp-OutputArea img')].filter(i => i.naturalWidth > 0).length"


def main(site: str = "site") -> None:
    pages = sorted(p for p in Path(site).rglob("*.html") if p.name != "404.html")
    bad = []
    for page_path in pages:
        with open_page(page_path) as (page, problems):
            problems += [f"image did not load: {src}" for src in page.evaluate(_BROKEN_IMAGES)]
            if page_path.parent.name == "notebooks" and page.evaluate(_FIGURES) == 0:
                problems.append("an executed notebook with no figure in its outputs")
        bad += [f"{page_path}: {p}" for p in problems]
    if bad:
        raise SystemExit("the docs site has problems:\n" + "\n".join(bad))
    print(f"check_site: {len(pages)} pages opened offline, no failed request, error or broken image")


if __name__ == "__main__":
    main(*sys.argv[1:2])
