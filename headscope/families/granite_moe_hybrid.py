"""Granite-4 (GraniteMoeHybrid): Mamba-2 layers with a few attention layers, every layer with a shared MLP
and optional sparse MoE. Only the attention layers have heads."""

from __future__ import annotations

from ..models.family import ATTENTION, Family, register_family


def kinds(config) -> list[str]:
    # HF 5.x spells the Mamba-2 layers "linear_attention" in `layer_types` ("mamba" in older configs).
    return [ATTENTION if t in ("attention", "full_attention") else "mamba2" for t in config.layer_types]


FAMILY = register_family(
    Family(
        "granite_moe_hybrid", ("granitemoehybrid",), layer_kinds=kinds, notes="Hybrid: Mamba-2 layers have no heads."
    )
)
