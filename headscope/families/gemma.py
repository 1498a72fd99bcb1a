"""Gemma 2 / 3 / 4, VaultGemma and NanoChat: the final logits are soft-capped (cap * tanh(logits / cap)) inside the model's forward."""

from __future__ import annotations

import torch

from ..models.family import Family, register_family


def softcapped(model, logits):
    config = model.original_model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def uneven_heads(config) -> str | None:
    """Gemma 4's full-attention layers may have wider heads (`global_head_dim`) or other KV-head counts
    than its sliding layers; headscope assumes one head shape per model."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "per_layer_config", None)
    n = getattr(config, "num_hidden_layers", 0)
    if layers is None or not n:
        return None
    try:
        shapes = {(layers[i].head_dim, layers[i].num_attention_heads, layers[i].num_key_value_heads) for i in range(n)}
    except (AttributeError, KeyError, IndexError, TypeError):  # a config without per-layer shapes
        return None
    if len(shapes) > 1:
        return (
            f"its layers have different attention head shapes (head_dim, heads, KV heads: {sorted(shapes)}), "
            "and headscope assumes one head shape for the whole model, so head tables, ablations and scans "
            "would be wrong. Fix: none in headscope yet"
        )
    return None


FAMILY = register_family(
    Family(
        "gemma",
        ("gemma2", "gemma3", "gemma3_text", "gemma3n_text", "gemma4_text", "vaultgemma", "nanochat"),
        logits=softcapped,
        refuse=uneven_heads,
        notes="Final logit soft-cap; attention soft-cap (Gemma 2) inside hook_attn_scores.",
    )
)
