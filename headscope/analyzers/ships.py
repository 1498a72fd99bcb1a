"""Ships (Zhou et al. 2024, "On the Role of Attention Heads in Large Language Model Safety"):
per request, how much one head's ablation moves the next-token distribution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..interventions.scan import scan
from ..safety.formats import (
    TEMPLATES,
    PromptFormat,
    default_harmful_prompts,
    needs_chat_template,
    quick_harmful_prompts,
    safety_prompt_ids,
)
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, example_prompts, register, select_heads
from .params import HeadList, Interval, Options, Text


@dataclass
class Requests:
    """What the safety-head analyzers run on: token ids per request and their labels (the request
    text, or None when ids were given)."""

    ids: list
    labels: list[str] | None


def as_prompt_ids(model, data, prompt_format: str) -> Requests:
    """Strings are formatted with prompt_format; token tensors / id lists are used as given;
    None = the held-out harmful prompts written for headscope."""
    if isinstance(data, Requests):
        return data
    if data is None:
        data = default_harmful_prompts()
    if isinstance(data, str) or (isinstance(data, (list, tuple)) and data and all(isinstance(p, str) for p in data)):
        return Requests(
            safety_prompt_ids(model, data, prompt_format), list(data) if not isinstance(data, str) else [data]
        )
    return Requests(data, None)


# The two analyzers take the same parameters the same way.
REQUEST_CONSTRAINTS: dict[str, list] = {
    "epsilon": [Interval(float, 0, None, "neither")],
    "prompt_format": [Options("chat", *TEMPLATES), Text("{query}")],
    "heads": [None, HeadList()],
    "batch_size": [Interval(int, 1, None)],
}
INPUT_KIND = "requests: strings (formatted with prompt_format) or token id lists (None: the held-out harmful prompts)"


@register
class Ships(Analyzer):
    """Ships(q, h) = KL( p(q; θ) || p(q; θ with head h ablated) ), p = the next-token distribution
    at the last prompt position, h ablated by Undifferentiated Attention (queries × ε, ε = 1e-5).

    All 270 single-head ablations come from one exact batched `scan()`. `scores_` is
    [prompt, layer, head]; `heads_` the top_k heads by the mean over prompts; `top_head_per_prompt_`
    the query-level top head of each request (the paper ablates each query's own top heads).

    Example:
        >>> from headscope.testing import planted_model, induction_tokens
        >>> model, truth = planted_model()
        >>> ships = Ships(top_k=2).fit(model, induction_tokens(model, 12, batch=2))
        >>> sorted(ships.heads_) == sorted([truth.previous_token, truth.induction])
        True
    """

    name = "ships"
    input_kind = INPUT_KIND
    parameter_constraints = {**REQUEST_CONSTRAINTS, "top_k": [Interval(int, 1, None)]}
    description = "Safety heads per request: KL of the last-position next-token distribution, one head ablated."
    atlas = AtlasEntry(
        what=(
            "How much the next-token distribution after a harmful request (chat format) changes when one head "
            "is ablated (Ships: KL, undifferentiated attention). The top heads carry the refusal."
        ),
        docs="ships.md",
        data=quick_harmful_prompts,
        applies=needs_chat_template,
        columns=lambda a: {"ships_kl": a.scores_},
        roles=(
            Role(
                "safety",
                "ships_kl",
                selected=lambda a: a.heads_,
                rule="the top 10 heads by mean Ships KL (Zhou et al.'s query-level selection)",
            ),
        ),
    )

    def __init__(
        self,
        epsilon: float = 1e-5,
        prompt_format: PromptFormat | str = "chat",
        top_k: int = 10,
        heads=None,
        batch_size: int = 8,
    ):
        self.epsilon = epsilon
        self.prompt_format = prompt_format
        self.top_k = top_k
        self.heads = heads
        self.batch_size = batch_size

    def prepare_data(self, model, data=None) -> Requests:
        return as_prompt_ids(model, data, self.prompt_format)

    @classmethod
    def example_data(cls, model):
        return example_prompts(model, seq_len=6)

    def _fit(self, model, data: Requests) -> None:
        scores = scan(
            model,
            data.ids,
            "uniform_attention",
            "kl_last",
            visit=self.heads,
            batch_size=self.batch_size,
            epsilon=self.epsilon,
        )
        scores.prompts = data.labels
        self.scores_ = self._own(scores, name="ships", description="KL(base || head ablated), last position")
        self.heads_ = select_heads(self.scores_, top_k=self.top_k)
        flat = np.where(np.isnan(scores.values), -np.inf, scores.values).reshape(len(scores.values), -1)
        n_heads = scores.values.shape[-1]
        self.top_head_per_prompt_ = [(int(i) // n_heads, int(i) % n_heads) for i in flat.argmax(-1)]

    def plot(self, **kw):
        return self.scores_.mean_over_prompts().plot(**kw)
