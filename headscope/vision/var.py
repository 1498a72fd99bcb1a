"""Greedy generation with VAR (Kang et al. 2025, docs/methods.md): prefill rows after the image and every
decode query get their sink attention redistributed, as in the official code.

`VisualSink.var_interventions(p)` gives specs whose query span is (image end, None). The generation
driver reads spans as absolute positions in prompt + generated tokens, so that span covers the prompt's
rows after the image in the prefill and every decode query (keys are absolute positions in both): this
is `greedy_generate(model, ids, n, interventions=specs)`, which `var_generate` calls after checking the
specs are VAR's. The image-centric row test still decides which rows change.

    >>> vs = VisualSink().fit(model)
    >>> tokens = var_generate(model, vs.token_ids_[0], vs.var_interventions(0), max_new_tokens=20)
"""

from __future__ import annotations

from ..errors import InputError
from ..generation import greedy_generate
from ..interventions import VARRedistribution


def var_generate(model, prompt_ids, specs, max_new_tokens: int = 32, stop_ids=None, *, pixel_values=None) -> list[int]:
    """Greedy continuation of `prompt_ids` with the VAR `specs` on the prompt's rows after the image
    (their span) and on every generated token's query. Returns the new token ids."""
    specs = list(specs)
    if not all(isinstance(s, VARRedistribution) for s in specs):
        raise InputError("var_generate takes VARRedistribution specs (e.g. VisualSink.var_interventions(prompt))")
    return greedy_generate(model, prompt_ids, max_new_tokens, stop_ids, interventions=specs, pixel_values=pixel_values)
