"""Gemma 2 / 3: the final logits are soft-capped (cap * tanh(logits / cap)) inside the model's forward."""

from __future__ import annotations

import torch

from ..models.family import Family, register_family


def softcapped(model, logits):
    config = model.original_model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


FAMILY = register_family(Family("gemma", ("gemma2", "gemma3", "gemma3_text", "gemma3n_text", "gemma4_text"),
                                logits=softcapped,
                                notes="Final logit soft-cap; attention soft-cap (Gemma 2) inside hook_attn_scores."))
