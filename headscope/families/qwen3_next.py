"""Qwen3-Next (and Qwen3.5): a hybrid of Gated DeltaNet linear-attention layers and gated full-attention
layers (3 : 1 in the released models). Only the full-attention layers have heads."""

from __future__ import annotations

from ..models.family import ATTENTION, Family, register_family


def kinds(config) -> list[str]:
    # HF names the two mixers in `layer_types`: "linear_attention" (Gated DeltaNet) / "full_attention".
    return [ATTENTION if t == "full_attention" else "linear_attention" for t in config.layer_types]


FAMILY = register_family(
    Family(
        "qwen3_next",
        ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"),
        layer_kinds=kinds,
        notes="Hybrid: Gated DeltaNet (linear attention) layers have no heads; "
        "full-attention layers gate their output per head (sigmoid of half of q_proj).",
    )
)
