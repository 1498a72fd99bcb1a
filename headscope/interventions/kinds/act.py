"""ACT attention calibration (Yu et al. 2024): hidden attention sinks give most of their mass back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import InputError
from ..edits import move_mass
from ..kind import Intervention


def act_hidden_sinks(pattern: torch.Tensor, threshold: float) -> torch.Tensor:
    """ACT's sink columns per head: s_j = sum_{i>=j} A[i, j] / (N - j) > threshold, first one dropped.

    pattern [n, q, k] with q == k (a full prefill map). Returns [n, k] bool. N is each row's real
    length: in a right-padded batch run with its attention mask, pad keys receive no attention,
    so N = 1 + the last column with any mass, and pad queries do not count.
    """
    n_k = pattern.shape[-1]
    cols = torch.arange(n_k)
    has_mass = pattern.sum(-2) > 0  # [n, k]
    n_real = torch.where(has_mass, cols, -1).amax(-1) + 1  # [n]
    real_query = (cols[None, :] < n_real[:, None]).to(pattern.dtype)  # [n, q]
    received = (pattern * real_query[..., None]).sum(-2) / (n_real[:, None] - cols).clamp_min(1)  # [n, k]
    sinks = (received > threshold) & (cols[None, :] < n_real[:, None])
    first = sinks.to(torch.int8).argmax(-1)  # index of the first sink (0 when there is none)
    sinks[torch.arange(len(sinks)), first] = False  # ACT keeps the first (normally BOS) sink
    return sinks


def act_calibrate(pattern: torch.Tensor, rows: slice, beta: float, threshold: float) -> torch.Tensor:
    """ACT (Yu et al. 2024): hidden-sink columns keep beta of their mass, the rest moves
    proportionally to all non-sink keys; A[0, 0] = row 0's mass afterwards: 1 as in the official code, or
    1 - the learned sink's share on a model with learned sinks (GPT-OSS), whose share ACT never moves (the
    sink is not a key)."""
    n_q, n_k = pattern.shape[-2:]
    if n_q != n_k:
        raise InputError(
            "ACT calibration needs the full prefill attention map (it does not apply to "
            "KV-cached decode steps): run it on whole sequences"
        )
    sinks = act_hidden_sinks(pattern, threshold)
    selected = torch.zeros(pattern.shape[:2], dtype=torch.bool)
    selected[:, rows] = True
    out = move_mass(pattern, sinks, torch.ones_like(sinks), beta, selected)
    out[:, 0, 0] = pattern[:, 0].sum(-1)  # row 0's whole mass: 1, or 1 - the learned sink's share
    return out


@dataclass(frozen=True)
class ACTCalibration(Intervention):
    """ACT attention calibration (Yu et al. 2024) at hook_pattern: keys whose mean received
    attention s_j exceeds `threshold` (the first such key, normally BOS, excepted) keep `beta` of
    their mass; the rest moves proportionally to the other keys. Each row keeps its sum (1, or 1 - the
    learned sink's share on GPT-OSS).

    The sink statistic is a column mean over every query row, so a KV-cached decode step (one
    query) cannot compute it: `whole_query` makes generation recompute the full sequence. It is
    the mean over the queries at or after each key, and A[0, 0] = 1 is the first query seeing only
    itself: causal attention, so ACT is refused on an encoder (`causal_only`)."""

    beta: float = 0.4
    threshold: float = 0.1
    kind: ClassVar[str] = "act"
    site: ClassVar[str] = "pattern"
    whole_query: ClassVar[bool] = True
    causal_only: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(f"ACT beta is the fraction of sink attention kept, in [0, 1]; got {self.beta}")

    def edit(self, sel, rows, ctx):
        return act_calibrate(sel, rows, self.beta, self.threshold)
