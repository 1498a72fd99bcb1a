"""Falcon (rotary MQA, and ALiBi): attention computed inline; Falcon-ALiBi adds its bias twice."""

from __future__ import annotations

import math

from ..capture.blocked import attention_forward
from ..models.family import Family, mirrors, register_family
from ._bias import alibi_rows


@mirrors("transformers.models.falcon.modeling_falcon:FalconAttention.forward", "5.24.0", "e154487989606dcd")
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
        bias = alibi_rows(alibi, b, h, module.inv_norm_factor + 1 / math.sqrt(module.config.hidden_size // h))
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.inv_norm_factor,
                             score_bias=bias)
    return module.dense(z.reshape(b, T, h * d)), None


def refuse(config) -> str | None:
    """Falcon-40B/180B-style configs (`new_decoder_architecture=True`) cannot be bridged by TransformerLens 4.3."""
    if not getattr(config, "new_decoder_architecture", False):
        return None
    return ("Falcon with new_decoder_architecture=True (Falcon-40B/180B, Falcon2 style) is not supported: its fused "
            "query_key_value interleaves the heads per KV group ([q.. of group 0, k0, v0, q.. of group 1, k1, v1, "
            "...]), while TransformerLens 4.3's Falcon adapter splits it as [all q | all k | all v] and, when "
            "multi_query is set (as in the released configs), with one KV head instead of num_kv_heads. The bridge "
            "would either fail to build or compute attention from the wrong weight rows. Fix: analyse a Falcon with "
            "new_decoder_architecture=False (Falcon-7B style), or wait for a TransformerLens release whose Falcon "
            "adapter splits the grouped layout")


FAMILY = register_family(Family(
    "falcon", ("falcon",),
    blocked_forwards={"FalconAttention": falcon},
    refuse=refuse,
    notes="HF computes attention inline; ALiBi configs fold the bias into the mask as well as the scores."))
