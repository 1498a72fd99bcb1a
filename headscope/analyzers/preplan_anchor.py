"""Preplan-and-Anchor (Li et al., arXiv:2510.13554): local/global head groups, WAAD and FAI.

Two capture passes, never an L x H x T x T tensor:
  1. `ResponseDistance`: d^(l,h) = mean over response queries t of sum_{s<=t} A[t,s](t-s).
     H_loc = the `local_fraction` of heads with the lowest d, H_glob = the `global_fraction` highest.
  2. `GroupTokenStats`: per prompt, WAAD of Ā^loc and FAI of Ā^glob (the mean pattern over each group),
     folded a block of query rows at a time, so no [T, T] map is kept at any context length.
Then, per response token (R = response positions):
  WAAD_t = sum_{s<=t} Ā^loc[t,s] min(t-s, W)
  FAI_s  = mean over t in T(s) of Ā^glob[t,s],  T(s) = {t in R : s+H_lo <= t <= s+H_hi}
  preplan tokens = top q of Δ_t = |WAAD_t - WAAD_{t+1}|,  anchor tokens = top q of FAI.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from ..capture import capture
from ..errors import InputError
from ..models.info import model_info
from ..paths import data_dir
from ..results import HeadScores, SelectBetter, TokenScores
from ._group_pattern import GroupTokenStats, ResponseDistance, select_tokens
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, example_prompts, register, select_heads
from .params import Anything, HeadList, Interval, IntList, Options
from .preplan_anchor_figures import group_heatmap, preplan_token_figure

Template = Literal["auto", "chat", "plain", "raw"]
PeakRule = Literal["top_quantile", "local_max"]
TEMPLATES: tuple[Template, ...] = get_args(Template)
PEAK_RULES: tuple[PeakRule, ...] = get_args(PeakRule)


def load_pairs(path=None) -> list[tuple[str, str]]:
    """The default (prompt, response) pairs: data/preplan/pairs.json (8 GSM8K-style problems)."""
    doc = json.loads((data_dir() / "preplan" / "pairs.json" if path is None else path).read_text(encoding="utf-8"))
    return [(p["prompt"], p["response"]) for p in doc["pairs"]]


def middle_layers(n_layers: int, n: int = 5) -> list[int]:
    """`n` evenly spaced layers in [floor(L/3), floor(2L/3)] (the paper's RL setting), floored."""
    return sorted({int(x) for x in np.linspace(n_layers // 3, 2 * n_layers // 3, n)})


def _normalise_pairs(data) -> list[tuple]:
    if data is None:
        return load_pairs()
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], (tuple, list, dict)):
        data = [data]
    if isinstance(data, str) or not isinstance(data, (list, tuple)) or not data:
        raise InputError(
            "data must be a non-empty list of (prompt, response) pairs (strings or token-id lists), "
            "or dicts with 'prompt' and 'response'; pass None for the built-in GSM8K-style set"
        )
    pairs = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = (item.get("prompt"), item.get("response"))
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"data[{i}] is not a (prompt, response) pair: got {type(item).__name__}")
        prompt, response = item
        if isinstance(prompt, str) != isinstance(response, str):
            raise InputError(f"data[{i}]: prompt and response must both be strings or both token-id lists")
        if response is None or len(response) == 0 or (isinstance(response, str) and not response.strip()):
            raise InputError(f"data[{i}] has an empty response: R (the response positions) would be empty")
        pairs.append((prompt, response))
    return pairs


@dataclass
class EncodedPairs:
    """What the analyzer runs on: token ids of prompt + response, where each response starts, labels."""

    ids: list[list[int]]
    starts: list[int]
    labels: list[str]


def encode_pairs(model, pairs, template: Template = "auto") -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt+response and the position where each response starts.

    Strings: "chat" wraps the prompt as a user turn with the tokenizer's chat template (generation
    prompt included); "plain" writes "Question: {prompt}\\nAnswer:" + " {response}"; "raw" joins them
    as given; "auto" = chat if the tokenizer has a template, else plain. Prompt and response are
    tokenized separately so R is exact. Token-id pairs are used as they are.
    """
    info, tok = model_info(model), getattr(model, "tokenizer", None)
    if template not in TEMPLATES:
        raise InputError(f"template={template!r} is not one of {TEMPLATES}")
    if template == "auto":
        template = "chat" if getattr(tok, "chat_template", None) else "plain"
    ids, starts = [], []
    for prompt, response in pairs:
        if isinstance(response, str):
            if tok is None:
                raise InputError(
                    "this model has no tokenizer: pass (prompt_ids, response_ids) pairs instead of strings"
                )
            if template == "chat":
                if not getattr(tok, "chat_template", None):
                    raise InputError("template='chat' but the tokenizer has no chat template; use 'plain' or 'raw'")
                prefix = tok.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
                )
            elif template == "plain":
                prefix = f"Question: {prompt}\nAnswer:"
                response = response if response[:1].isspace() else " " + response
            else:
                prefix = prompt
            p_ids = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
            r_ids = tok(response, add_special_tokens=False)["input_ids"]
            bos = info.bos_token_id
            if info.prepend_bos and bos is not None and (not p_ids or p_ids[0] != bos):
                p_ids = [bos] + list(p_ids)
        else:
            p_ids, r_ids = [int(t) for t in prompt], [int(t) for t in response]
        ids.append(list(p_ids) + list(r_ids))
        starts.append(len(p_ids))
    return ids, starts


@register
class PreplanAnchor(Analyzer):
    """Local vs global heads by backward attention distance; WAAD (local rhythm) and FAI (anchors) per token.

    Attributes after fit: scores_ (HeadScores [prompt, layer, head], mean backward distance over
    the response, lower = local), heads_ = local_heads_, global_heads_, waad_, waad_delta_, fai_
    (TokenScores [prompt, response token]), preplan_tokens_, anchor_tokens_ (DataFrames),
    token_ids_, response_starts_, layers_.
    """

    name = "preplan-anchor"
    input_kind = "(prompt, response) pairs: strings or token id lists (None: the built-in GSM8K-style set)"
    parameter_constraints = {
        "local_fraction": [Interval(float, 0, 1, "right")],
        "global_fraction": [Interval(float, 0, 1, "right")],
        "quantile": [Interval(float, 0, 1, "right")],
        "layers": [None, Options("middle"), IntList()],
        "window": [Interval(int, 1, None)],
        "horizon": [Anything()],  # a (H_lo, H_hi) pair: _horizon() checks it
        "peak_rule": [Options(*PEAK_RULES)],
        "template": [Options(*TEMPLATES)],
        "local_heads": [None, HeadList()],
        "global_heads": [None, HeadList()],
        "batch_size": [Interval(int, 1, None)],
    }
    description = "Preplan-and-Anchor (arXiv:2510.13554): local/global heads, WAAD, FAI, preplan and anchor tokens."
    atlas = AtlasEntry(
        what=(
            "Mean backward distance of each head's attention over a model's own response (GSM8K-style "
            "question/answer pairs): the paper's local heads (shortest 30%) and global heads (longest 30%)."
        ),
        docs="preplan-anchor.md",
        columns=lambda a: {"backward_distance": a.scores_},
        roles=(
            Role(
                "global",
                "backward_distance",
                selected=lambda a: a.global_heads_,
                specific=False,
                rule="longest 30% mean backward distance over the response (the paper's global heads; generic)",
            ),
        ),
        figures=lambda a: [a.plot()],
    )

    def __init__(
        self,
        local_fraction: float = 0.3,
        global_fraction: float = 0.3,
        layers: Literal["middle"] | list[int] | None = None,
        window: int = 10,
        horizon=(1, None),
        quantile: float = 0.4,
        peak_rule: PeakRule = "top_quantile",
        template: Template = "auto",
        local_heads=None,
        global_heads=None,
        batch_size: int = 8,
    ):
        self.local_fraction = local_fraction
        self.global_fraction = global_fraction
        self.layers = layers
        self.window = window
        self.horizon = horizon
        self.quantile = quantile
        self.peak_rule = peak_rule
        self.template = template
        self.local_heads = local_heads
        self.global_heads = global_heads
        self.batch_size = batch_size

    def _check_params(self, info) -> None:
        info.require_causal("preplan-anchor", "measures backward attention distance over a response")
        if self.local_fraction + self.global_fraction > 1:
            raise InputError("local_fraction + global_fraction > 1: the two head groups would overlap")
        self._horizon()
        self._layers(info)

    def _horizon(self) -> tuple[int, float]:
        try:
            lo, hi = self.horizon
            lo, hi = int(lo), (math.inf if hi is None else float(hi))
        except (TypeError, ValueError):
            raise InputError(
                f"horizon={self.horizon!r} must be (H_lo, H_hi): (1, None) = to the end of the "
                "response, (10, 50) = the paper's RL horizon"
            ) from None
        if lo < 0 or hi < lo:
            raise InputError(f"horizon={self.horizon!r} needs 0 <= H_lo <= H_hi")
        return lo, hi

    def _layers(self, info) -> list[int]:
        if self.layers == "middle":  # of the layers with heads (a hybrid's attention layers)
            return [info.attention_layers[i] for i in middle_layers(len(info.attention_layers))]
        return info.check_layers(self.layers)

    def _group(
        self, distances: HeadScores, explicit, fraction: float, better: SelectBetter, info
    ) -> list[tuple[int, int]]:
        if explicit is not None:
            heads = [(int(l), int(h)) for l, h in explicit]
            for l, h in heads:
                info.check_head(l, h)
            if not heads:
                raise InputError("an explicit head group is empty: pass at least one (layer, head) or None")
            return heads
        return select_heads(distances, top_fraction=fraction, better=better)

    def prepare_data(self, model, data=None) -> EncodedPairs:
        """(prompt, response) pairs encoded with `template`; None = the built-in GSM8K-style pairs."""
        if isinstance(data, EncodedPairs):
            return data
        pairs = _normalise_pairs(data)
        ids, starts = encode_pairs(model, pairs, self.template)
        return EncodedPairs(ids, starts, [p if isinstance(p, str) else f"pair {i}" for i, (p, _) in enumerate(pairs)])

    @classmethod
    def example_data(cls, model):
        return [(ids[:9], ids[9:]) for ids in example_prompts(model, seq_len=8)]

    def _fit(self, model, data: EncodedPairs) -> None:
        info = model_info(model)
        layers, horizon = self._layers(info), self._horizon()
        ids, starts, prompts = data.ids, data.starts, data.labels
        # Pass 1: per-head distance over response queries (layers outside the selection stay NaN).
        dist = ResponseDistance(starts)
        raw: Any = capture(model, ids, [dist], layers=layers, batch_size=self.batch_size)[dist.name]
        self.scores_ = HeadScores(
            raw.values,
            name="mean_backward_distance",
            n_kv_heads=info.n_kv_heads,
            layer_kinds=info.layer_kinds,
            model=info.name,
            analyzer=self.name,
            params=self.get_params(),
            prompts=prompts,
            higher_is_more=False,
            description=dist.description,
        )
        self.local_heads_ = self._group(self.scores_, self.local_heads, self.local_fraction, "lower", info)
        self.global_heads_ = self._group(self.scores_, self.global_heads, self.global_fraction, "higher", info)
        self.heads_ = list(self.local_heads_)
        # Pass 2: WAAD and FAI of each group's mean pattern, per prompt, over the layers holding group heads.
        masks = {}
        for g, heads in (("local", self.local_heads_), ("global", self.global_heads_)):
            masks[g] = np.zeros((info.n_layers, info.n_heads), dtype=bool)
            masks[g][tuple(np.array(heads).T)] = True
        reducer = GroupTokenStats(masks, starts, self.window, horizon)
        group_layers = sorted({l for l, _ in self.local_heads_ + self.global_heads_})
        # GroupTokenStats gives {"waad"|"fai": per-prompt arrays}, not a HeadScores.
        self._token_stats: Any = capture(model, ids, [reducer], layers=group_layers, batch_size=self.batch_size)[
            reducer.name
        ]
        self.token_ids_, self.response_starts_, self.layers_ = ids, starts, layers
        self._per_token(model, info, prompts, horizon)

    def _per_token(self, model, info, prompts, horizon) -> None:
        tok = getattr(model, "tokenizer", None)
        width = max(len(ids) - s for ids, s in zip(self.token_ids_, self.response_starts_))
        rows = {k: np.full((len(prompts), width), np.nan) for k in ("waad", "delta", "fai")}
        strings: list = []
        records: dict[str, list] = {"preplan": [], "anchor": []}
        for p, (ids, start) in enumerate(zip(self.token_ids_, self.response_starts_)):
            w = self._token_stats["waad"][p][start:]
            f = self._token_stats["fai"][p][start:]
            d = np.append(np.abs(w[:-1] - w[1:]), np.nan)  # Δ_t needs t+1 inside the response
            n = len(w)
            rows["waad"][p, :n], rows["delta"][p, :n], rows["fai"][p, :n] = w, d, f
            toks = [tok.decode([i]) if tok is not None else str(i) for i in ids[start:]]
            strings.append(toks)
            for kind, values, shown in (("preplan", d, d), ("anchor", f, f)):
                for i in np.flatnonzero(select_tokens(values, self.quantile, self.peak_rule)):
                    records[kind].append((p, start + int(i), int(i), toks[i], float(shown[i])))
        meta = dict(model=info.name, analyzer=self.name, params=self.get_params(), prompts=prompts)
        self.waad_ = TokenScores(
            rows["waad"],
            tokens=strings,
            name="WAAD",
            **meta,
            description=f"Windowed average attention distance of the local heads (W={self.window}).",
        )
        self.waad_delta_ = TokenScores(
            rows["delta"],
            tokens=strings,
            name="WAAD delta",
            **meta,
            description="|WAAD_t - WAAD_{t+1}|; NaN at the last response token.",
        )
        self.fai_ = TokenScores(
            rows["fai"],
            tokens=strings,
            name="FAI",
            **meta,
            description=f"Future attention influence of the global heads, horizon {self.horizon}.",
        )
        cols = ["prompt", "position", "response_index", "token", "value"]
        self.preplan_tokens_ = pd.DataFrame(records["preplan"], columns=cols)
        self.anchor_tokens_ = pd.DataFrame(records["anchor"], columns=cols)

    def plot(self, **kw):
        """Heatmap of the mean backward distance with H_loc (circles) and H_glob (crosses) marked."""
        self._check_fitted()
        return group_heatmap(self.scores_, self.local_heads_, self.global_heads_, **kw)

    def plot_tokens(self, prompt_index: int = 0, **kw):
        """Per-token WAAD (with preplan markers) above FAI (anchor bars) over one response's text."""
        self._check_fitted()
        if not 0 <= int(prompt_index) < len(self.token_ids_):
            raise InputError(f"prompt_index {prompt_index} out of range: fitted on {len(self.token_ids_)} pairs")
        p = int(prompt_index)
        toks = self.waad_.tokens[p]
        n = len(toks)
        prompt = (self.scores_.prompts or [""])[p]
        subtitle = (
            f"pair {p}: {prompt[:80]}{'…' if len(prompt) > 80 else ''} | W={self.window}, "
            f"horizon={self.horizon}, |H_loc|={len(self.local_heads_)}, |H_glob|={len(self.global_heads_)}"
        )
        marked = lambda table: set(table.loc[table["prompt"] == p, "response_index"])
        return preplan_token_figure(
            toks,
            self.waad_.values[p, :n],
            self.waad_delta_.values[p, :n],
            self.fai_.values[p, :n],
            marked(self.preplan_tokens_),
            marked(self.anchor_tokens_),
            quantile=self.quantile,
            peak_rule=self.peak_rule,
            subtitle=subtitle,
            title=f"Preplan-and-Anchor — {self.scores_.model}",
            **kw,
        )
