"""Greedy generation with VAR (Kang et al. 2025, docs/methods.md): prefill rows after the image and every
decode query get their sink attention redistributed, as in the official code.

`VisualSink.var_interventions(p)` gives specs whose query span is (image end, None): right for a whole
sequence, but a KV-cached decode step has a query axis of length 1, which that span never selects. So the
prefill runs with the specs as given and each decode step with the same specs over all its queries (keys
are absolute positions in both). The image-centric row test still decides which rows change.

    >>> vs = VisualSink().fit(model)
    >>> tokens = var_generate(model, vs.token_ids_[0], vs.var_interventions(0), max_new_tokens=20)
"""

from __future__ import annotations

import dataclasses

from ..errors import InputError
from ..generation import greedy_generate
from ..interventions import VARRedistribution, apply
from ..interventions.hooks import build_hooks
from ..models.info import model_info


def var_generate(model, prompt_ids, specs, max_new_tokens: int = 32, stop_ids=None, *, pixel_values=None) -> list[int]:
    """Greedy continuation of `prompt_ids` with the VAR `specs` on the prompt's rows after the image
    (as given) and on every generated token's query. Returns the new token ids."""
    specs = list(specs)
    if not all(isinstance(s, VARRedistribution) for s in specs):
        raise InputError("var_generate takes VARRedistribution specs (e.g. VisualSink.var_interventions(prompt))")
    decode_specs = [dataclasses.replace(s, positions="all") for s in specs]
    decode_hooks = build_hooks(decode_specs, model_info(model)) if specs else []
    # The (start, None) spans select nothing on a length-1 decode query, so the prefill specs stay inert there.
    with apply(model, specs):
        return greedy_generate(model, prompt_ids, max_new_tokens, stop_ids, hooks=decode_hooks,
                               pixel_values=pixel_values)
