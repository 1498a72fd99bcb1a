"""Turning prompts into padded token batches, and seeded probe inputs."""

from .probes import repeated_random_tokens
from .segments import SegmentPrompt, build_variants, segment_prompts
from .tokens import TokenBatch, iter_batches, to_token_lists

__all__ = [
    "SegmentPrompt",
    "TokenBatch",
    "build_variants",
    "iter_batches",
    "repeated_random_tokens",
    "segment_prompts",
    "to_token_lists",
]
