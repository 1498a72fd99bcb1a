"""Attention sinks: sink heads, sink rate, hidden sinks, massive activations and VAR's phi, in one pass.

    >>> from headscope.analyzers.sinks import AttentionSinks
    >>> from headscope.testing import planted_model, induction_tokens
    >>> model, truth = planted_model()
    >>> sinks = AttentionSinks().fit(model, induction_tokens(model, seq_len=20, batch=2))
    >>> sinks.heads_[0] == truth.sink
    True

Formulas, defaults and gotchas: docs/attention-sinks.md and docs/methods.md, part III.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..capture import capture
from ..capture.reducers import FirstTokenMass, SinkLogitMass
from ..errors import InputError
from ..inputs.prompts import load_prompts
from ..models.info import model_info
from ..results import TokenScores
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, example_prompts, prompts_or_default, register, select_heads
from .params import Interval, IntList
from .sink_reducers import HiddenSinks, MassiveActivations, PhiTopK, TokenImportance, first_token_dims, phi_from_top_k
from .sinks_figures import massive_curve, phi_heatmap, phi_lines


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InputError(msg)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@register
class AttentionSinks(Analyzer):
    """Sink heads (Gu et al. alpha_k > epsilon), sink rate, ACT hidden sinks, massive activations, VAR phi.

    Args:
        epsilon: Gu et al.'s threshold on alpha_k; heads above it are `heads_` (0.3).
        max_tokens: Gu et al.'s T: alpha_k uses queries among the first T tokens of each prompt (64).
        sink_position: the key position k whose importance is `scores_` (0 = the first token).
        hidden_sink_threshold: ACT's alpha on s_j (0.1).
        hidden_sink_min_queries: ignore keys seen by fewer queries than this (1 = ACT: none ignored).
        massive_min_abs, massive_min_ratio: Sun et al.'s |x| > 100 and |x| >= 1000 x median|x|.
        tau: VAR's sink-token threshold on phi (20).
        sink_dims: dims for phi; None finds them from the first token's massive activations.
        phi_top_k: |x_d| / RMS values kept per token when sink_dims is None (raised to
            d_model // tau^2 + 1 so that the phi > tau decision is always exact).
        batch_size: prompts per forward pass.

    Models with learned sinks (GPT-OSS: a per-head logit joins every softmax, the pattern over real keys
    sums to 1 - its share): every statistic here reads the pattern as the model uses it and HF returns
    it, so alpha_k, the first-token mass and ACT's s_j are shares of the whole softmax, the learned sink's
    included, and are not renormalised over the real keys; `heads_` and `sink_rate_` stay about tokens.
    The learned sink's own share is `sink_logit_mass_` (HeadScores [prompt, layer, head], the mean over
    real queries; None on a model without learned sinks). See docs/attention-sinks.md, "Learned sinks".

    Learned: `scores_` (alpha_k, HeadScores [prompt, layer, head]), `heads_`, `first_token_mass_`,
    `sink_logit_mass_`,
    `sink_rate_` (%), `hidden_sinks_` (DataFrame), `hidden_sink_counts_` (HeadScores),
    `massive_activations_` (DataFrame), `massive_dims_`, `layer_magnitudes_` (DataFrame),
    `sink_dims_`, `phi_` (ndarray [prompt, layer, pos], NaN on pads), `sink_tokens_` (DataFrame),
    `tokens_` (token strings per prompt).
    """

    name = "attention-sinks"
    input_kind = "prompts: strings, token id lists or ImagePrompts (None: the built-in prompt set)"
    parameter_constraints = {
        **{
            p: [Interval(float, 0, None)]
            for p in ("epsilon", "hidden_sink_threshold", "massive_min_abs", "massive_min_ratio", "tau")
        },
        **{p: [Interval(int, 1, None)] for p in ("max_tokens", "phi_top_k", "batch_size", "hidden_sink_min_queries")},
        "sink_position": [Interval(int, 0, None)],
        "sink_dims": [None, IntList(low=0)],
    }
    description = (
        "Attention sinks: Gu et al. sink heads and sink rate, ACT hidden sinks, Sun et al. "
        "massive activations and VAR's phi sink tokens, from one capture pass."
    )
    atlas = AtlasEntry(
        what=(
            "How much attention each head's queries put on the first token (Gu et al.'s alpha_1 over the first "
            "64 tokens of text), with ACT's hidden sinks (other keys that soak up attention) and Sun et al.'s "
            "massive activations, from the same pass."
        ),
        docs="attention-sinks.md",
        columns=lambda a: {
            "sink_score": a.scores_,
            "hidden_sink_keys": a.hidden_sink_counts_,
            **({} if a.sink_logit_mass_ is None else {"learned_sink_mass": a.sink_logit_mass_}),
        },
        roles=(
            Role(
                "sink",
                "sink_score",
                threshold=0.3,
                specific=False,
                rule="alpha_1 >= 0.3 (Gu et al.'s epsilon; generic)",
            ),
        ),
        figures=lambda a: [a.plot(), a.plot_massive()],
        notes=lambda a: (
            [
                f"sink rate: {a.sink_rate_:.1f}% of heads have alpha_1 > {a.epsilon}",
                f"massive-activation dims: {a.massive_dims_ or 'none'}",
            ]
            + (
                []
                if a.sink_logit_mass_ is None
                else [
                    f"learned sinks take {np.nanmean(a.sink_logit_mass_.values):.1%} of the attention (mean over heads); "
                    "alpha and the other token statistics are shares of the whole softmax, the sink's included"
                ]
            )
        ),
    )

    def __init__(
        self,
        epsilon: float = 0.3,
        max_tokens: int = 64,
        sink_position: int = 0,
        hidden_sink_threshold: float = 0.1,
        hidden_sink_min_queries: int = 1,
        massive_min_abs: float = 100.0,
        massive_min_ratio: float = 1000.0,
        tau: float = 20.0,
        sink_dims: list[int] | None = None,
        phi_top_k: int = 8,
        batch_size: int = 8,
    ):
        self.epsilon = epsilon
        self.max_tokens = max_tokens
        self.sink_position = sink_position
        self.hidden_sink_threshold = hidden_sink_threshold
        self.hidden_sink_min_queries = hidden_sink_min_queries
        self.massive_min_abs = massive_min_abs
        self.massive_min_ratio = massive_min_ratio
        self.tau = tau
        self.sink_dims = sink_dims
        self.phi_top_k = phi_top_k
        self.batch_size = batch_size

    def _check_params(self, info) -> None:
        _check(
            self.sink_position < self.max_tokens,
            f"sink_position={self.sink_position!r} must be an integer in [0, max_tokens={self.max_tokens})",
        )
        _check(
            self.sink_dims is None or all(d < info.d_model for d in self.sink_dims),
            f"sink_dims={self.sink_dims!r} must be a non-empty list of residual dims in 0..{info.d_model - 1} "
            "(or None to find them from the first token's massive activations)",
        )

    def prepare_data(self, model, data=None):
        """Prompts as `capture` takes them; None = the built-in prompt set."""
        return prompts_or_default(data, load_prompts)

    @classmethod
    def example_data(cls, model):
        return example_prompts(model)

    def _fit(self, model, data) -> None:
        """One capture pass over the prepared prompts; sets the learned attributes."""
        info = model_info(model)
        top_k = max(int(self.phi_top_k), int(info.d_model // self.tau**2) + 1 if self.tau > 0 else info.d_model)
        importance = TokenImportance(self.sink_position, self.max_tokens)
        hidden = HiddenSinks(self.hidden_sink_threshold, self.hidden_sink_min_queries)
        phi = PhiTopK(self.sink_dims, top_k)
        learned = [SinkLogitMass()] if info.learned_sinks else []  # GPT-OSS: the learned sink's own share
        res: Any = capture(  # each reducer's own result type (tables, counts, phi), not only HeadScores
            model,
            data,
            [
                FirstTokenMass(),
                importance,
                hidden,
                MassiveActivations(self.massive_min_abs, self.massive_min_ratio),
                phi,
                *learned,
            ],
            batch_size=self.batch_size,
        )
        self.tokens_ = _token_strings(model, res.token_ids)
        self.first_token_mass_ = res["first_token_mass"]
        self.sink_logit_mass_ = res["sink_logit_mass"] if learned else None
        self.scores_ = self._own(res["sink_importance"], name=f"sink_importance_k{self.sink_position}")
        self.heads_ = select_heads(self.scores_, threshold=self.epsilon)
        with warnings.catch_warnings():  # prompts too short for sink_position are NaN and left out
            warnings.simplefilter("ignore", RuntimeWarning)
            above = np.where(np.isnan(self.scores_.values), np.nan, self.scores_.values > self.epsilon)
            self.sink_rate_ = float(100 * np.nanmean(np.nanmean(above, axis=(1, 2))))
        self.hidden_sinks_ = self._table(res[hidden.name].table, ["prompt", "layer", "head", "position", "score"])
        self.hidden_sink_counts_ = res[hidden.name].counts
        massive = res["massive_activations"]
        m = massive.entries
        with np.errstate(divide="ignore"):  # a layer whose median |x| is 0 (one-hot toy models): ratio inf
            ratio = np.abs(m["value"]) / m["median"]
        self.massive_activations_ = self._table(
            {**m, "ratio": ratio}, ["prompt", "layer", "position", "dim", "value", "median", "ratio"]
        )
        self.massive_dims_ = sorted({int(d) for d in m["dim"]})
        self.layer_magnitudes_ = _magnitudes(massive)
        if self.sink_dims is not None:
            self.sink_dims_ = sorted({int(d) for d in self.sink_dims})
        else:
            self.sink_dims_ = first_token_dims(m)
            if not self.sink_dims_:
                warnings.warn(
                    "no massive activation at the first token: phi is undefined (all NaN); pass "
                    "sink_dims=[...] explicitly or lower massive_min_ratio",
                    stacklevel=3,
                )
        self.phi_ = phi_from_top_k(res["phi"], self.sink_dims_)
        p, layer, pos = np.nonzero(np.nan_to_num(self.phi_, nan=-np.inf) > self.tau)
        self.sink_tokens_ = self._table(
            {"prompt": p, "layer": layer, "position": pos, "phi": self.phi_[p, layer, pos]},
            ["prompt", "layer", "position", "phi"],
        )

    def _table(self, cols: dict, order: list[str]) -> pd.DataFrame:
        """DataFrame with a `token` column after `position`, sorted by prompt/layer/(head)/position."""
        df = pd.DataFrame({c: cols[c] for c in order})
        df.insert(
            order.index("position") + 1, "token", [self.tokens_[p][t] for p, t in zip(df["prompt"], df["position"])]
        )
        if "head" in df:
            df.insert(df.columns.get_loc("head") + 1, "label", [f"L{a}H{b}" for a, b in zip(df["layer"], df["head"])])
        keys = [c for c in ("prompt", "layer", "head", "position", "dim") if c in df]
        return df.sort_values(keys, kind="stable").reset_index(drop=True)

    def phi_scores(self, layer: int) -> TokenScores:
        """phi of every token entering `layer` (hook_resid_pre) as TokenScores [prompt, token]."""
        self._check_fitted()
        _check(
            _is_int(layer) and -self.phi_.shape[1] <= layer < self.phi_.shape[1],
            f"layer={layer!r} out of range: the model has layers 0..{self.phi_.shape[1] - 1}",
        )
        layer = int(layer) % self.phi_.shape[1]
        return TokenScores(
            self.phi_[:, layer],
            tokens=self.tokens_,
            name=f"phi_L{layer}",
            model=self.scores_.model,
            analyzer=self.name,
            params=self.get_params(),
            prompts=self.scores_.prompts,
            description=f"VAR phi (sink dims {self.sink_dims_}) entering layer {layer}; "
            f"sink tokens have phi > tau = {self.tau}",
        )

    def plot_phi(self, layer: int | None = None, prompt: int = 0):
        """phi per token: one prompt as a layer x position heatmap (layer=None), or one layer as lines."""
        self._check_fitted()
        if layer is not None:
            return phi_lines(self.phi_scores(layer), self.tau)
        _check(
            _is_int(prompt) and 0 <= prompt < len(self.tokens_),
            f"prompt={prompt!r} out of range: fitted on {len(self.tokens_)} prompts",
        )
        return phi_heatmap(
            self.phi_[prompt, :, : len(self.tokens_[prompt])],
            self.tokens_[prompt],
            self.tau,
            self.sink_dims_,
            self.scores_.model,
        )

    def plot_massive(self):
        """Sun et al.'s layer-wise curve: top-1/2/3 |x| and median |x| of each layer output (prompt mean)."""
        self._check_fitted()
        return massive_curve(self.layer_magnitudes_, self.massive_dims_, self.massive_min_ratio, self.scores_.model)


def _magnitudes(r) -> pd.DataFrame:
    """Sun et al.'s per-layer magnitudes (top-1/2/3 and median |x|) from a MassiveResult."""
    P, L = r.median.shape
    pi, li = (a.ravel() for a in np.meshgrid(np.arange(P), np.arange(L), indexing="ij"))
    return pd.DataFrame(
        {
            "prompt": pi,
            "layer": li,
            "top1": r.top3[..., 0].ravel(),
            "top2": r.top3[..., 1].ravel(),
            "top3": r.top3[..., 2].ravel(),
            "median": r.median.ravel(),
            "top1_position": r.top1_where[..., 0].ravel(),
            "top1_dim": r.top1_where[..., 1].ravel(),
        }
    )


def _token_strings(model, token_ids: list[list[int]]) -> list[list[str]]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [[str(t) for t in ids] for ids in token_ids]
    return [[tok.decode([t]) for t in ids] for ids in token_ids]
