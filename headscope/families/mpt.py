"""MPT: ALiBi as a [head, 1, max_seq_len] bias relative to the last key, attention computed inline."""

from __future__ import annotations

from ..capture.blocked import attention_forward
from ..models.family import Family, mirrors, register_family
from ._bias import keys_bias


@mirrors("transformers.models.mpt.modeling_mpt:MptAttention.forward", "5.24.0", "848419f674c88dd6")
def mpt(module, hidden_states, position_bias, cache=None, attention_mask=None, past_key_values=None, **kwargs):
    cache = past_key_values if cache is None else cache  # the name HF deprecates
    b, T = hidden_states.shape[:2]
    h, d = module.n_heads, module.head_dim
    mixed = module.Wqkv(hidden_states)
    if module.clip_qkv:
        mixed = mixed.clamp(min=-module.clip_qkv, max=module.clip_qkv)
    query, key, value = (x.reshape(b, T, h, d).transpose(1, 2) for x in mixed.chunk(3, dim=2))
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx, kwargs=kwargs)
    bias = None
    if position_bias is not None:
        # MPT's bias [head, 1, max_seq_len] is relative to the last key: the layer uses its last n_kv columns.
        bias = keys_bias(position_bias[None, :, :, max(0, position_bias.size(2) - key.shape[2]) :])
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.softmax_scale, score_bias=bias)
    return module.out_proj(z.reshape(b, T, h * d)), None


FAMILY = register_family(
    Family(
        "mpt",
        ("mpt",),
        blocked_forwards={"MptAttention": mpt},
        notes="HF computes attention inline with a relative ALiBi bias.",
    )
)
