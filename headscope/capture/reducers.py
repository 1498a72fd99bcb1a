"""Reducers fold each layer's activations into per-(prompt, layer, head) statistics at once,
so nothing of size layers x heads x T x T outlives the layer's hook.

A reducer declares the activations it `needs` ("pattern", "z", "q", "k", "v", "rot_q", "rot_k",
"attn_scores", "resid_pre", "resid_mid", "resid_post", "attn_out"); the engine hands them over
for one layer at a time, through one method, `update_rows`: a block of the pattern's query rows (the
eager path's block is every row; blocked attention at long context hands a few rows at a time). Query-
averaged statistics subclass `QueryMeanReducer` and only write `per_query`: a [batch, head, query] statistic and the [batch, query] mask of queries it covers.
All six are vectorised over heads: no Python loop per head.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ..models.info import ModelInfo
from ..results import HeadScores
from .context import BatchContext, RowBlock

# The tower a reducer reads: the decoder blocks ("language") or a VLM's vision encoder ("vision").
Tower = Literal["language", "vision"]


class Reducer:
    """Base contract. Subclasses set `name`, `needs`, `description` and implement `start`, `update_rows`
    (and `end_layer` when a layer's statistic is finished after its last block) and `result`.

    One way in: `update_rows(layer, acts, rows)` folds a block of query rows, `rows` a `RowBlock`
    (`rows.start`, `rows.stop`, its masks). The eager path hands every query row of the layer as one block
    (`update`, below, written once here); blocked attention at long context hands `block_size` rows at a
    time, then calls `end_layer`. Activations other than the pattern always come whole ([batch, pos, ...]).

    `result()` returns an instance of `result_type`: a HeadScores [prompt, layer, head] for per-head
    statistics; a reducer whose output is something else (token tables, vectors) declares its own result
    class. The engine checks it, and an analyzer reads a reducer only through `capture(...)[name]`.
    """

    name = "reducer"
    needs: tuple[str, ...] = ("pattern",)
    description = ""
    higher_is_more = True
    result_type: type = HeadScores
    # "vision": the reducer reads a VLM's vision encoder (sites of capture.engine.VISION_SITES); it gets
    # [images, ...] activations and a context whose `image_index` numbers each image.
    tower: Tower = "language"
    # Whether `update_rows` folds any block of the pattern's rows to the same statistic as the whole (a sum
    # over queries; a column statistic finished in `end_layer`). False: it needs every row at once (a whole
    # [T, T] map), so capture runs it only on the eager path, and refuses blocked attention for it. Declared
    # once per class; only pattern readers are ever fed by blocks.
    fed_by_blocks: ClassVar[bool] = False
    # Sites a reducer uses when the engine has them at no extra cost, never requires: blocked attention
    # hands a float32 block's masked pre-softmax "attn_scores" along with its pattern.
    optional_needs: tuple[str, ...] = ()

    def params(self) -> dict:
        return {}

    def start(self, info: ModelInfo, n_prompts: int) -> None:
        """Allocate the accumulators: `n_prompts` prompts (the number of images for a vision-tower reducer)."""
        raise NotImplementedError

    def update_rows(self, layer: int, acts: dict[str, torch.Tensor], rows: RowBlock) -> None:
        """Fold query rows [rows.start, rows.stop) of layer `layer`: acts' pattern [batch, head, rows, keys]
        (keys 0..rows.n_keys-1), other acts whole. The one method a reducer implements to receive data."""
        raise NotImplementedError(f"{type(self).__name__} implements no update_rows")

    def end_layer(self, layer: int, ctx: BatchContext) -> None:
        """Called after the last block of a layer's rows (nothing to do for a sum over queries)."""

    def update(self, layer: int, acts: dict[str, torch.Tensor], ctx: BatchContext) -> None:
        """A whole layer at once (the eager path): every query row as one block, then the layer's end."""
        self.update_rows(layer, acts, ctx.whole)
        self.end_layer(layer, ctx)

    def result(self, info: ModelInfo, prompts: list[str] | None = None) -> Any:
        """The folded statistic, an instance of `result_type`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"


class QueryMeanReducer(Reducer):
    """Mean over a set of queries of a per-query statistic; one value per (prompt, layer, head).

    `causal_only` statistics assume a query sees only earlier keys; on a bidirectional encoder
    they are reported as NaN (not applicable) rather than as a misleading number.
    """

    causal_only = False
    fed_by_blocks = True

    def start(self, info: ModelInfo, n_prompts: int) -> None:
        self._sums = np.zeros((n_prompts, info.n_layers, info.n_heads))
        self._counts = np.zeros((n_prompts, info.n_layers))
        # this layer's blocks so far, folded by end_layer
        self._layer_sum: torch.Tensor | None = None
        self._layer_count: torch.Tensor | None = None

    def per_query(self, acts: dict[str, torch.Tensor], ctx: RowBlock) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (stat [batch, head, query], covered [batch, query] bool) for the block's query rows."""
        raise NotImplementedError

    def update_rows(self, layer, acts, rows):
        """Each statistic is a per-query value, so blocks of rows add up to exactly the whole."""
        if self.causal_only and not rows.info.causal:
            return  # not applicable on a bidirectional encoder: the result stays NaN
        stat, covered = self.per_query(acts, rows)
        # where, not a product: a row no query covers may hold inf or NaN (a padded query of a sliding-window
        # or chunked layer sees no key at all: every score is masked and the log-free entropy overflows),
        # and 0 x NaN would still poison the prompt's sum.
        summed = torch.where(covered[:, None, :], stat.double(), 0.0).sum(-1)  # [batch, head]
        count = covered.sum(-1)
        if self._layer_sum is None or self._layer_count is None:
            self._layer_sum, self._layer_count = summed, count
        else:  # in torch until the layer ends: hundreds of blocks per layer at long context
            self._layer_sum += summed
            self._layer_count += count

    def end_layer(self, layer, ctx):
        if self._layer_sum is not None and self._layer_count is not None:
            self._sums[ctx.index, layer] += self._layer_sum.numpy()
            self._counts[ctx.index, layer] += self._layer_count.numpy()
        self._layer_sum = self._layer_count = None

    def result(self, info, prompts=None):
        with np.errstate(invalid="ignore", divide="ignore"):
            values = self._sums / self._counts[:, :, None]  # NaN where no query was covered
        values[self._counts == 0] = np.nan
        return HeadScores(
            values,
            name=self.name,
            n_kv_heads=info.n_kv_heads,
            model=info.name,
            layer_kinds=info.layer_kinds,
            analyzer=f"capture.{type(self).__name__}",
            params=self.params(),
            prompts=prompts,
            higher_is_more=self.higher_is_more,
            description=self.description,
        )


class FirstTokenMass(QueryMeanReducer):
    name = "first_token_mass"
    description = "Mean attention on position 0 over queries 1..T-1 (the StreamingLLM sink view)."

    def per_query(self, acts, ctx):
        return acts["pattern"][..., 0], ctx.queries_after_first  # [batch, head, q]


class AttentionEntropy(QueryMeanReducer):
    name = "attention_entropy"
    description = "Mean Shannon entropy (nats) of each attention row, queries 1..T-1."
    higher_is_more = True
    optional_needs = ("attn_scores",)

    def per_query(self, acts, ctx):
        pattern = acts["pattern"]
        scores = acts.get("attn_scores")
        if scores is None:
            return -torch.special.xlogy(pattern, pattern).sum(-1), ctx.queries_after_first
        # With the scores s (masked keys at the dtype's minimum, where A = 0): log A = s - lse, so
        # H = lse - sum A s, and lse = max s - log max A. No logarithm per key: two max passes (amax, ~3x
        # faster than a max that also returns the index) and one dot product, instead of xlogy's log over
        # every key. lse and sum A s nearly cancel on a peaked row: the dot product's float32 rounding
        # (~1e-7 of |max s| per row) is far below the 1e-5 the tests hold it to against xlogy, and
        # averages out over the queries of the mean.
        # With learned sinks (GPT-OSS) the row sums to m = 1 - the sink's share and lse includes the sink's
        # column: -sum A log A = lse m - sum A s, the same xlogy over the real keys as the eager path (a row
        # whose every key underflowed to 0 next to its sink has entropy 0).
        top, peak = scores.amax(-1), pattern.amax(-1)
        lse = top - torch.log(peak)
        mass = pattern.sum(-1) if ctx.info.learned_sinks else 1.0
        entropy = lse * mass - torch.einsum("...k,...k->...", pattern, scores)
        return torch.where(peak > 0, entropy, 0.0), ctx.queries_after_first


class SinkLogitMass(QueryMeanReducer):
    """The probability a learned sink logit takes (GPT-OSS), per head: mean over every real query (query 0
    included: its only key competes with the sink) of 1 - the pattern row's sum, since the pattern over
    the real keys is what the softmax over [keys, sink] leaves them (HF's `output_attentions`). Exact to the
    pattern's rounding on both paths (float32 patterns: ~1e-7). NaN on a model without learned sinks
    (`ModelInfo.learned_sinks`), where every row sums to 1."""

    name = "sink_logit_mass"
    description = "Mean probability the head's learned sink logit takes (1 - the row's mass on real keys); NaN without learned sinks."

    def per_query(self, acts, ctx):
        pattern = acts["pattern"]  # [batch, head, q, k]
        covered = ctx.valid_queries if ctx.info.learned_sinks else torch.zeros_like(ctx.valid_queries)
        return 1.0 - pattern.sum(-1, dtype=torch.float64), covered


class MeanAttentionDistance(QueryMeanReducer):
    name = "mean_attention_distance"
    description = "Mean backward distance sum_j A[i,j](i-j), queries 1..T-1 (Preplan-and-Anchor d); NaN on encoders."
    causal_only = True

    def per_query(self, acts, ctx):
        pattern = acts["pattern"]  # [batch, head, q, k]
        expected_key = pattern @ ctx.key_positions.to(pattern.dtype)  # [batch, head, q]
        # sum_j A[i,j] (i - j) = i sum_j A[i,j] - sum_j A[i,j] j; the row sums to 1 unless a learned sink
        # takes a share (GPT-OSS), which then counts as no distance.
        mass = pattern.sum(-1) if ctx.info.learned_sinks else 1.0
        return ctx.query_positions.to(pattern.dtype) * mass - expected_key, ctx.queries_after_first


class PreviousTokenScore(QueryMeanReducer):
    name = "previous_token_score"
    description = "Mean attention from query i to key i-1, queries 1..T-1."

    def per_query(self, acts, ctx):
        pattern = acts["pattern"]  # [batch, head, q, k]
        previous = (ctx.query_positions - 1).clamp(min=0)  # key i-1 of each query (q=0 is not covered)
        stat = pattern.gather(-1, previous.expand(*pattern.shape[:2], -1)[..., None])[..., 0]
        return stat, ctx.queries_after_first


def _sum_at_copies(pattern: torch.Tensor, ctx, shift: int) -> torch.Tensor:
    """[batch, head, q]: sum over the earlier copies k of query q's token of A[q, k + shift] (shift 0: the
    copies, `earlier_same_token`; 1: the tokens right after them, `after_earlier_same_token`)."""
    b, q, k = ctx.earlier_copies
    k = k + shift
    keep = k < pattern.shape[-1]
    b, q, k = b[keep], q[keep], k[keep]
    out = pattern.new_zeros(pattern.shape[0], pattern.shape[2], pattern.shape[1])  # [batch, q, head]
    out.index_put_((b, q), pattern[b, :, q, k], accumulate=True)
    return out.transpose(1, 2)


class DuplicateTokenScore(QueryMeanReducer):
    name = "duplicate_token_score"
    description = (
        "Attention on earlier copies of the query's own token (RazorAttention echo), over queries that have one."
    )

    def per_query(self, acts, ctx):
        return _sum_at_copies(acts["pattern"], ctx, shift=0), ctx.queries_with_earlier_copy


class InductionScore(QueryMeanReducer):
    name = "induction_score"
    description = "Attention on the tokens right after earlier copies of the query's token (prefix matching), over queries that have one; NaN on encoders."
    causal_only = True

    def per_query(self, acts, ctx):
        return _sum_at_copies(acts["pattern"], ctx, shift=1), ctx.queries_with_earlier_copy


DEFAULT_REDUCERS = (
    FirstTokenMass,
    AttentionEntropy,
    MeanAttentionDistance,
    PreviousTokenScore,
    DuplicateTokenScore,
    InductionScore,
)


def default_reducers() -> list[Reducer]:
    """Fresh instances of the six per-head statistics `headscope report` shows."""
    return [cls() for cls in DEFAULT_REDUCERS]
