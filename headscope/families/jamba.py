"""Jamba: Mamba-1 layers with one attention layer every `attn_layer_period` (no RoPE), MoE every
`expert_layer_period`. Only the attention layers have heads."""

from __future__ import annotations

from ..capture.routed import route_attention
from ..models.family import ATTENTION, Family, register_family


def kinds(config) -> list[str]:
    return [ATTENTION if t == "attention" else "mamba" for t in config.layers_block_type]


FAMILY = register_family(
    Family(
        "jamba",
        ("jamba",),
        layer_kinds=kinds,
        attention_route=route_attention,
        notes="Hybrid: Mamba layers have no heads. The bridge keeps HF's attention forward (patterns reported after "
        "HF), so headscope routes the attention layers through its own forward.",
    )
)
