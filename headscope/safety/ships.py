"""Ships (Zhou et al. 2024, "On the Role of Attention Heads in Large Language Model Safety"):
per request, how much one head's ablation moves the next-token distribution."""

from __future__ import annotations

import numpy as np

from ..interventions.scan import scan
from ..analyzers.base import Analyzer, register, select_heads
from ._inputs import default_harmful_prompts, safety_prompt_ids


def as_prompt_ids(model, data, prompt_format: str):
    """Strings are formatted with prompt_format; token tensors / id lists are used as given."""
    if data is None:
        data = default_harmful_prompts()
    if isinstance(data, str) or (isinstance(data, (list, tuple)) and data and all(isinstance(p, str) for p in data)):
        return safety_prompt_ids(model, data, prompt_format), (list(data) if not isinstance(data, str) else [data])
    return data, None


@register
class Ships(Analyzer):
    """Ships(q, h) = KL( p(q; θ) || p(q; θ with head h ablated) ), p = the next-token distribution
    at the last prompt position, h ablated by Undifferentiated Attention (queries × ε, ε = 1e-5).

    All 270 single-head ablations come from one exact batched `scan()`. `scores_` is
    [prompt, layer, head]; `heads_` the top_k heads by the mean over prompts; `top_head_per_prompt_`
    the query-level top head of each request (the paper ablates each query's own top heads).

    Example:
        >>> from headscope.testing import planted_model, repeated_random_tokens
        >>> model, truth = planted_model()
        >>> ships = Ships(top_k=2).fit(model, repeated_random_tokens(model, 12, batch=2))
        >>> sorted(ships.heads_) == sorted([truth.previous_token, truth.induction])
        True
    """

    name = "ships"
    description = "Safety heads per request: KL of the last-position next-token distribution, one head ablated."

    def __init__(self, epsilon: float = 1e-5, prompt_format: str = "chat", top_k: int = 10, heads=None,
                 batch_size: int = 8):
        self.epsilon = epsilon
        self.prompt_format = prompt_format
        self.top_k = top_k
        self.heads = heads
        self.batch_size = batch_size

    def fit(self, model, data=None) -> "Ships":
        """data: harmful requests (strings, formatted with prompt_format) or token ids; None = the
        held-out harmful prompts written for headscope."""
        ids, prompts = as_prompt_ids(model, data, self.prompt_format)
        scores = scan(model, ids, "uniform_attention", "kl_last", heads=self.heads, batch_size=self.batch_size,
                      epsilon=self.epsilon)
        scores.prompts = prompts
        self.scores_ = self._own(scores, name="ships", description="KL(base || head ablated), last position")
        self.heads_ = select_heads(self.scores_, top_k=self.top_k)
        flat = np.where(np.isnan(scores.values), -np.inf, scores.values).reshape(len(scores.values), -1)
        n_heads = scores.values.shape[-1]
        self.top_head_per_prompt_ = [(int(i) // n_heads, int(i) % n_heads) for i in flat.argmax(-1)]
        return self

    def plot(self, **kw):
        self._check_fitted()
        return self.scores_.mean_over_prompts().plot(**kw)
