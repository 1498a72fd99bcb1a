"""The token view: several heads side by side, attention shown on the prompt's own tokens (in the style
of CircuitsVis's colored tokens). Hover a token to see, in every head, which tokens it attends to;
click it to keep it chosen. Renders offline: the JS and CSS are inlined into the HTML (no CDN).

    >>> from headscope.viz import token_view
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


def token_view_data(model, prompt, heads, *, max_tokens: int = MAX_TOKENS) -> dict:
    """The view's data: the prompt's tokens and each chosen head's whole pattern, read by
    `capture(keep_patterns=True)` (rounded to 4 decimals)."""
    import torch

    from ..capture import capture
    from ..capture.reducers import FirstTokenMass
    from ..errors import InputError
    from ..inputs.tokens import encode_to_fit, to_token_lists
    from ..models import model_info

    info = model_info(model)
    try:
        heads = [(int(layer), int(head)) for layer, head in heads]
    except (TypeError, ValueError):
        raise InputError(f"heads={heads!r}: give a list of (layer, head) pairs, e.g. heads=[(17, 3), (1, 2)]") from None
    if not heads:
        raise InputError("heads is empty: give at least one (layer, head), e.g. heads=[(0, 0)]")
    for layer, head in heads:
        info.check_head(layer, head)
    ids = encode_to_fit(model, prompt, info) if isinstance(prompt, str) else to_token_lists(model, [prompt], info)[0]
    if len(ids) > max_tokens:
        raise InputError(f"the prompt has {len(ids)} tokens; the token view shows at most max_tokens={max_tokens}. "
                         "Fix: a shorter prompt, or pass max_tokens= (the page grows with its square)")
    layers = sorted({layer for layer, _ in heads})
    res = capture(model, [ids], [FirstTokenMass()], layers=layers, keep_patterns=True, batch_size=1, progress=False)
    patterns = res.patterns[0].float()  # [len(layers), head, q, k]
    out = []
    for layer, head in heads:
        p = torch.nan_to_num(patterns[layers.index(layer), head])
        out.append({"label": f"L{layer}H{head}", "layer": layer, "head": head,
                    "values": [[round(float(v), 4) for v in row] for row in p]})
    tokens = [model.tokenizer.decode([t]) for t in ids]
    return {"tokens": tokens, "rows": list(range(len(ids))), "heads": out}


class TokenView:
    """The view of one prompt; displays itself in Jupyter (`_repr_html_`), `.html` is the fragment,
    `.save(path)` writes a whole page."""

    def __init__(self, data: dict):
        self.data = data

    @property
    def html(self) -> str:
        div = f"hs-tv-{uuid.uuid4().hex[:12]}"
        payload = json.dumps(self.data).replace("</", "<\\/")  # a token "</script>" cannot end the script
        return (f"<div class='hs-tv-root'><style>{TOKEN_VIEW_CSS}</style><div id='{div}'></div>"
                f"<script>{token_view_js()}\nwindow.headscopeTokenView(document.getElementById('{div}'), "
                f"{payload});</script></div>")

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        title = ", ".join(h["label"] for h in self.data["heads"])
        path.write_text(f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>token view: "
                        f"{html.escape(title)}</title></head><body>{self.html}</body></html>\n", encoding="utf-8")
        return path


def token_view(model, prompt, heads, *, max_tokens: int = MAX_TOKENS) -> TokenView:
    """Several heads side by side on `prompt` (text or token ids): hover a token to highlight the keys it
    attends to in each head. heads: [(layer, head), ...]. The numbers are capture(keep_patterns=True)'s."""
    return TokenView(token_view_data(model, prompt, heads, max_tokens=max_tokens))
