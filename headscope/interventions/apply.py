"""Apply interventions for the duration of a call; the user's model is never mutated."""

from __future__ import annotations

import contextlib

import torch

from ..capture.blocked import DEFAULT_BLOCK_SIZE, DEFAULT_PATTERN_BUDGET_MB, blocked_attention, resolve_attention
from ..errors import InputError
from ..models.info import model_info
from ..options import AttentionMode
from .hooks import build_hooks, check_editable, check_specs
from .prepare import prepare_references


@contextlib.contextmanager
def apply(
    model,
    interventions,
    *,
    decode_start: int | None = None,
    attention: AttentionMode = "eager",
    block_size: int | None = DEFAULT_BLOCK_SIZE,
):
    """Context manager: attach the interventions' hooks, always remove them on exit (also on error).

    Kinds with reference activations (mean and resample ablation) first run their reference prompts
    once (observe-only) to get the head outputs they substitute. `attention="blocked"` runs every
    forward inside on blocked attention (long contexts: no [head, T, T] tensor; see
    docs/long-context.md): head-output kinds and row-local score edits (uniform attention, streaming
    window) work there, redistributions (ACT, VAR) only eagerly.

    Example:
        >>> from headscope.testing import planted_model
        >>> from headscope.interventions import UniformAttention, apply
        >>> model, truth = planted_model()
        >>> with apply(model, [UniformAttention(heads=[truth.induction])]):
        ...     logits = model(torch.tensor([[1, 5, 6, 7, 5, 6, 7]]))
    """
    info = model_info(model)
    specs = check_specs(interventions, info)  # validate before any compute
    check_editable(model, specs)
    if attention not in ("eager", "blocked"):
        raise InputError(
            f"apply(attention={attention!r}): use 'eager' or 'blocked' ('auto' needs the input: "
            "forward_with decides it per call)"
        )
    if attention == "blocked":
        resolve_attention(model, "blocked", 1, 1, why_not=lambda: eager_only(specs))
    prepared = prepare_references(model, specs)
    hooks = build_hooks(specs, info, decode_start, prepared)
    if attention == "blocked":
        with blocked_attention(model, hooks, block_size=block_size):
            yield model
    else:
        with model.hooks(fwd_hooks=hooks):
            yield model


def eager_only(specs) -> list[str]:
    """Why these specs cannot run on blocked attention (empty when they can)."""
    kinds = sorted({s.kind for s in specs if not s.row_local})
    return (
        [f"intervention kind(s) {kinds} redistribute the attention pattern, which needs the whole pattern"]
        if kinds
        else []
    )


def forward_with(
    model,
    tokens,
    interventions,
    *,
    decode_start: int | None = None,
    attention: AttentionMode = "auto",
    max_pattern_mb: float = DEFAULT_PATTERN_BUDGET_MB,
    **forward_kw,
):
    """One forward pass with the interventions applied; returns the model's output (logits).

    `attention` "auto" (default) runs blocked attention when one layer's pattern of `tokens` would
    exceed `max_pattern_mb` (see `capture`), else eagerly; "eager" / "blocked" force one.

    Example:
        >>> logits = forward_with(model, tokens, [ZeroAblation(heads=[(3, 1)])], attention_mask=mask)
    """
    specs = check_specs(interventions, model_info(model))
    rows, n_tokens = tokens.shape if tokens.ndim == 2 else (1, tokens.shape[-1])
    mode: AttentionMode = (
        "blocked"
        if resolve_attention(
            model, attention, rows, n_tokens, max_pattern_mb=max_pattern_mb, why_not=lambda: eager_only(specs)
        )
        else "eager"
    )
    with torch.no_grad(), apply(model, specs, decode_start=decode_start, attention=mode):
        return model(tokens, **forward_kw)
