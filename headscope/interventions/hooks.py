"""Realise intervention specs as hook functions: one hook per (spec, layer), vectorised over the
spec's heads in that layer (a head index tensor, no Python loop per head)."""

from __future__ import annotations

import torch

from ..capture.engine import SITES
from ..errors import InputError
from ..models.info import ModelInfo
from .specs import Intervention, ScaleOutput, StreamingWindow, UniformAttention, ZeroAblation


def query_slice(positions, decode_start: int | None) -> slice:
    if positions == "all":
        return slice(None)
    if positions == "decode":
        if decode_start is None:
            raise InputError("an intervention with positions='decode' needs decode_start (the first decode query position)")
        return slice(decode_start, None)
    return slice(positions[0], positions[1])


def _head_dim_hook(heads: torch.Tensor, rows: slice, edit):
    """Hook for sites shaped [batch, pos, head, d] (hook_q, hook_z)."""
    def hook(tensor, hook):
        out = tensor.clone()
        out[:, rows, heads] = edit(tensor[:, rows, heads])  # [batch, pos, n_sel, d]
        return out
    return hook


def _streaming_hook(heads: torch.Tensor, rows: slice, sink: int, recent: int):
    def hook(scores, hook):  # [batch, head, q, k], causal mask already added
        n_q, n_k = scores.shape[-2:]
        q = torch.arange(n_k - n_q, n_k)[:, None]  # absolute query positions (KV cache aware)
        k = torch.arange(n_k)[None, :]
        hidden = ~((k < sink) | (q - k < recent))  # [q, k]
        row_mask = torch.zeros(n_q, dtype=torch.bool)
        row_mask[rows] = True
        hidden = hidden & row_mask[:, None]
        out = scores.clone()
        sel = out[:, heads]
        out[:, heads] = sel.masked_fill(hidden, torch.finfo(scores.dtype).min)
        return out
    return hook


def build_hooks(interventions, info: ModelInfo, decode_start: int | None = None) -> list[tuple[str, object]]:
    """(hook name, fn) pairs for the specs; validates every head against the model first."""
    hooks = []
    for spec in interventions:
        if not isinstance(spec, Intervention):
            raise InputError(f"{spec!r} is not an Intervention (build one, or use Intervention.from_dict)")
        for layer, head in spec.heads:
            info.check_head(layer, head)
        rows = query_slice(spec.positions, decode_start)
        for layer in sorted({l for l, _ in spec.heads}):
            heads = torch.tensor([h for l, h in spec.heads if l == layer])
            name = SITES[spec.site].format(l=layer)
            if isinstance(spec, UniformAttention):
                fn = _head_dim_hook(heads, rows, lambda x, e=spec.epsilon: x * e)
            elif isinstance(spec, ZeroAblation):
                fn = _head_dim_hook(heads, rows, torch.zeros_like)
            elif isinstance(spec, ScaleOutput):
                fn = _head_dim_hook(heads, rows, lambda x, a=spec.alpha: x * a)
            elif isinstance(spec, StreamingWindow):
                fn = _streaming_hook(heads, rows, spec.sink, spec.recent)
            else:
                raise InputError(f"intervention kind {spec.kind!r} has no hook implementation yet")
            hooks.append((name, fn))
    return hooks


def head_gate_hooks(gates: torch.Tensor, layers) -> list[tuple[str, object]]:
    """Hooks multiplying every head's output by gates[layer, head] (Michel et al.'s head mask ξ).

    `gates` is a [n_layers, n_heads] tensor, usually ones with requires_grad, so ∂loss/∂gates is
    each head's importance. Not a serialisable spec: it exists for gradient attribution.
    """
    def make(layer):
        def hook(z, hook):  # [batch, pos, head, d_head]
            return z * gates[layer][None, None, :, None]
        return hook

    return [(SITES["z"].format(l=layer), make(layer)) for layer in layers]
