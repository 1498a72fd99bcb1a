"""GPT-J: partial rotary (every other pair of dimensions), scores in float32, parallel attention and MLP.

HF's GPT-J attention goes through transformers' AttentionInterface, but its eager function casts
query and key to float32 ("to avoid overflow issues"), which the interface's other kernels (and
headscope's) would not do in a half-precision model: headscope runs GPT-J through its own copy of the
forward, which hands the kernel float32 queries, keys and values (blocked attention, and the route
that makes `hook_attn_scores` / `hook_pattern` live: TransformerLens's bridge would report them after HF).
"""

from __future__ import annotations

import torch

from ..capture.blocked import attention_forward
from ..capture.routed import route_attention
from ..models.family import Family, mirrors, register_family


@mirrors("transformers.models.gptj.modeling_gptj:GPTJAttention.forward", "5.24.0", "0c93afc6026973a7")
def gptj(module, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb

    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, module.head_dim)
    query = module.q_proj(hidden_states).view(hidden_shape)
    key = module.k_proj(hidden_states).view(hidden_shape)
    value = module.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    sin, cos = position_embeddings
    r = module.rotary_dim
    if r is not None:  # RoPE on the first rotary_dim dimensions of each head, the rest passed through
        key = torch.cat([apply_rotary_pos_emb(key[..., :r], sin, cos), key[..., r:]], dim=-1)
        query = torch.cat([apply_rotary_pos_emb(query[..., :r], sin, cos), query[..., r:]], dim=-1)
    else:
        key, query = apply_rotary_pos_emb(key, sin, cos), apply_rotary_pos_emb(query, sin, cos)
    query, key = query.transpose(1, 2), key.transpose(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx, kwargs=kwargs)
    # GPT-J's eager attention scores in float32 whatever the model's dtype.
    z, _ = attention_forward(
        module,
        query.float(),
        key.float(),
        value.float(),
        attention_mask,
        dropout=0.0 if not module.training else module.attention_dropout,
        scaling=module.scaling,
    )
    out = module.out_proj(z.to(value.dtype).reshape(*input_shape, -1).contiguous())
    return module.resid_dropout(out), None


FAMILY = register_family(
    Family(
        "gptj",
        ("gptj",),
        blocked_forwards={"GPTJAttention": gptj},
        attention_route=route_attention,
        notes="Scores in float32 (headscope's copy of the forward); the bridge would report patterns after HF, so "
        "headscope routes attention through its own forward.",
    )
)
