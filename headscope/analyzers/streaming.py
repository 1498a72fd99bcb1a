"""Retrieval vs streaming heads (RazorAttention scores, DuoAttention-style streaming check)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..capture import capture
from ..capture.reducers import DuplicateTokenScore, InductionScore
from ..errors import InputError
from ..inputs.needle import make_needle_prompts
from ..inputs.probes import repeated_random_tokens
from ..interventions import StreamingWindow, forward_with
from ..models.info import model_info
from .atlas_entry import AtlasEntry, probe_tokens
from .base import Analyzer, example_prompts, prompts_or_default, register
from .params import Boolean, Interval, IntList
from .retrieval import needle_accuracy


def copy_accuracy(model, tokens: torch.Tensor, seg_len: int, interventions=()) -> float:
    """Top-1 accuracy of predicting the second copy of a repeated segment (tokens [batch, 1 + k*seg_len])."""
    logits = forward_with(model, tokens, interventions)  # blocked attention past the capture budget (long probes)
    # query i in copy 2 (positions seg_len+1 .. 2*seg_len-1 after the first token) predicts token i+1
    pred = logits[:, seg_len + 1 : 2 * seg_len].argmax(-1)
    return float((pred == tokens[:, seg_len + 2 : 2 * seg_len + 1]).float().mean())


@register
class StreamingHeads(Analyzer):
    """Which heads need the full context (retrieval) and which can keep sink + recent window (streaming).

    Scores (RazorAttention; docs/methods.md): on a leading token + a random segment repeated
    `n_repeats` times, echo = attention on earlier copies of the current token, induction =
    attention on the tokens right after them (per query head); each KV head takes the max over its
    query group. Retrieval KV heads = top `induction_ratio` by induction ∪ top `echo_ratio` by echo,
    pooled over all (layer, KV head); every other KV head is a streaming candidate.

    `check_streaming` then measures copy accuracy with a head set restricted to the first `sink`
    keys plus a `recent` window (DuoAttention's streaming mask) against random sets of the same size.

    Example:
        >>> from headscope.testing import planted_model
        >>> model, truth = planted_model()
        >>> sh = StreamingHeads(seg_len=20, n_repeats=2, token_range=(2, 48)).fit(model)
        >>> truth.induction in sh.heads_
        True
    """

    name = "streaming-heads"
    input_kind = "prompts: token id lists or strings (None: repeated random-token probes)"
    parameter_constraints = {
        "seg_len": [Interval(int, 1, None)],
        "n_repeats": [Interval(int, 2, None)],
        "n_prompts": [Interval(int, 1, None)],
        "token_range": [None, IntList(min_len=2, low=0)],
        "induction_ratio": [Interval(float, 0, 1)],
        "echo_ratio": [Interval(float, 0, 1)],
        "sink": [Interval(int, 0, None)],
        "recent": [Interval(int, 1, None)],
        "check": [Boolean()],
        "n_random": [Interval(int, 0, None)],
        "seed": [Interval(int, 0, None)],
        "batch_size": [Interval(int, 1, None)],
    }
    example_params = {"seg_len": 12, "n_repeats": 2, "n_prompts": 1, "recent": 4, "n_random": 1}
    description = "RazorAttention induction score per head (retrieval vs streaming heads; KV-group max)."
    atlas = AtlasEntry(
        what=(
            "RazorAttention's data-free test on a random segment repeated: attention on the token after an "
            "earlier copy (induction) per KV head. High: the head needs the full context; low: a sink + recent "
            "window (streaming) would do."
        ),
        docs="streaming-heads.md",
        quick=lambda info: {
            "seg_len": min(64, probe_tokens(info), (info.n_ctx - 1) // 2),
            "n_repeats": 2,
            "n_prompts": 1,
            "check": False,
        },
        full={"check": True},
        columns=lambda a: {"razor_induction": a.scores_},
        notes=lambda a: [
            f"{len(a.heads_)} retrieval (full-context) heads by RazorAttention's rule; the rest are "
            "streaming candidates"
        ],
    )

    def __init__(
        self,
        seg_len: int = 256,
        n_repeats: int = 4,
        n_prompts: int = 2,
        token_range=None,
        induction_ratio: float = 0.14,
        echo_ratio: float = 0.01,
        sink: int = 4,
        recent: int = 64,
        check: bool = True,
        n_random: int = 3,
        seed: int = 0,
        batch_size: int = 2,
    ):
        self.seg_len = seg_len
        self.n_repeats = n_repeats
        self.n_prompts = n_prompts
        self.token_range = token_range
        self.induction_ratio = induction_ratio
        self.echo_ratio = echo_ratio
        self.sink = sink
        self.recent = recent
        self.check = check
        self.n_random = n_random
        self.seed = seed
        self.batch_size = batch_size

    def _probes(self, model, seg_len, n_repeats, seed):
        info = model_info(model)
        return repeated_random_tokens(
            model.cfg.d_vocab,
            seg_len,
            n_repeats,
            self.n_prompts,
            seed,
            token_range=self.token_range,
            first_token=info.bos_token_id,
        )

    def _check_params(self, info) -> None:
        info.require_causal("streaming-heads", "ranks heads by induction (prefix matching)")

    def prepare_data(self, model, data=None):
        """Prompts (token ids or strings); None = repeated random-token probes (seg_len x n_repeats)."""
        return prompts_or_default(data, lambda: self._probes(model, self.seg_len, self.n_repeats, self.seed))

    @classmethod
    def example_data(cls, model):
        return example_prompts(model, seq_len=12)

    def _fit(self, model, probes) -> None:
        info = model_info(model)
        res = capture(model, probes, [DuplicateTokenScore(), InductionScore()], batch_size=self.batch_size)
        self.scores_ = self._own(res["induction_score"])
        self.echo_scores_ = self._own(res["duplicate_token_score"])
        g = info.group_size
        echo = self.echo_scores_.mean_over_prompts().values.reshape(info.n_layers, info.n_kv_heads, g).max(-1)
        ind = self.scores_.mean_over_prompts().values.reshape(info.n_layers, info.n_kv_heads, g).max(-1)
        has = np.repeat([info.has_heads(l) for l in range(info.n_layers)], info.n_kv_heads)  # hybrids: attention layers
        n_kv = int(has.sum())
        top = lambda v, ratio: set(
            [i for i in np.argsort(-np.nan_to_num(v.ravel(), nan=-1), kind="stable") if has[i]][: round(n_kv * ratio)]
        )
        chosen = top(ind, self.induction_ratio) | top(echo, self.echo_ratio)
        layer, kv = np.divmod(np.arange(echo.size), info.n_kv_heads)
        self.kv_table_ = pd.DataFrame(
            {
                "layer": layer,
                "kv_head": kv,
                "echo_max": echo.ravel(),
                "induction_max": ind.ravel(),
                "retrieval": [i in chosen for i in range(echo.size)],
            }
        )
        by_score = self.kv_table_.sort_values("induction_max", ascending=False)
        retrieval_kv = [(int(r.layer), int(r.kv_head)) for r in by_score.itertuples() if r.retrieval]
        self.heads_ = [(l, k * g + j) for l, k in retrieval_kv for j in range(g)]
        self.streaming_heads_ = [head for head in info.heads() if head not in set(self.heads_)]
        self.streaming_check_ = self.check_streaming(model) if self.check else None

    def check_streaming(
        self, model, head_sets: dict | None = None, seg_len: int | None = None, task: str = "copy", needle_samples=None
    ) -> pd.DataFrame:
        """Accuracy with each head set made streaming: `task="copy"` (second copy of fresh
        repeated-token probes) or `task="needle"` (exact needle retrieval on `needle_samples`,
        default 10 completion prompts of 200 tokens; the recent window should be shorter than the
        distance from the needle to the end of the prompt).

        Default sets: none, the streaming candidates, the retrieval heads, and `n_random` random sets
        of as many heads as there are retrieval heads. The recent window must be shorter than the
        segment, or the earlier copy stays visible and nothing can break.
        """
        self._check_fitted()
        seg_len = seg_len or min(self.seg_len, 4 * self.recent)
        if seg_len <= self.recent:
            raise InputError(f"check segment length {seg_len} must exceed the recent window {self.recent}")
        info = model_info(model)
        if head_sets is None:
            rng = np.random.default_rng(self.seed)
            all_heads = info.heads()
            head_sets = {"none": [], "streaming candidates": self.streaming_heads_, "retrieval heads": self.heads_}
            for i in range(self.n_random):
                pick = rng.choice(len(all_heads), size=len(self.heads_), replace=False)
                head_sets[f"random #{i}"] = [all_heads[j] for j in sorted(pick)]
        if task == "copy":
            tokens = self._probes(model, seg_len, 2, self.seed + 1)
            score = lambda specs: copy_accuracy(model, tokens, seg_len, specs)
        elif task == "needle":
            samples = needle_samples or make_needle_prompts(model, 10, [200], seed=self.seed + 1)
            score = lambda specs: needle_accuracy(model, samples, specs)
        else:
            raise InputError(f"task={task!r} is not one of ('copy', 'needle')")
        rows = []
        for label, heads in head_sets.items():
            specs = [StreamingWindow(heads=heads, sink=self.sink, recent=self.recent)] if heads else []
            rows.append(
                {
                    "head_set": label,
                    "n_heads": len(heads),
                    "sink": self.sink,
                    "recent": self.recent,
                    "task": task,
                    "accuracy": score(specs),
                }
            )
        return pd.DataFrame(rows)
