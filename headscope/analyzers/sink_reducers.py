"""Reducers behind `AttentionSinks` (docs/attention-sinks.md): each folds one layer's activations into
small per-prompt records at once, so nothing of size T x T (or T x d_model per layer) outlives the hook.

- `TokenImportance`: Gu et al.'s importance alpha_k of one key position (docs/methods.md, "Sink heads and sink rate").
- `HiddenSinks`: ACT's column statistic s_j and the hidden-sink set S minus its first element (§7).
- `MassiveActivations`: Sun et al.'s |x| > 100 and >= 1000 x median|x| on `hook_resid_post` (§9).
- `PhiTopK`: VAR's phi on `hook_resid_pre` (§6): exact for given sink dims, else each token's top-k
  normalised magnitudes, from which phi is read once the sink dims are known after the pass.

The leading underscore keeps this module out of the analyzer registry's auto-import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..capture.reducers import QueryMeanReducer, Reducer
from ..results import HeadScores


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


class TokenImportance(QueryMeanReducer):
    """alpha_k = mean over real queries k <= i < min(n, T) of A[i, k] (Gu et al., `compute_attention_sink`).

    Query i = k is included (for k = 0 its causal row is trivially [1]), as in Gu et al.'s code; this
    is why alpha_0 differs from `first_token_mass`, which skips query 0.
    """

    name = "sink_importance"
    description = "Gu et al. importance of key position k: mean over queries k <= i < T of A[i, k]."

    def __init__(self, position: int = 0, max_tokens: int = 64):
        self.position, self.max_tokens = int(position), int(max_tokens)

    def params(self) -> dict:
        return {"position": self.position, "max_tokens": self.max_tokens}

    def per_query(self, acts, ctx):
        pattern = acts["pattern"]  # [batch, head, q, k]
        b, h, q, k = pattern.shape
        if self.position >= k:  # every prompt of this batch is too short: nothing covered -> NaN
            return pattern.new_zeros(b, h, q), torch.zeros(b, q, dtype=torch.bool)
        pos = ctx.query_positions
        covered = ctx.valid_queries & ((pos >= self.position) & (pos < self.max_tokens))[None, :]  # [batch, q]
        return pattern[..., self.position], covered  # [batch, head, q]


@dataclass
class HiddenSinkResult:
    """`counts`: hidden sinks per (prompt, layer, head); `table`: one row per hidden sink (prompt, layer,
    head, position, score)."""

    counts: HeadScores
    table: dict


class HiddenSinks(Reducer):
    """ACT hidden sinks: s_j = sum_{i>=j} A[i, j] / (N - j); S = {j : s_j > threshold}, minus its first element.

    The result holds the per-head count |S \\ {min S}| and a table of every hidden sink with its s_j.
    `min_queries` (default 1 = ACT) can exclude the last keys, whose s_j averages only N - j queries.
    """

    result_type = HiddenSinkResult
    name = "hidden_sink_count"
    needs = ("pattern",)
    description = "Number of ACT hidden sinks (s_j > threshold, first element of S dropped) per head."

    def __init__(self, threshold: float = 0.1, min_queries: int = 1):
        self.threshold, self.min_queries = float(threshold), int(min_queries)

    def params(self) -> dict:
        return {"threshold": self.threshold, "min_queries": self.min_queries}

    def start(self, info, n_prompts):
        self._counts = np.zeros((n_prompts, info.n_layers, info.n_heads))
        self._rows: dict[str, list[np.ndarray]] = {c: [] for c in ("prompt", "layer", "head", "position", "score")}
        self._col: torch.Tensor | None = None  # this layer's column sums over the blocks so far

    fed_by_blocks = True

    def update_rows(self, layer, acts, ctx):
        # mass each key receives from the real queries, summed in float64 (thresholds like 0.1 = 1/10 are
        # hit exactly by clean heads): a block of rows at a time, so the float64 copy stays a block's size
        pattern = ctx.whole_keys(acts["pattern"])  # [batch, head, rows, k]
        col = torch.einsum("bhqk,bq->bhk", pattern.double(), ctx.valid_queries.double())
        self._col = col if ctx.start == 0 or self._col is None else self._col + col

    def end_layer(self, layer, ctx):
        col, self._col = self._col, None
        if col is None:  # no block of this layer reached the reducer
            return
        valid = ctx.valid  # [batch, pos]
        n_queries = valid.sum(-1, keepdim=True) - ctx.positions[None, :]  # [batch, k]: N - j
        s = col / n_queries.clamp(min=1)[:, None, :]  # [batch, head, k]
        ok = valid & (n_queries >= self.min_queries)  # [batch, k]
        in_s = (s > self.threshold) & ok[:, None, :]  # [batch, head, k]
        first = in_s.int().argmax(-1, keepdim=True)  # first element of S (ACT's `indices[1:]` drops it)
        hidden = in_s & (ctx.positions[None, None, :] != first)
        self._counts[ctx.index, layer] = hidden.sum(-1).numpy()
        b, h, j = hidden.nonzero(as_tuple=True)
        for name, vals in (
            ("prompt", np.asarray(ctx.index)[b.numpy()]),
            ("layer", np.full(len(b), layer)),
            ("head", h.numpy()),
            ("position", j.numpy()),
            ("score", s[b, h, j].numpy()),
        ):
            self._rows[name].append(vals)

    def result(self, info, prompts=None) -> HiddenSinkResult:
        table = {c: _cat(v, float if c == "score" else np.int64) for c, v in self._rows.items()}
        counts = HeadScores(
            self._counts,
            name=self.name,
            n_kv_heads=info.n_kv_heads,
            model=info.name,
            layer_kinds=info.layer_kinds,
            analyzer=f"capture.{type(self).__name__}",
            params=self.params(),
            prompts=prompts,
            higher_is_more=True,
            description=self.description,
        )
        return HiddenSinkResult(counts, table)


@dataclass
class MassiveResult:
    """Per (prompt, layer): median|x| and top-3 |x| (Sun et al.'s exp2 curves); every massive entry."""

    median: np.ndarray  # [prompt, layer]
    top3: np.ndarray  # [prompt, layer, 3] largest |x| of the layer's hidden state
    top1_where: np.ndarray  # [prompt, layer, 2] (position, dim) of the largest |x|
    entries: dict[str, np.ndarray]  # prompt, layer, position, dim, value, median


class MassiveActivations(Reducer):
    """Entries of `hook_resid_post` with |x| > min_abs and |x| >= min_ratio * median|x| of that prompt's layer.

    The median is `torch.median` over every real token and dim of the layer output (the lower middle
    value for an even count), as in Sun et al.'s `main_llm.py --exp2`.
    """

    result_type = MassiveResult
    name = "massive_activations"
    needs = ("resid_post",)
    description = "Massive activations (Sun et al.): |x| > 100 and >= 1000 x the layer's median |x|."

    def __init__(self, min_abs: float = 100.0, min_ratio: float = 1000.0):
        self.min_abs, self.min_ratio = float(min_abs), float(min_ratio)

    def params(self) -> dict:
        return {"min_abs": self.min_abs, "min_ratio": self.min_ratio}

    def start(self, info, n_prompts):
        self._median = np.full((n_prompts, info.n_layers), np.nan)
        self._top3 = np.full((n_prompts, info.n_layers, 3), np.nan)
        self._where = np.full((n_prompts, info.n_layers, 2), -1, dtype=np.int64)
        self._rows: dict[str, list[np.ndarray]] = {
            c: [] for c in ("prompt", "layer", "position", "dim", "value", "median")
        }

    def update_rows(self, layer, acts, ctx):
        x = acts["resid_post"].float()  # [batch, pos, d_model]
        d = x.shape[-1]
        mag = x.abs().masked_fill(~ctx.valid[..., None], float("nan"))  # pads never count
        flat = mag.flatten(1)  # [batch, pos * d_model]
        med = flat.nanmedian(-1).values  # [batch]
        k = min(3, flat.shape[1])
        top, arg = flat.nan_to_num(-1.0).topk(k, -1)  # [batch, k]; pads (-1) sort last
        self._median[ctx.index, layer] = med.numpy()
        self._top3[ctx.index, layer, :k] = top.masked_fill(top < 0, float("nan")).numpy()
        self._where[ctx.index, layer] = torch.stack([arg[:, 0] // d, arg[:, 0] % d], -1).numpy()
        hit = (mag > self.min_abs) & (mag >= self.min_ratio * med[:, None, None])  # NaN compares False
        b, t, j = hit.nonzero(as_tuple=True)
        for name, vals in (
            ("prompt", np.asarray(ctx.index)[b.numpy()]),
            ("layer", np.full(len(b), layer)),
            ("position", t.numpy()),
            ("dim", j.numpy()),
            ("value", x[b, t, j].numpy()),
            ("median", med[b].numpy()),
        ):
            self._rows[name].append(vals)

    def result(self, info, prompts=None) -> MassiveResult:
        entries = {c: _cat(v, float if c in ("value", "median") else np.int64) for c, v in self._rows.items()}
        return MassiveResult(self._median, self._top3, self._where, entries)


@dataclass
class PhiResult:
    """phi per (prompt, layer, position) for given sink dims, or each token's top-k |x_d| / RMS(x)."""

    lengths: np.ndarray  # [prompt] real tokens per prompt
    phi: np.ndarray | None  # [prompt, layer, pos] (given dims) NaN-padded
    top_values: np.ndarray | None  # [prompt, layer, pos, k] (auto dims) largest |x_d| / RMS(x), descending
    top_dims: np.ndarray | None  # [prompt, layer, pos, k] their dims (-1 on pads)


class PhiTopK(Reducer):
    """VAR's phi(x) = max_{d in D} |x_d| / sqrt(mean(x^2) + eps), no norm weight, on `hook_resid_pre`.

    With `sink_dims` given, phi is exact at every token. Without, the sink dims are only known after the
    pass, so each token keeps its `top_k` largest |x_d| / RMS(x) with their dims (a few numbers per token).
    Since sum_d (|x_d| / RMS)^2 < d_model, at most d_model / tau^2 dims can exceed tau: with
    top_k > d_model / tau^2 the test phi > tau is decided exactly from the kept values.
    """

    result_type: type = PhiResult
    name = "phi"
    needs: tuple[str, ...] = ("resid_pre",)
    description = "VAR sink-token criterion phi = max over sink dims of |x_d| / RMS(x), entering each layer."

    def __init__(self, sink_dims=None, top_k: int = 8, eps: float = 1e-6):
        self.sink_dims = None if sink_dims is None else [int(d) for d in sink_dims]
        self.top_k, self.eps = int(top_k), float(eps)

    def params(self) -> dict:
        return {"sink_dims": self.sink_dims, "top_k": self.top_k, "eps": self.eps}

    def start(self, info, n_prompts):
        self._n_prompts, self._n_layers = n_prompts, info.n_layers
        self._chunks: list[tuple[list[int], int, torch.Tensor, torch.Tensor | None]] = []
        self._lengths = np.zeros(n_prompts, dtype=np.int64)

    def update_rows(self, layer, acts, ctx):
        x = acts["resid_pre"].float()  # [batch, pos, d_model]
        ratio = x.abs() / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # [batch, pos, d_model]
        self._lengths[ctx.index] = ctx.valid.sum(-1).numpy()
        if self.sink_dims is not None:
            phi = ratio[..., self.sink_dims].amax(-1).masked_fill(~ctx.valid, float("nan"))  # [batch, pos]
            self._chunks.append((ctx.index, layer, phi, None))
        else:
            vals, dims = ratio.topk(min(self.top_k, ratio.shape[-1]), -1)  # [batch, pos, k]
            self._chunks.append(
                (
                    ctx.index,
                    layer,
                    vals.masked_fill(~ctx.valid[..., None], float("nan")),
                    dims.masked_fill(~ctx.valid[..., None], -1).to(torch.int32),
                )
            )

    def result(self, info, prompts=None) -> PhiResult:
        T = int(self._lengths.max()) if len(self._lengths) else 0
        if self.sink_dims is not None:
            phi = np.full((self._n_prompts, self._n_layers, T), np.nan)
            for index, layer, p, _ in self._chunks:
                phi[index, layer, : p.shape[1]] = p.numpy()
            return PhiResult(self._lengths, phi, None, None)
        k = self._chunks[0][2].shape[-1] if self._chunks else 0
        vals = np.full((self._n_prompts, self._n_layers, T, k), np.nan, dtype=np.float32)
        dims = np.full((self._n_prompts, self._n_layers, T, k), -1, dtype=np.int32)
        for index, layer, v, d in self._chunks:
            assert d is not None  # without sink dims every chunk keeps its top-k dims
            vals[index, layer, : v.shape[1]] = v.numpy()
            dims[index, layer, : v.shape[1]] = d.numpy()
        return PhiResult(self._lengths, None, vals, dims)


def first_token_dims(entries: dict) -> list[int]:
    """VAR's sink dims: the dims of the massive activations (MassiveActivations entries) at position 0."""
    return sorted({int(d) for d, p in zip(entries["dim"], entries["position"]) if p == 0})


def phi_from_top_k(result: PhiResult, sink_dims) -> np.ndarray:
    """phi [prompt, layer, pos] from kept top-k values: exact where a sink dim is among a token's top-k;
    NaN where none is (then phi <= that token's k-th value, below tau when top_k > d_model / tau^2)."""
    if result.phi is not None:
        return result.phi
    assert result.top_dims is not None and result.top_values is not None  # a result keeps phi or its top-k
    hit = np.isin(result.top_dims, np.asarray(list(sink_dims), dtype=np.int64))  # [prompt, layer, pos, k]
    vals = np.where(hit, result.top_values, -np.inf).max(-1)  # values sorted descending: first hit wins
    return np.where(np.isfinite(vals), vals, np.nan).astype(np.float64)
