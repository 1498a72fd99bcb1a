"""Blocked attention for the families whose HF attention computes attention inline (transformers 5.24):
GPT-Neo, Falcon (rotary and ALiBi), BLOOM and MPT.

Their attention modules never call `AttentionInterface`, so `blocked.py` cannot reach them through
the config switch. Each forward here is the HF module's own forward, line for line up to the
attention itself (same projections, head split, RoPE, cache update, output projection), with the
eager `softmax(q k^T * scale + bias + mask) v` handed to `blocked.attention_forward` instead: the
family's additive bias (ALiBi) as `score_bias`, evaluated a block of rows at a time, and GPT-Neo's
local window as `window`. The mask is the model's own (`RowMask`). Each mirrors the arithmetic of
the eager path the TransformerLens bridge runs, including its quirks (Falcon-ALiBi adds the bias
twice, through the scores and through the mask), and `blocked_support` checks every model against
that eager forward at run time before any blocked result is returned.

When transformers changes one of these classes the run-time check refuses the family with the
difference it measured; update the forward here to the new code.
"""

from __future__ import annotations

import math

import torch

from .blocked import attention_forward, register_adapter


def _keys_bias(per_key: torch.Tensor):
    """score_bias for a bias that depends on the key only ([..., 1, keys]): every block's first n_keys."""
    return lambda start, stop, n_keys: per_key[..., :n_keys]


def _alibi_rows(alibi: torch.Tensor, batch: int, heads: int, scale: float):
    """score_bias for an ALiBi tensor HF hands the layer ([batch * heads, 1, keys] or [batch, heads, 1, keys])."""
    return _keys_bias(alibi.reshape(batch, heads, 1, -1) * scale)


@register_adapter("GPTNeoAttention")
def gpt_neo_wrapper(module, hidden_states, layer_past=None, attention_mask=None, use_cache=False,
                    output_attentions=False, **kwargs):
    return gpt_neo(module.attention, hidden_states, attention_mask=attention_mask, layer_past=layer_past)


@register_adapter("GPTNeoSelfAttention")
def gpt_neo(module, hidden_states, attention_mask=None, layer_past=None, use_cache=False, output_attentions=False,
            **kwargs):
    b, T, _ = hidden_states.shape
    h, d = module.num_heads, module.head_dim
    query, key, value = (proj(hidden_states).view(b, T, h, d).transpose(1, 2)
                         for proj in (module.q_proj, module.k_proj, module.v_proj))
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_id)
    # GPT-Neo scores in float32 and does not scale them; a local layer sees the last window_size keys.
    window = module.config.window_size if module.attention_type == "local" else None
    z, _ = attention_forward(module, query.float(), key.float(), value.float(), attention_mask, scaling=1.0,
                             window=window)
    out = module.out_proj(z.to(value.dtype).reshape(b, T, h * d))
    return module.resid_dropout(out), None


@register_adapter("FalconAttention")
def falcon(module, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None, use_cache=False,
           output_attentions=False, position_embeddings=None, **kwargs):
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    fused_qkv = module.query_key_value(hidden_states)
    num_kv_heads = module.num_heads if module.new_decoder_architecture else module.num_kv_heads
    query, key, value = module._split_heads(fused_qkv)
    b, T, _, _ = query.shape
    h, d = module.num_heads, module.head_dim
    query = query.transpose(1, 2).reshape(b, h, T, d)
    key = key.transpose(1, 2).reshape(b, num_kv_heads, T, d)
    value = value.transpose(1, 2).reshape(b, num_kv_heads, T, d)
    if alibi is None:
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    bias = None
    if alibi is not None:
        # Eager Falcon-ALiBi: (q k^T + alibi) / sqrt(d) + mask, and the model folded alibi / sqrt(d) into
        # that mask too (FalconModel.forward), so the bias counts twice.
        bias = _alibi_rows(alibi, b, h, module.inv_norm_factor + 1 / math.sqrt(module.config.hidden_size // h))
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.inv_norm_factor,
                             score_bias=bias)
    return module.dense(z.reshape(b, T, h * d)), None


@register_adapter("BloomAttention")
def bloom(module, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
          output_attentions=False, **kwargs):
    from torch.nn import functional as F
    from transformers.models.bloom.modeling_bloom import dropout_add

    b, T, _ = hidden_states.shape
    h, d = module.num_heads, module.head_dim
    query, key, value = module._reshape(module.query_key_value(hidden_states))
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.inv_norm_factor,
                             score_bias=_alibi_rows(alibi, b, h, module.beta))
    context = z.reshape(b, T, h * d)
    if module.pretraining_tp > 1 and module.slow_but_exact:
        slices = module.hidden_size / module.pretraining_tp
        out = torch.zeros_like(context)
        for i in range(module.pretraining_tp):
            cols = slice(int(i * slices), int((i + 1) * slices))
            out = out + F.linear(context[:, :, cols], module.dense.weight[:, cols])
    else:
        out = module.dense(context)
    return dropout_add(out, residual, module.hidden_dropout, module.training), None


@register_adapter("MptAttention")
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
        bias = _keys_bias(position_bias[None, :, :, max(0, position_bias.size(2) - key.shape[2]):])
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.softmax_scale, score_bias=bias)
    return module.out_proj(z.reshape(b, T, h * d)), None
