"""BitNet: refused — a norm over all heads sits between attention and the output projection."""

from __future__ import annotations

from ..models.family import Family, register_family


def heads_not_separable(config) -> str:
    return (
        "each layer normalises the concatenated head outputs (attn_sub_norm, an RMSNorm over all heads) "
        "before the output projection, so a head's own output is not separable: TransformerLens's hook_z "
        "is after that norm, and head edits (zero, uniform attention, blocked attention) would act on "
        "mixed heads. Fix: none in headscope yet; patterns of other families are unaffected"
    )


FAMILY = register_family(
    Family("bitnet", ("bitnet",), refuse=heads_not_separable, notes="attn_sub_norm mixes heads before o_proj.")
)
