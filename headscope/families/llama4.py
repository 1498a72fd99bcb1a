"""Llama 4 (text): chunked-attention RoPE layers and NoPE full layers; TL's adapter keeps HF's native
attention (`maintain_native_attention`), so the bridge would report patterns after HF computed them and
headscope routes attention through its own forward (`headscope.capture.routed`)."""

from __future__ import annotations

from ..capture.routed import route_attention
from ..models.family import Family, register_family

FAMILY = register_family(
    Family(
        "llama4",
        ("llama4_text", "llama4"),
        attention_route=route_attention,
        notes="HF attention goes through AttentionInterface (chunked mask from HF's own mask function); the bridge "
        "keeps HF's native attention, so headscope routes it to make hook_attn_scores / hook_pattern live.",
    )
)
