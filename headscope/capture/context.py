"""BatchContext: per-batch facts shared by every reducer and layer (masks computed once)."""

from __future__ import annotations

from functools import cached_property

import torch

from ..inputs.tokens import TokenBatch
from ..models.info import ModelInfo


class BatchContext:
    """What a reducer may know about the batch besides the activations.

    All masks are [batch, query_pos] or [batch, query_pos, key_pos] booleans that exclude pads.
    """

    def __init__(self, batch: TokenBatch, info: ModelInfo):
        self.batch = batch
        self.info = info
        self.tokens = batch.tokens  # [batch, pos]
        self.valid = batch.valid  # [batch, pos]
        self.index = batch.index  # prompt index of each row
        self.image_index = None  # [images]: global number of each image of the batch (vision-tower reducers)

    @cached_property
    def positions(self) -> torch.Tensor:
        """[pos] 0..T-1."""
        return torch.arange(self.tokens.shape[1])

    @cached_property
    def queries_after_first(self) -> torch.Tensor:
        """[batch, q] real queries except position 0, whose causal row is trivially [1]."""
        return self.valid & (self.positions >= 1)[None, :]

    @cached_property
    def earlier_same_token(self) -> torch.Tensor:
        """[batch, q, k] True where key k < q holds the same token id as query q (both real)."""
        same = self.tokens[:, :, None] == self.tokens[:, None, :]
        strictly_before = torch.ones(self.tokens.shape[1], self.tokens.shape[1], dtype=torch.bool).tril(-1)
        both_real = self.valid[:, :, None] & self.valid[:, None, :]
        return same & strictly_before[None] & both_real

    @cached_property
    def after_earlier_same_token(self) -> torch.Tensor:
        """[batch, q, k] True where k-1 is an earlier copy of token q (the induction target)."""
        shifted = torch.zeros_like(self.earlier_same_token)
        shifted[:, :, 1:] = self.earlier_same_token[:, :, :-1]
        return shifted

    @cached_property
    def queries_with_earlier_copy(self) -> torch.Tensor:
        """[batch, q] queries whose token occurred before (where duplicate/induction apply)."""
        return self.earlier_same_token.any(dim=-1)
