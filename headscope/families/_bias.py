"""Score biases for `attention_forward`, shared by the ALiBi families (Falcon, BLOOM, MPT)."""

from __future__ import annotations

import torch


def keys_bias(per_key: torch.Tensor):
    """score_bias for a bias that depends on the key only ([..., 1, keys]): every block's first n_keys."""
    return lambda start, stop, n_keys: per_key[..., :n_keys]


def alibi_rows(alibi: torch.Tensor, batch: int, heads: int, scale: float):
    """score_bias for an ALiBi tensor HF hands the layer ([batch * heads, 1, keys] or [batch, heads, 1, keys])."""
    return keys_bias(alibi.reshape(batch, heads, 1, -1) * scale)
