"""The tensor edits behind each intervention kind, as pure functions of the selected heads' slices.

Every edit receives `sel`, the activations of n selected (batch row, head) pairs — [n, pos, d]
for hook_q / hook_z, [n, q, k] for hook_attn_scores / hook_pattern — plus `rows`, the slice of
query positions the spec touches, and returns the edited slice (same shape). The hook builder
(`hooks.py`) gathers the slices and scatters the result back, so the same edit serves `apply()`
(every row x the spec's heads) and `scan()` (one head per block of rows).
"""

from __future__ import annotations

import torch

from ..errors import InputError


def on_rows(sel: torch.Tensor, rows: slice, fn) -> torch.Tensor:
    """Apply fn to the query rows `rows` (dim 1) of sel, leave the others as they are."""
    out = sel.clone()
    out[:, rows] = fn(sel[:, rows])
    return out


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


def streaming_hidden(n_q: int, n_k: int, sink: int, recent: int, rows: slice) -> torch.Tensor:
    """[q, k] bool: keys a streaming head may NOT see (key k visible iff k < sink or q - k < recent).
    Query positions are absolute (the KV cache puts the n_q queries at the end of n_k keys)."""
    q = torch.arange(n_k - n_q, n_k)[:, None]
    k = torch.arange(n_k)[None, :]
    hidden = ~((k < sink) | (q - k < recent))
    touched = torch.zeros(n_q, dtype=torch.bool)
    touched[rows] = True
    return hidden & touched[:, None]


def move_mass(pattern: torch.Tensor, sinks: torch.Tensor, receivers: torch.Tensor, keep: float,
              row_selected: torch.Tensor) -> torch.Tensor:
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
    proportionally to all non-sink keys; A[0, 0] = 1 afterwards, as in the official code."""
    n_q, n_k = pattern.shape[-2:]
    if n_q != n_k:
        raise InputError("ACT calibration needs the full prefill attention map (it does not apply to "
                         "KV-cached decode steps): run it on whole sequences")
    sinks = act_hidden_sinks(pattern, threshold)
    selected = torch.zeros(pattern.shape[:2], dtype=torch.bool)
    selected[:, rows] = True
    out = move_mass(pattern, sinks, torch.ones_like(sinks), beta, selected)
    out[:, 0, 0] = 1.0
    return out


def var_redistribute(pattern: torch.Tensor, rows: slice, sinks: tuple[int, ...], targets: tuple[int, int],
                     keep_fraction: float, min_target_mass: float, max_sink_share: float) -> torch.Tensor:
    """VAR (Kang et al. 2025): sink columns keep `keep_fraction`; the freed mass moves to the
    non-sink keys of the target span in proportion to their attention. A query row is edited
    only if it gives the target span at least `min_target_mass` and the sinks inside the span
    hold at most `max_sink_share` of that (the paper's image-centric-head test per row)."""
    n_q, n_k = pattern.shape[-2:]
    bad = [s for s in sinks if not 0 <= s < n_k]
    if bad:
        raise InputError(f"VAR sink positions {bad} are outside the sequence (length {n_k})")
    start, end = targets[0], (n_k if targets[1] is None else min(targets[1], n_k))
    sink_cols = torch.zeros(n_k, dtype=torch.bool)
    sink_cols[list(sinks)] = True
    span = torch.zeros(n_k, dtype=torch.bool)
    span[start:end] = True
    span_mass = (pattern * span).sum(-1)  # [n, q]
    sink_in_span = (pattern * (span & sink_cols)).sum(-1)
    ok = (span_mass >= min_target_mass) & (sink_in_span <= max_sink_share * span_mass)
    selected = torch.zeros(pattern.shape[:2], dtype=torch.bool)
    selected[:, rows] = True
    return move_mass(pattern, sink_cols[None].expand(len(pattern), -1), span[None], keep_fraction, selected & ok)
