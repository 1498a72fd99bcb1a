"""CodeGen: refused — TransformerLens 4.3's attention bridge cannot run it on transformers 5.24."""

from __future__ import annotations

from ..models.family import Family, register_family


def bridge_incompatible(config) -> str:
    return (
        "TransformerLens 4.3's CodeGen attention bridge reads the rotary table `embed_positions` from each "
        "attention module, which transformers 5.24 moved to the model's rotary embedding, so every forward "
        "fails. Fix: a TransformerLens release whose CodeGen bridge matches transformers 5.24"
    )


FAMILY = register_family(
    Family(
        "codegen",
        ("codegen",),
        refuse=bridge_incompatible,
        notes="TL 4.3's CodeGen bridge predates transformers 5.24's rotary module.",
    )
)
