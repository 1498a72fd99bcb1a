"""Uniform attention ("undifferentiated attention"): the head attends evenly over the keys it may see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..kind import Intervention


def scale_visible_scores(sel: torch.Tensor, rows: slice, epsilon: float) -> torch.Tensor:
    """Uniform attention on attention scores [n, q, k]: visible scores x epsilon, masked ones kept.

    A key is masked when its score is -inf or at the dtype's most negative value (how the eager
    attention of HF and TransformerLens write causal, sliding-window and padding masks), so
    epsilon = 0 gives exactly uniform attention over the keys the head may see.
    """
    out = sel.clone()
    scores = sel[:, rows]
    visible = scores > torch.finfo(scores.dtype).min / 2
    out[:, rows] = torch.where(visible, scores * epsilon, scores)
    return out


@dataclass(frozen=True)
class UniformAttention(Intervention):
    """Make the head attend (almost) uniformly over the keys it may see.

    Realised on the head's attention scores as the model computes them (after RoPE, any q/k norm,
    soft-capping and position bias such as ALiBi, with its causal / sliding-window / padding mask):
    every visible score is multiplied by `epsilon`, masked keys stay masked. epsilon = 0 gives
    exactly uniform attention over the visible keys on every architecture (the head outputs the
    mean of V over them); Ships' epsilon = 1e-5 is "scale the query by epsilon", which on a model
    without q-norm or score bias is the same thing (scores are linear in q) and elsewhere is the
    faithful generalisation (scaling hook_q would be undone by a q-norm and leave ALiBi's bias).
    A learned sink logit (GPT-OSS) is the head's parameter, not a key's score: it is left as it is and
    keeps competing with the n equal scores, taking exp(s) / (exp(s) + n) of the row.
    """

    epsilon: float = 0.0
    kind: ClassVar[str] = "uniform_attention"
    site: ClassVar[str] = "attn_scores"

    def edit(self, sel, rows, ctx):
        return scale_visible_scores(sel, rows, self.epsilon)
