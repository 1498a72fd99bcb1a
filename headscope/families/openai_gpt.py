"""GPT-1 (OpenAI GPT): refused — the bridge reports patterns that ignore the causal mask."""

from __future__ import annotations

from ..models.family import Family, register_family


def patterns_not_causal(config) -> str:
    return (
        "TransformerLens 4.3's bridge reports its attention patterns without the causal mask (Hugging Face "
        "computes the model causally, so the logits are right but every pattern, statistic and "
        "pattern-level edit would be wrong). Fix: a TransformerLens release whose GPT-1 bridge applies the "
        "mask"
    )


FAMILY = register_family(
    Family(
        "openai_gpt",
        ("openai-gpt",),
        refuse=patterns_not_causal,
        notes="The bridge's hook_pattern is not causal on GPT-1.",
    )
)
