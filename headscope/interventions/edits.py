"""Tensor helpers shared by several intervention kinds' edits (each kind's own math lives in its module
under `kinds/`).

An edit receives `sel`, the activations of n selected (batch row, head) pairs — [n, pos, d]
for hook_q / hook_z, [n, q, k] for hook_attn_scores / hook_pattern — plus `rows`, the slice of
query positions the spec touches, and returns the edited slice (same shape). The hook builder
(`hooks.py`) gathers the slices and scatters the result back, so the same edit serves `apply()`
(every row x the spec's heads) and `scan()` (one head per block of rows).
"""

from __future__ import annotations

import torch


def on_rows(sel: torch.Tensor, rows: slice, fn) -> torch.Tensor:
    """Apply fn to the query rows `rows` (dim 1) of sel, leave the others as they are."""
    out = sel.clone()
    out[:, rows] = fn(sel[:, rows])
    return out


def move_mass(
    pattern: torch.Tensor, sinks: torch.Tensor, receivers: torch.Tensor, keep: float, row_selected: torch.Tensor
) -> torch.Tensor:
    """Post-softmax redistribution shared by ACT and VAR.

    pattern [n, q, k]; sinks, receivers [n, k] (or broadcastable) bool; row_selected [n, q] bool.
    Sink columns keep `keep` of their mass; the freed mass (1 - keep) * sum_sinks a goes to the
    receiver columns in proportion to their current attention, so every row sum is preserved.
    A selected row whose receivers hold no mass cannot be redistributed and is left unchanged.
    """
    sinks = sinks.to(pattern.dtype)[:, None, :]  # [n, 1, k]
    recv = (receivers & ~(sinks[:, 0].bool())).to(pattern.dtype)[:, None, :]
    freed = (1.0 - keep) * (pattern * sinks).sum(-1, keepdim=True)  # [n, q, 1]
    recv_mass = (pattern * recv).sum(-1, keepdim=True)  # [n, q, 1]
    ok = row_selected[..., None] & (recv_mass > 0)
    share = torch.where(ok, freed / recv_mass.clamp_min(torch.finfo(pattern.dtype).tiny), torch.zeros_like(freed))
    edited = pattern * (1.0 - (1.0 - keep) * sinks) + pattern * recv * share
    return torch.where(ok, edited, pattern)
