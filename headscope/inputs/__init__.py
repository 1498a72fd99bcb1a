"""Turning prompts into padded token batches, and seeded probe inputs."""

from .probes import repeated_random_tokens
from .tokens import TokenBatch, iter_batches, to_token_lists

__all__ = ["TokenBatch", "iter_batches", "repeated_random_tokens", "to_token_lists"]
