"""The token view: several heads side by side, attention shown on the prompt's own tokens (in the style
of CircuitsVis's colored tokens). Hover a token to see, in every head, which tokens it attends to;
click it to keep it chosen. Renders offline: the JS and CSS are inlined into the HTML (no CDN).

    >>> from headscope import token_view          # headscope.capture.token_view: reads the model
    >>> token_view(model, "When Mary and John went to the store, John gave", heads=[(17, 3), (1, 2)])  # doctest: +SKIP

In Jupyter the returned object displays itself; `.save("view.html")` writes a page that opens alone.
The atlas page shows the same view on its viewer prompt (headscope.atlas.page).
"""

from __future__ import annotations

import html
import json
import uuid
from importlib import resources
from pathlib import Path

from ..fileio import atomic_write

MAX_TOKENS = 256  # a [T, T] pattern per head goes into the HTML: ~6 characters a cell

TOKEN_VIEW_CSS = """
.hs-tv{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;font-size:14px;color:#222}
.hs-tv-note{font-size:.85em;color:#666;margin:.2em 0 .5em}
.hs-tv-grid{display:flex;flex-wrap:wrap;gap:.8em}
.hs-tv-head{flex:1 1 16em;max-width:28em;min-width:0;overflow:hidden;border:1px solid #ddd;border-radius:4px;padding:.3em .5em}
.hs-tv-title{font-weight:600;font-size:.9em;margin-bottom:.2em}
.hs-tv-text{line-height:1.9;white-space:normal;overflow-wrap:anywhere}
.hs-tv-tok{white-space:pre-wrap;border-radius:2px;padding:1px 0;cursor:default}
.hs-tv-tok.hs-tv-query{cursor:pointer}
.hs-tv-tok.hs-tv-current{outline:2px solid #1f77b4;outline-offset:0}
"""


def token_view_js() -> str:
    """The view's script (defines window.headscopeTokenView(container, data))."""
    return resources.files("headscope.viz").joinpath("static/token_view.js").read_text(encoding="utf-8")


class TokenView:
    """The view of one prompt; displays itself in Jupyter (`_repr_html_`), `.html` is the fragment,
    `.save(path)` writes a whole page."""

    def __init__(self, data: dict):
        self.data = data

    @property
    def html(self) -> str:
        div = f"hs-tv-{uuid.uuid4().hex[:12]}"
        payload = json.dumps(self.data).replace("</", "<\\/")  # a token "</script>" cannot end the script
        return (
            f"<div class='hs-tv-root'><style>{TOKEN_VIEW_CSS}</style><div id='{div}'></div>"
            f"<script>{token_view_js()}\nwindow.headscopeTokenView(document.getElementById('{div}'), "
            f"{payload});</script></div>"
        )

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        title = ", ".join(h["label"] for h in self.data["heads"])
        page = (
            f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>token view: "
            f"{html.escape(title)}</title></head><body>{self.html}</body></html>\n"
        )
        return atomic_write(path, lambda p: p.write_text(page, encoding="utf-8"))
