"""The token view on a model: several heads' patterns on one prompt, rendered by
`headscope.viz.token_view.TokenView` (CircuitsVis-style colored tokens, offline HTML).

    >>> from headscope import token_view
    >>> token_view(model, "When Mary and John went to the store, John gave", heads=[(17, 3), (1, 2)])  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..inputs.tokens import encode_to_fit, to_token_lists
from ..models import model_info
from ..viz.token_view import MAX_TOKENS, TokenView
from .engine import capture
from .reducers import FirstTokenMass


def token_view_data(model, prompt, heads, *, max_tokens: int = MAX_TOKENS) -> dict:
    """The view's data: the prompt's tokens and each chosen head's whole pattern, read by
    `capture(keep_patterns=True)` (rounded to 4 decimals)."""
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
        raise InputError(
            f"the prompt has {len(ids)} tokens; the token view shows at most max_tokens={max_tokens}. "
            "Fix: a shorter prompt, or pass max_tokens= (the page grows with its square)"
        )
    layers = sorted({layer for layer, _ in heads})
    res = capture(model, [ids], [FirstTokenMass()], layers=layers, keep_patterns=True, batch_size=1, progress=False)
    if res.patterns is None:  # keep_patterns=True keeps them: an engine regression
        raise RuntimeError("capture(keep_patterns=True) returned no patterns")
    patterns = res.patterns[0].float()  # [len(layers), head, q, k]
    out = []
    for layer, head in heads:
        p = torch.nan_to_num(patterns[layers.index(layer), head])
        out.append(
            {
                "label": f"L{layer}H{head}",
                "layer": layer,
                "head": head,
                "values": [[round(float(v), 4) for v in row] for row in p],
            }
        )
    tokens = [model.tokenizer.decode([t]) for t in ids]
    return {"tokens": tokens, "rows": list(range(len(ids))), "heads": out}


def token_view(model, prompt, heads, *, max_tokens: int = MAX_TOKENS) -> TokenView:
    """Several heads side by side on `prompt` (text or token ids): hover a token to highlight the keys it
    attends to in each head. heads: [(layer, head), ...]. The numbers are capture(keep_patterns=True)'s."""
    return TokenView(token_view_data(model, prompt, heads, max_tokens=max_tokens))


__all__ = ["token_view", "token_view_data"]
