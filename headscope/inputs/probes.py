"""Seeded synthetic probe inputs."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..experiment_registry import GENERATORS, Generator, params_of


def default_token_range(vocab_size: int) -> tuple[int, int]:
    """Where random probe tokens are drawn from: [1000, 11000) on large vocabularies (clear of special
    and byte tokens; RazorAttention uses [10000, 12500)), else every id from 2."""
    return (1000, min(vocab_size, 11000)) if vocab_size > 2000 else (2, vocab_size)


def repeated_random_tokens(
    vocab_size: int,
    seq_len: int = 50,
    n_repeats: int = 2,
    n_prompts: int = 1,
    seed: int = 0,
    token_range: tuple[int, int] | None = None,
    first_token: int | None = None,
) -> torch.Tensor:
    """Random token segments repeated `n_repeats` times: the classic induction/echo probe.

    Each prompt is `[first_token] + seg * n_repeats` with `seg` drawn without replacement (so every
    induction target is unambiguous). Large vocabularies draw from `token_range`, default
    [1000, 11000) to stay clear of special and byte tokens (RazorAttention uses [10000, 12500)).

    Returns: LongTensor [n_prompts, (first_token is not None) + seq_len * n_repeats].

    Example:
        >>> repeated_random_tokens(48, seq_len=5, token_range=(2, 48), first_token=1).shape
        torch.Size([1, 11])
    """
    if token_range is None:
        token_range = default_token_range(vocab_size)
    low, high = token_range
    if not 0 <= low < high <= vocab_size:
        raise InputError(f"token_range {token_range} must lie inside the vocabulary 0..{vocab_size}")
    if seq_len > high - low:
        raise InputError(f"seq_len={seq_len} exceeds the {high - low} distinct tokens in token_range {token_range}")
    if seq_len < 1 or n_repeats < 1 or n_prompts < 1:
        raise InputError("seq_len, n_repeats and n_prompts must all be >= 1")
    gen = torch.Generator().manual_seed(seed)
    segs = torch.stack([torch.randperm(high - low, generator=gen)[:seq_len] + low for _ in range(n_prompts)])
    out = segs.repeat(1, n_repeats)
    if first_token is not None:
        out = torch.cat([torch.full((n_prompts, 1), first_token, dtype=torch.long), out], dim=1)
    return out


# ---- `headscope run` data generator: a spec's `generator: repeated_tokens` -----------------------------


def _repeated_tokens_generator(model, info, **params) -> list[list[int]]:
    params.setdefault("first_token", info.bos_token_id)  # the model's BOS opens every probe, as in capture
    return repeated_random_tokens(int(model.cfg.d_vocab), **params).tolist()


GENERATORS.register(
    "repeated_tokens",
    Generator(
        _repeated_tokens_generator,
        yields="tokens",
        params=params_of(repeated_random_tokens, skip={"vocab_size"}),
        doc="random segments repeated n_repeats times (repeated_random_tokens); first_token defaults to the model's BOS",
    ),
)
