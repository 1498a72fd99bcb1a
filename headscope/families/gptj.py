"""GPT-J: partial rotary, parallel attention and MLP; TransformerLens's bridge lets HF compute attention."""

from __future__ import annotations

from ..capture.routed import route_attention
from ..models.family import Family, register_family

FAMILY = register_family(Family(
    "gptj", ("gptj",), attention_route=route_attention,
    notes="HF attention goes through AttentionInterface (scores in float32); the bridge would report patterns "
          "after HF, so headscope routes attention through its own forward."))
