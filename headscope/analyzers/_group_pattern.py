"""Reducers for analyses that read a *group* of heads over the response part of each prompt.

- `ResponseDistance`: per-head attention-weighted backward distance, averaged over response
  queries only (Preplan-and-Anchor's d^(l,h), Eq. 7); prompt queries are not covered.
- `GroupMeanPattern`: per prompt, the mean [T, T] pattern over the heads of each named group
  (Ā^loc, Ā^glob). Only one T x T float64 sum per prompt and group is kept, never L x H x T x T,
  so a group spread over 30 layers costs the memory of one attention map. Eager path only.
- `GroupTokenStats`: WAAD of the local group and FAI of the global group straight from blocks of rows,
  never a [T, T] map: what the analyzer uses, at any context length.

All are plain capture reducers: the analyzer runs `capture()` with them (no hook loops here).
`waad`, `fai` and `select_tokens` turn one prompt's group-mean pattern into per-token values (the
reference `GroupTokenStats` is tested against).
"""

from __future__ import annotations

import numpy as np
import torch

from ..capture.reducers import QueryMeanReducer, Reducer
from ..errors import InputError

__all__ = ["GroupMeanPattern", "GroupTokenStats", "ResponseDistance", "fai", "select_tokens", "waad"]


def _check_group_heads(groups: dict, info) -> None:
    """Every head of every group exists (a hybrid's layers without attention have none): InputError."""
    for mask in groups.values():
        for layer, head in zip(*np.nonzero(mask)):
            info.check_head(int(layer), int(head))


class ResponseDistance(QueryMeanReducer):
    """Mean over response queries t of sum_{s<=t} A[t, s] (t - s); one value per (prompt, layer, head).

    `response_starts[p]` is the position of prompt p's first response token; queries before it
    are the prompt and are not covered (a response-free prompt gives NaN).
    """

    name = "response_attention_distance"
    description = (
        "Mean backward attention distance sum_s A[t,s](t-s) over response queries t "
        "(Preplan-and-Anchor d^(l,h); lower = more local)."
    )
    higher_is_more = False

    def __init__(self, response_starts):
        self.response_starts = [int(s) for s in response_starts]

    def params(self) -> dict:
        return {"n_prompts": len(self.response_starts)}

    def per_query(self, acts, ctx):
        pattern = acts["pattern"]  # [batch, head, q, k]
        # sum_s A[t,s] (t - s) = t - sum_s A[t,s] s: rows sum to 1
        distance = ctx.query_positions.to(pattern.dtype) - pattern @ ctx.key_positions.to(pattern.dtype)
        starts = torch.tensor([self.response_starts[i] for i in ctx.index])  # [batch]
        covered = ctx.valid_queries & (ctx.query_positions[None, :] >= starts[:, None])  # [batch, q]
        return distance, covered


class GroupMeanPattern(Reducer):
    """Per prompt and group, the mean attention pattern over the group's heads: [T, T] float64.

    `groups` maps a group name to a boolean [n_layers, n_heads] mask (the same heads for every
    prompt). The result, `capture(...)[name]`, is {group: [per prompt: mean pattern]}.
    """

    name = "group_mean_pattern"
    needs = ("pattern",)
    result_type = dict  # {group: [per prompt: [T_p, T_p] mean pattern]}
    description = "Mean attention pattern of each head group, per prompt."

    def __init__(self, groups: dict[str, np.ndarray]):
        if not groups:
            raise InputError("GroupMeanPattern needs at least one group of heads")
        self.groups = {str(k): np.asarray(v, dtype=bool) for k, v in groups.items()}
        shapes = {m.shape for m in self.groups.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise InputError(f"group masks must all be [n_layers, n_heads] booleans, got shapes {sorted(shapes)}")
        for name, mask in self.groups.items():
            if not mask.any():
                raise InputError(f"head group {name!r} is empty: select at least one head")

    def params(self) -> dict:
        return {name: [[int(l), int(h)] for l, h in zip(*np.nonzero(m))] for name, m in self.groups.items()}

    def start(self, info, n_prompts):
        mask = next(iter(self.groups.values()))
        if mask.shape != (info.n_layers, info.n_heads):
            raise InputError(
                f"group masks are {mask.shape} but the model has {info.n_layers} layers x {info.n_heads} heads"
            )
        _check_group_heads(self.groups, info)
        self._sums: dict[str, list[np.ndarray | None]] = {g: [None] * n_prompts for g in self.groups}
        # Heads averaged per prompt: the same for all prompts, but counted as seen so that a layer
        # that was not captured cannot silently shrink the denominator.
        self._counts = {g: np.zeros(n_prompts) for g in self.groups}

    def update_rows(self, layer, acts, ctx):  # fed_by_blocks is False: always the block of every row
        pattern = acts["pattern"]  # [batch, head, q, k]
        lengths = ctx.valid.sum(-1).tolist()
        for g, mask in self.groups.items():
            heads = torch.from_numpy(mask[layer]).to(pattern.dtype)  # [head]
            n_heads = float(mask[layer].sum())
            if n_heads == 0:
                continue
            summed = torch.einsum("bhqk,h->bqk", pattern, heads).double()  # [batch, q, k]
            for row, p in enumerate(ctx.index):
                n = lengths[row]
                block = summed[row, :n, :n].cpu().numpy()
                acc = self._sums[g][p]
                self._sums[g][p] = block.copy() if acc is None else acc + block
                self._counts[g][p] += n_heads

    def result(self, info, prompts=None) -> dict:
        """{group: [per prompt: mean pattern [T_p, T_p] over the group's heads]}."""
        out = {}
        for g, mask in self.groups.items():
            expected = float(mask.sum())
            if any(c != expected for c in self._counts[g]):
                raise RuntimeError(f"group {g!r}: not every head of the group was captured for every prompt")
            # every prompt's sum is filled once its heads are all counted (checked just above)
            out[g] = [s / expected for s in self._sums[g] if s is not None]
        return out


class GroupTokenStats(Reducer):
    """Per prompt, WAAD of the "local" group's mean pattern and FAI of the "global" group's, folded a
    block of query rows at a time (no [T, T] map is kept, so it runs at long context too).

    WAAD_t = sum_{s<=t} Ā^loc[t,s] min(t-s, W) is a sum over row t; FAI_s = mean over t in T(s) of
    Ā^glob[t,s] (T(s) = {t >= start : lo <= t-s <= hi}) a sum down column s: both are linear in the
    pattern, so the group mean is the sum over the group's heads divided by their number. The result,
    `capture(...)[name]`, is {"waad": [per prompt [T_p]], "fai": [per prompt [T_p]]} (FAI NaN where
    T(s) is empty), equal to `waad(mean_local)` and `fai(mean_global, start, horizon)`.
    """

    name = "group_token_stats"
    needs = ("pattern",)
    result_type = dict
    fed_by_blocks = True
    description = "WAAD of the local heads' mean pattern and FAI of the global heads', per token."

    def __init__(self, groups: dict[str, np.ndarray], starts, window: int, horizon: tuple[int, float]):
        if set(groups) != {"local", "global"}:
            raise InputError(f"GroupTokenStats needs the groups 'local' and 'global', got {sorted(groups)}")
        self.groups = {k: np.asarray(v, dtype=bool) for k, v in groups.items()}
        for name, mask in self.groups.items():
            if mask.ndim != 2 or not mask.any():
                raise InputError(f"head group {name!r} must be a non-empty [n_layers, n_heads] boolean mask")
        self.starts, self.window, self.horizon = [int(s) for s in starts], int(window), horizon

    def params(self) -> dict:
        return {"window": self.window, "horizon": list(self.horizon)}

    def start(self, info, n_prompts):
        if len(self.starts) != n_prompts:
            raise InputError(f"GroupTokenStats has starts for {len(self.starts)} prompts, capture got {n_prompts}")
        _check_group_heads(self.groups, info)
        self._waad: list[np.ndarray | None] = [None] * n_prompts
        self._fai: list[np.ndarray | None] = [None] * n_prompts
        self._seen = {g: np.zeros(n_prompts) for g in self.groups}

    def update_rows(self, layer, acts, ctx):
        pattern = ctx.whole_keys(acts["pattern"])  # [batch, head, rows, k]
        t = ctx.query_positions[:, None].double()  # [rows, 1]
        gap = t - torch.arange(pattern.shape[-1], dtype=torch.float64)[None, :]  # [rows, k]: t - s
        lengths = ctx.valid.sum(-1).tolist()
        for g, mask in self.groups.items():
            heads = torch.from_numpy(mask[layer])
            if not heads.any():
                continue
            summed = pattern[:, heads].double().sum(1)  # [batch, rows, k]
            for row, p in enumerate(ctx.index):
                n = lengths[row]
                rows = slice(0, max(0, min(n, ctx.stop) - ctx.start))  # this block's real queries
                if ctx.start == 0:
                    self._seen[g][p] += float(heads.sum())
                if g == "local":
                    weight = gap.clamp(min=0, max=self.window)[rows, :n]
                    part = (summed[row, rows, :n] * weight).sum(-1).numpy()  # WAAD rows
                    acc = self._waad[p] if self._waad[p] is not None else np.zeros(n)
                    acc[ctx.start : ctx.start + len(part)] += part
                    self._waad[p] = acc
                else:
                    tt, gg = t[rows], gap[rows, :n]
                    future = (tt >= self.starts[p]) & (gg >= self.horizon[0]) & (gg <= self.horizon[1])
                    acc = self._fai[p] if self._fai[p] is not None else np.zeros(n)
                    acc += (summed[row, rows, :n] * future).sum(0).numpy()  # column sums over this block
                    self._fai[p] = acc

    def result(self, info, prompts=None) -> dict:
        expected = {g: float(m.sum()) for g, m in self.groups.items()}
        for g in self.groups:
            if any(c != expected[g] for c in self._seen[g]):
                raise RuntimeError(f"group {g!r}: not every head of the group was captured for every prompt")
        # every prompt's sums are filled once its heads are all counted (checked just above)
        waads = [w / expected["local"] for w in self._waad if w is not None]
        fais = []
        for p, num in enumerate(self._fai):
            if num is None:
                raise RuntimeError(f"prompt {p} was never captured (a bug in the engine)")
            n = len(num)
            t, s = np.arange(n)[:, None], np.arange(n)[None, :]
            count = ((t >= self.starts[p]) & (t - s >= self.horizon[0]) & (t - s <= self.horizon[1])).sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                fais.append(np.where(count > 0, num / expected["global"] / np.maximum(count, 1), np.nan))
        return {"waad": waads, "fai": fais}


# Per-token statistics of one prompt's group-mean pattern (numpy, vectorised over positions).


def waad(mean_local: np.ndarray, window: int) -> np.ndarray:
    """WAAD_t = sum_{s<=t} Ā[t,s] min(t-s, W) for every position t of one prompt: [T]."""
    T = mean_local.shape[0]
    gap = np.arange(T)[:, None] - np.arange(T)[None, :]  # [t, s]
    return (np.where(gap >= 0, mean_local, 0.0) * np.minimum(np.clip(gap, 0, None), window)).sum(1)


def fai(mean_global: np.ndarray, start: int, horizon: tuple[int, float]) -> np.ndarray:
    """FAI_s = mean over t in T(s) of Ā[t,s], T(s) = {t >= start : lo <= t-s <= hi}: [T], NaN if T(s) empty."""
    T = mean_global.shape[0]
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    future = (t >= start) & (t - s >= horizon[0]) & (t - s <= horizon[1])  # [t, s]
    count = future.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (mean_global * future).sum(0) / np.maximum(count, 1), np.nan)


def select_tokens(values: np.ndarray, q: float, rule: str = "top_quantile") -> np.ndarray:
    """Boolean mask of the TopQ tokens: the round(q * n) largest defined values (ties: earlier first).

    rule="local_max" keeps only those that are also local maxima (>= left, > right neighbour).
    """
    ok = np.isfinite(values)
    k = round(q * ok.sum())
    order = np.argsort(-np.where(ok, values, -np.inf), kind="stable")[:k]
    mask = np.zeros(len(values), dtype=bool)
    mask[order] = True
    if rule == "local_max":
        padded = np.concatenate([[-np.inf], np.where(ok, values, -np.inf), [-np.inf]])
        mask &= (padded[1:-1] >= padded[:-2]) & (padded[1:-1] > padded[2:])
    return mask
