"""DeepSeek-V2 / V3: multi-head latent attention (MLA).

Each layer compresses the residual into one latent shared by every head (`kv_lora_rank` wide, plus
one shared `qk_rope_head_dim` key part that carries RoPE), and each query head decompresses its own
key (`qk_nope_head_dim` + the shared rope part) and value (`v_head_dim`) from it with `kv_b_proj`.
So a head of MLA is a query head: its pattern is softmax(q_h · k_h) over the keys decompressed for
that head, and its output z_h (v_head_dim wide) is its own slice of `o_proj`'s input. No two heads
share K or V after decompression (the sharing is in the latent), so headscope treats MLA as
multi-head attention with n_kv_heads = n_heads and d_head = v_head_dim (the width of hook_z).

TransformerLens 4.3's MLA bridge gets two layouts wrong, which `prepare` corrects on the bridge:

* hook_z (`o.hook_in`) is split into heads of the config's `head_dim`, which DeepSeek sets to
  `qk_rope_head_dim`: [batch, pos, n_heads * v_head_dim / qk_rope_head_dim, qk_rope_head_dim] instead
  of [batch, pos, n_heads, v_head_dim] (the MLA exception in TL's reshape reads a value that is only
  set on the first forward). Every head-output edit indexed the wrong slices.
* hook_q / hook_k / hook_v fire on [batch, head, pos, d]; every other family's are [batch, pos, head, d].

HF's MLA caches the compressed latent; the bridge caches the decompressed K and V. The blocked
forward here decompresses before the cache update, as the bridge does, so a blocked prefill and eager
decode steps share one cache layout.
"""

from __future__ import annotations

import torch
from transformer_lens.conversion_utils.conversion_steps.base_tensor_conversion import BaseTensorConversion

from ..capture.blocked import attention_forward
from ..models.family import Family, mirrors, register_family


class _HeadsSplit(BaseTensorConversion):
    """hook_z: [batch, pos, heads * d] as the bridge fires it <-> [batch, pos, heads, d] as hooks see it."""

    splits_attention_heads = True  # TransformerLens's own marker of the [batch, pos, head, d] layout

    def __init__(self, n_heads: int, d_head: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head

    def handle_conversion(self, x, *context):
        if x.ndim == 3 and x.shape[-1] == self.n_heads * self.d_head:
            return x.unflatten(-1, (self.n_heads, self.d_head))
        return x

    def revert(self, x, *context):
        if x.ndim == 4 and tuple(x.shape[-2:]) == (self.n_heads, self.d_head):
            return x.flatten(-2)
        return x


class _PosBeforeHeads(BaseTensorConversion):
    """hook_q/k/v: [batch, head, pos, d] as the bridge fires them <-> [batch, pos, head, d] as hooks see them."""

    def handle_conversion(self, x, *context):
        return x.transpose(1, 2) if x.ndim == 4 else x

    def revert(self, x, *context):
        return x.transpose(1, 2) if x.ndim == 4 else x


def d_head(config) -> int:
    """The width of one head's output z (hook_z): v_head_dim, not the config's head_dim (= qk_rope_head_dim)."""
    return int(config.v_head_dim)


def prepare(bridge) -> None:
    """Give every MLA layer's hook_z, hook_q, hook_k and hook_v the [batch, pos, head, d] layout of the
    other families (see the module docstring). Idempotent."""
    config = bridge.original_model.config
    n_heads = int(config.num_attention_heads)
    for block in bridge.blocks:
        attn = block.attn
        attn.o.hook_in.hook_conversion = _HeadsSplit(n_heads, d_head(config))
        for hook in (attn.hook_q, attn.hook_k, attn.hook_v):
            hook.hook_conversion = _PosBeforeHeads()
            hook.pos_dim = None  # now the default position axis (1)


def _mla(module, hidden_states, attention_mask, cache, rope):
    """MLA with its attention through `attention_forward`; K and V decompressed before the cache update."""
    b, T = hidden_states.shape[:-1]
    if module.q_lora_rank is None:
        q = module.q_proj(hidden_states)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden_states)))
    q = q.view(b, T, -1, module.qk_head_dim).transpose(1, 2)
    q_nope, q_rot = torch.split(q, [module.qk_nope_head_dim, module.qk_rope_head_dim], dim=-1)
    kv_nope, k_rot = torch.split(
        module.kv_a_proj_with_mqa(hidden_states), [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1
    )
    kv_nope = module.kv_a_layernorm(kv_nope).view(b, 1, T, module.kv_lora_rank)
    k_rot = k_rot.view(b, 1, T, module.qk_rope_head_dim)
    q_rot, k_rot = rope(q_rot, k_rot)
    key, value = module.expand_kv(kv_nope, k_rot)
    if cache is not None:  # the bridge's cache layout: decompressed per-head K and V
        key, value = cache.update(key, value, module.layer_idx)
    query = torch.cat((q_nope, q_rot), dim=-1)
    z, _ = attention_forward(module, query, key, value, attention_mask, scaling=module.scaling)
    return module.o_proj(z.reshape(b, T, -1)), None


# Youtu and GLM-4 MoE Lite copy DeepSeek-V3's MLA attention (the same source, hashed alike).
@mirrors("transformers.models.youtu.modeling_youtu:YoutuAttention.forward", "5.24.0", "bbf3ed097ccf7d9a")
@mirrors(
    "transformers.models.glm4_moe_lite.modeling_glm4_moe_lite:Glm4MoeLiteAttention.forward",
    "5.24.0",
    "bbf3ed097ccf7d9a",
)
@mirrors(
    "transformers.models.deepseek_v3.modeling_deepseek_v3:DeepseekV3Attention.forward", "5.24.0", "bbf3ed097ccf7d9a"
)
def deepseek_v3(
    module, hidden_states, position_embeddings=None, attention_mask=None, cache=None, past_key_values=None, **kwargs
):
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

    cos, sin = position_embeddings
    apply = m.apply_rotary_pos_emb_interleave if module.config.rope_interleave else m.apply_rotary_pos_emb
    return _mla(
        module,
        hidden_states,
        attention_mask,
        cache if cache is not None else past_key_values,
        lambda q, k: apply(q, k, cos, sin),
    )


@mirrors(
    "transformers.models.deepseek_v2.modeling_deepseek_v2:DeepseekV2Attention.forward", "5.24.0", "c33fe88f385aa6af"
)
def deepseek_v2(
    module, hidden_states, attention_mask=None, cache=None, position_embeddings=None, past_key_values=None, **kwargs
):
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import apply_rotary_emb

    return _mla(
        module,
        hidden_states,
        attention_mask,
        cache if cache is not None else past_key_values,
        lambda q, k: apply_rotary_emb(q, k, position_embeddings.to(q.device)),
    )


FAMILY = register_family(
    Family(
        "deepseek",
        ("deepseek_v2", "deepseek_v3", "youtu", "glm4_moe_lite"),
        blocked_forwards={
            "DeepseekV3Attention": deepseek_v3,
            "DeepseekV2Attention": deepseek_v2,
            "YoutuAttention": deepseek_v3,
            "Glm4MoeLiteAttention": deepseek_v3,
        },
        prepare=prepare,
        d_head=d_head,
        notes="Multi-head latent attention: a head is a query head with its own decompressed K and V.",
    )
)
