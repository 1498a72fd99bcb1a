"""Falcon (rotary MQA, ALiBi, and the new decoder architecture's grouped QKV): attention computed inline;
Falcon-ALiBi adds its bias twice."""

from __future__ import annotations

import math

import torch

from ..capture.blocked import attention_forward
from ..models.family import Family, mirrors, register_family
from ._bias import alibi_rows


@mirrors("transformers.models.falcon.modeling_falcon:FalconAttention.forward", "5.24.0", "e154487989606dcd")
def falcon(
    module,
    hidden_states,
    alibi,
    attention_mask,
    position_ids=None,
    layer_past=None,
    use_cache=False,
    output_attentions=False,
    position_embeddings=None,
    **kwargs,
):
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    fused_qkv = module.query_key_value(hidden_states)
    num_kv_heads = module.num_heads if module.new_decoder_architecture else module.num_kv_heads
    query, key, value = module._split_heads(fused_qkv)
    b, T, _, _ = query.shape
    h, d = module.num_heads, module.head_dim
    query = query.transpose(1, 2).reshape(b, h, T, d)
    key = key.transpose(1, 2).reshape(b, num_kv_heads, T, d)
    value = value.transpose(1, 2).reshape(b, num_kv_heads, T, d)
    if module.new_decoder_architecture:
        # HF broadcasts each KV group's k and v over the group's query heads; keep one per KV head, as the
        # bridge caches them (a blocked prefill then continues with eager decode steps on one cache).
        groups = h // module.num_kv_heads
        key, value = key[:, ::groups], value[:, ::groups]
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
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.inv_norm_factor, score_bias=bias)
    return module.dense(z.reshape(b, T, h * d)), None


# Falcon's new decoder architecture (Falcon-40B/180B, Falcon2) fuses q, k and v per KV group:
# query_key_value rows are [q.. of group 0, k0, v0, q.. of group 1, k1, v1, ...]. TransformerLens 4.3's Falcon
# adapter splits them as [all q | all k | all v], and with one KV head whenever `multi_query` is set (the
# released configs set it; HF ignores it under the new architecture): the bridge fails to build, or with
# multi_query=False builds and computes attention from the wrong rows. headscope boots such a bridge with
# multi_query=False (`bridge_overrides`, the HF model and its config untouched) and re-splits the rows the
# way HF does (`prepare`).


def _new_decoder(config) -> bool:
    return bool(getattr(config, "new_decoder_architecture", False))


def bridge_overrides(config) -> dict | None:
    """Boot the bridge with as many KV heads as HF uses (multi_query is ignored by HF here, not by TL)."""
    return {"multi_query": False} if _new_decoder(config) else None


@mirrors("transformers.models.falcon.modeling_falcon:FalconAttention._split_heads", "5.24.0", "fcf65ab14e30f1c4")
def grouped_qkv(weight, n_heads: int, n_kv: int, d_head: int):
    """(q, k, v) rows of a new-decoder fused query_key_value weight ([..., in]) or bias ([...])."""
    grouped = weight.reshape(n_kv, n_heads // n_kv + 2, d_head, *weight.shape[1:])
    return (
        grouped[:, :-2].reshape(n_heads * d_head, *weight.shape[1:]),
        grouped[:, -2].reshape(n_kv * d_head, *weight.shape[1:]),
        grouped[:, -1].reshape(n_kv * d_head, *weight.shape[1:]),
    )


def prepare(bridge) -> None:
    """New decoder architecture: give each layer's q/k/v bridges the rows HF reads for them. Idempotent."""
    config = bridge.original_model.config
    if not _new_decoder(config):
        return
    n_heads, n_kv = int(config.num_attention_heads), int(config.num_kv_heads)
    d_head = int(config.hidden_size) // n_heads
    with torch.no_grad():
        for block in bridge.blocks:
            attn = block.attn
            fused = attn.original_component.query_key_value
            parts = [(fused.weight, "weight")] + ([(fused.bias, "bias")] if fused.bias is not None else [])
            for tensor, attr in parts:
                for lin, rows in zip((attn.q, attn.k, attn.v), grouped_qkv(tensor, n_heads, n_kv, d_head)):
                    getattr(lin.original_component, attr).copy_(rows)


FAMILY = register_family(
    Family(
        "falcon",
        ("falcon",),
        blocked_forwards={"FalconAttention": falcon},
        bridge_overrides=bridge_overrides,
        prepare=prepare,
        notes="HF computes attention inline; ALiBi configs fold the bias into the mask as well as the scores.",
    )
)
