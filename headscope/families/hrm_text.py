"""HRM-Text: refused — two recurrent transformer stacks iterated in nested loops, with no `blocks`."""

from __future__ import annotations

from ..models.family import Family, register_family


def recurrent_stacks(config) -> str:
    return (
        "it runs two transformer stacks (H and L) in nested recurrent cycles; TransformerLens bridges them "
        "as L_blocks / H_blocks whose hooks fire once per cycle with no cycle index, so there is no single "
        "(layer, head) grid for headscope's engines. Fix: none in headscope yet"
    )


FAMILY = register_family(
    Family(
        "hrm_text",
        ("hrm_text",),
        refuse=recurrent_stacks,
        notes="Hierarchical recurrent stacks (L_blocks / H_blocks), refused.",
    )
)
