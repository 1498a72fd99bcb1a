"""GPT-Neo: attention computed inline in float32, unscaled scores, local layers with a key window."""

from __future__ import annotations

from ..capture.blocked import attention_forward
from ..capture.routed import route_attention
from ..models.family import Family, mirrors, register_family


@mirrors("transformers.models.gpt_neo.modeling_gpt_neo:GPTNeoAttention.forward", "5.24.0", "c7dafcd9a9d403ae")
def gpt_neo_wrapper(
    module, hidden_states, layer_past=None, attention_mask=None, use_cache=False, output_attentions=False, **kwargs
):
    return gpt_neo(module.attention, hidden_states, attention_mask=attention_mask, layer_past=layer_past)


@mirrors("transformers.models.gpt_neo.modeling_gpt_neo:GPTNeoSelfAttention.forward", "5.24.0", "8e6182e4846bc5a6")
def gpt_neo(
    module, hidden_states, attention_mask=None, layer_past=None, use_cache=False, output_attentions=False, **kwargs
):
    b, T, _ = hidden_states.shape
    h, d = module.num_heads, module.head_dim
    query, key, value = (
        proj(hidden_states).view(b, T, h, d).transpose(1, 2) for proj in (module.q_proj, module.k_proj, module.v_proj)
    )
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_id)
    # GPT-Neo scores in float32 and does not scale them; a local layer sees the last window_size keys.
    window = module.config.window_size if module.attention_type == "local" else None
    z, _ = attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, scaling=1.0, window=window
    )
    out = module.out_proj(z.to(value.dtype).reshape(b, T, h * d))
    return module.resid_dropout(out), None


FAMILY = register_family(
    Family(
        "gpt_neo",
        ("gpt_neo",),
        blocked_forwards={"GPTNeoAttention": gpt_neo_wrapper, "GPTNeoSelfAttention": gpt_neo},
        attention_route=route_attention,
        notes="HF computes attention inline (no AttentionInterface) and the bridge would report patterns after HF: "
        "headscope routes attention through its copy of the forward.",
    )
)
