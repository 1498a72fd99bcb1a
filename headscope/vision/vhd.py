"""VHD at every generation step: generate with the image, then measure each head's divergence at the
query position of each step (teacher-forced on the generated text), as He et al.'s token-level VHD.

Step t's token is predicted at position P - 1 + t (P = prompt length), so those are the measured
positions; `token_vhd_positions_` of the returned analyzer then holds T-VHD per generated token.

    >>> hd, tokens = generation_vhd(model, prompt, max_new_tokens=16)
    >>> hd.plot_tokens(); hd.token_vhd_positions_.to_dataframe()
"""

from __future__ import annotations

from ..analyzers.head_divergence import HeadDivergence
from ..errors import InputError
from ..generation import greedy_generate
from ..inputs.images import ImagePrompt


def generation_vhd(model, prompt: ImagePrompt, max_new_tokens: int = 32, stop_ids=None, **params):
    """(fitted HeadDivergence, generated token ids). `params` go to HeadDivergence (not `positions`)."""
    if not isinstance(prompt, ImagePrompt):
        raise InputError("generation_vhd needs an ImagePrompt (ids with the image tokens + pixel_values)")
    if "positions" in params:
        raise InputError("generation_vhd measures every generation step; drop positions= (or use HeadDivergence)")
    tokens = greedy_generate(model, list(prompt.ids), max_new_tokens, stop_ids, pixel_values=prompt.pixel_values)
    n = len(prompt.ids)
    # The last generated token is never fed back (nothing is predicted from it), so it is not appended.
    full = ImagePrompt((*prompt.ids, *tokens[:-1]), prompt.pixel_values)
    positions = list(range(n - 1, n - 1 + len(tokens)))
    hd = HeadDivergence(positions=positions, **params).fit(model, [full])
    return hd, tokens
