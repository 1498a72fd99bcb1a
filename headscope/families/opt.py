"""OPT: learned positions offset by 2, queries scaled before the scores; TL's bridge lets HF compute attention."""

from __future__ import annotations

from ..capture.routed import route_attention
from ..models.family import Family, register_family

FAMILY = register_family(
    Family(
        "opt",
        ("opt",),
        attention_route=route_attention,
        notes="HF attention goes through AttentionInterface; the bridge would report patterns after HF, so headscope "
        "routes attention through its own forward.",
    )
)
