"""BLOOM: ALiBi, attention computed inline, the residual added inside the attention module."""

from __future__ import annotations

import torch

from ..capture.blocked import attention_forward
from ..models.family import Family, mirrors, register_family
from ._bias import alibi_rows


@mirrors("transformers.models.bloom.modeling_bloom:BloomAttention.forward", "5.24.0", "f545c2095d22b66c")
def bloom(
    module,
    hidden_states,
    residual,
    alibi,
    attention_mask,
    layer_past=None,
    use_cache=False,
    output_attentions=False,
    **kwargs,
):
    from torch.nn import functional as F
    from transformers.models.bloom.modeling_bloom import dropout_add

    b, T, _ = hidden_states.shape
    h, d = module.num_heads, module.head_dim
    query, key, value = module._reshape(module.query_key_value(hidden_states))
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    z, _ = attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        scaling=module.inv_norm_factor,
        score_bias=alibi_rows(alibi, b, h, module.beta),
    )
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


FAMILY = register_family(
    Family(
        "bloom",
        ("bloom",),
        blocked_forwards={"BloomAttention": bloom},
        notes="HF computes attention inline with an ALiBi tensor per layer.",
    )
)
