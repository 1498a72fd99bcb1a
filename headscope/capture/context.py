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
        # [images]: the global number of each image of the batch (vision-tower reducers); None without images
        self.image_index: torch.Tensor | None = getattr(batch, "image_index", None)

    @cached_property
    def positions(self) -> torch.Tensor:
        """[pos] 0..T-1."""
        return torch.arange(self.tokens.shape[1])

    # The query side and the key side by name, so a statistic reads the same on the whole pattern and on
    # a block of its rows (`rows()`): on the whole pattern both are every position.
    @property
    def query_positions(self) -> torch.Tensor:
        return self.positions

    @property
    def key_positions(self) -> torch.Tensor:
        return self.positions

    @property
    def valid_queries(self) -> torch.Tensor:
        return self.valid

    def rows(self, start: int, stop: int, n_keys: int | None = None) -> RowBlock:
        """The context of query rows start..stop-1 (a block of the pattern's rows) against keys
        0..n_keys-1 (default all; blocked attention leaves out the keys after a causal block's last query)."""
        return RowBlock(self, start, stop, n_keys)

    def whole_keys(self, pattern: torch.Tensor) -> torch.Tensor:
        """`pattern` [..., key] with every key position (the whole pattern already has them)."""
        return pattern

    @cached_property
    def copy_groups(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, rank, group_start), each [batch, pos]: `order` lists the positions grouped by token id
        (ascending within a group; pads each alone), `rank[q]` how many real positions before q hold q's
        token, `group_start[q]` where q's group begins in `order`. O(T log T) once per batch; every block
        reads its queries' earlier copies from it without a [rows, keys] comparison."""
        T = self.tokens.shape[1]
        pos = torch.arange(T)
        key = torch.where(self.valid, self.tokens.long(), -1 - pos)  # a pad matches nothing
        order = torch.sort(key, dim=-1, stable=True).indices  # stable: positions ascend within a group
        grouped = key.gather(-1, order)
        first = torch.ones_like(grouped, dtype=torch.bool)
        first[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
        start_sorted = torch.cummax(torch.where(first, pos, 0), dim=-1).values
        rank = torch.empty_like(order).scatter_(-1, order, pos - start_sorted)
        group_start = torch.empty_like(order).scatter_(-1, order, start_sorted)
        return order, rank, group_start

    @cached_property
    def whole(self) -> RowBlock:
        """The block of every query row against every key: what `Reducer.update` (the eager path) hands
        `update_rows`. Built once per batch, so its masks are computed once for every layer and reducer."""
        return RowBlock(self, 0, self.tokens.shape[1])

    # The masks of the whole pattern are those of the block of every row: one definition serves both.
    @property
    def queries_after_first(self) -> torch.Tensor:
        """[batch, q] real queries except position 0, whose causal row is trivially [1]."""
        return self.whole.queries_after_first

    @property
    def earlier_same_token(self) -> torch.Tensor:
        """[batch, q, k] True where key k < q holds the same token id as query q (both real)."""
        return self.whole.earlier_same_token

    @property
    def after_earlier_same_token(self) -> torch.Tensor:
        """[batch, q, k] True where k-1 is an earlier copy of token q (the induction target)."""
        return self.whole.after_earlier_same_token

    @property
    def queries_with_earlier_copy(self) -> torch.Tensor:
        """[batch, q] queries whose token occurred before (where duplicate/induction apply)."""
        return self.whole.queries_with_earlier_copy

    @property
    def earlier_copies(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch row, query, key) of every True entry of `earlier_same_token`."""
        return self.whole.earlier_copies


class RowBlock:
    """The context of a block of query rows [start, stop) against keys [0, n_keys): what a reducer sees
    when the pattern arrives a block of rows at a time (long contexts). Query-side masks are
    [batch, rows], query-key masks [batch, rows, n_keys]; nothing of size key x key is built. A reducer
    that indexes keys by absolute position pads the block with `whole_keys(pattern)`."""

    def __init__(self, ctx: BatchContext, start: int, stop: int, n_keys: int | None = None):
        self.ctx, self.start, self.stop = ctx, int(start), int(stop)
        self.batch, self.info, self.index, self.tokens = ctx.batch, ctx.info, ctx.index, ctx.tokens
        self.valid = ctx.valid  # [batch, pos] every position (prompt lengths), as on the whole context
        self.image_index = ctx.image_index
        T = ctx.tokens.shape[1]
        # The block's keys: positions 0..n_keys-1. A causal block may stop at its last query (later keys
        # are masked for every row of it), which saves reducers the work on all-zero columns.
        self.n_keys = T if n_keys is None else int(n_keys)

    @cached_property
    def query_positions(self) -> torch.Tensor:
        return torch.arange(self.start, self.stop)

    @property
    def key_positions(self) -> torch.Tensor:
        return self.ctx.positions[: self.n_keys]

    def whole_keys(self, pattern: torch.Tensor) -> torch.Tensor:
        """`pattern` [..., n_keys] padded with zeros to every key position (for statistics indexed by
        absolute key position, e.g. a column sum)."""
        missing = self.ctx.tokens.shape[1] - pattern.shape[-1]
        return torch.nn.functional.pad(pattern, (0, missing)) if missing > 0 else pattern

    @cached_property
    def valid_queries(self) -> torch.Tensor:
        return self.ctx.valid[:, self.start : self.stop]

    @cached_property
    def queries_after_first(self) -> torch.Tensor:
        return self.valid_queries & (self.query_positions >= 1)[None, :]

    @cached_property
    def earlier_same_token(self) -> torch.Tensor:
        q_tokens = self.tokens[:, self.start : self.stop]
        same = q_tokens[:, :, None] == self.tokens[:, None, : self.n_keys]  # [batch, rows, key]
        strictly_before = self.key_positions[None, :] < self.query_positions[:, None]
        both_real = self.valid_queries[:, :, None] & self.valid[:, None, : self.n_keys]
        return same & strictly_before[None] & both_real

    @cached_property
    def after_earlier_same_token(self) -> torch.Tensor:
        shifted = torch.zeros_like(self.earlier_same_token)
        shifted[:, :, 1:] = self.earlier_same_token[:, :, :-1]
        return shifted

    @cached_property
    def earlier_copies(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch row, query row, key) of every True entry of `earlier_same_token`, in its row-major order:
        few next to rows x keys, so a statistic over them gathers instead of weighting the whole block with
        a mostly-zero mask. Read from `ctx.copy_groups` (no [rows, keys] tensor is built)."""
        order, rank, group_start = self.ctx.copy_groups
        rows = self.stop - self.start
        counts = rank[:, self.start : self.stop].reshape(-1)  # earlier copies of each (batch row, query)
        owner = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        nth = torch.arange(owner.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        b, q = owner // rows, owner % rows
        k = order[b, group_start[:, self.start : self.stop].reshape(-1)[owner] + nth]
        return b, q, k

    @cached_property
    def queries_with_earlier_copy(self) -> torch.Tensor:
        b, q, _ = self.earlier_copies
        out = torch.zeros(self.valid_queries.shape, dtype=torch.bool)
        out[b, q] = True
        return out
