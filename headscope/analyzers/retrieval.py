"""Retrieval heads (Wu et al. 2024, arXiv:2404.15574; docs/methods.md, "Retrieval heads"): heads that copy-paste the
needle into the answer while the model retrieves it.

At a decode step whose query is token x_p and whose greedy output is w = x_{p+1}, head h
*copy-pastes* if j = argmax_k A_h[p, k] lies in the copy span and x_j = w. Per sample,
score_h = (#copy-paste steps) / |span|; a head's retrieval score is the mean over the samples the
model retrieved (ROUGE-1 recall of the answer in the output > `success_rouge`), and heads scoring
> `threshold` (0.1) are retrieval heads.

Two equivalent ways to read A_h[p, :] (tested to agree exactly):
- mode="generate": the paper's loop. Prefill prompt[:-1], decode from the last prompt token with the
  KV cache (`headscope.generation.greedy_generate`), read each step's attention row.
- mode="teacher_forced": greedy-decode the answer first, then one forward over prompt + answer
  through `capture()` with `CopyPasteReducer`, reading rows p = len(prompt)-1 ... end-1.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..capture import capture
from ..capture.reducers import Reducer
from ..confidence import CIMethod, mean_ci
from ..errors import InputError
from ..experiment_registry import EVALUATORS, Evaluator
from ..generation import greedy_generate, greedy_reproduces, plan_interventions
from ..inputs.needle import (
    FORMS,
    NeedleForm,
    NeedleSample,
    make_needle_prompts,
    make_repeat_samples,
)
from ..models.info import model_info
from ..results import HeadScores
from .atlas_entry import AtlasEntry, Role
from .base import Analyzer, register, select_heads
from .params import Anything, Interval, IntList, Options

DEFAULT_CONTEXT_LENGTHS = (120, 200)  # where the bundled model retrieves >= 80% (docs/retrieval-accuracy.md)


Mode = Literal["teacher_forced", "generate"]
Span = Literal["answer", "needle"]
Count = Literal["steps", "distinct"]
MODES: tuple[Mode, ...] = get_args(Mode)
SPANS: tuple[Span, ...] = get_args(Span)
COUNTS: tuple[Count, ...] = get_args(Count)


def rouge1_recall(reference: str, output: str) -> float:
    """ROUGE-1 recall: the share of the reference's words (lower-cased alphanumeric runs, with
    multiplicity) that the output contains. As rouge_score without stemming."""
    ref, out = Counter(re.findall(r"[a-z0-9]+", reference.lower())), Counter(re.findall(r"[a-z0-9]+", output.lower()))
    total = sum(ref.values())
    return sum(min(c, out[w]) for w, c in ref.items()) / total if total else 0.0


def token_recall(reference, output) -> float:
    """ROUGE-1 recall on token ids (for repeated random tokens, which have no words)."""
    ref, out = Counter(reference), Counter(output)
    return sum(min(c, out[t]) for t, c in ref.items()) / max(1, sum(ref.values()))


def count_copy_events(
    argmax: torch.Tensor, seq: torch.Tensor, span: tuple[int, int], count: Count = "steps"
) -> torch.Tensor:
    """Copy-paste events per head.

    argmax: [head, Q] most-attended key of each decode query q (query position P-1+q);
    seq: [P + Q] prompt + generated tokens, so the token produced by query q is seq[P + q].
    count="steps" counts every step (the paper's code); "distinct" counts each copied token id
    once per head (the paper's set formula |g_h ∩ k|). Returns [head] counts.
    """
    Q = argmax.shape[-1]
    produced = seq[-Q:]  # [Q]
    hit = (argmax >= span[0]) & (argmax < span[1]) & (seq[argmax] == produced[None, :])  # [head, Q]
    if count == "distinct":  # drop a hit whose token this head already copied at an earlier step
        same_earlier = (produced[:, None] == produced[None, :]).tril(-1).float()  # [q, q']
        hit = hit & ~((hit.float() @ same_earlier.T) > 0)
    return hit.sum(-1)


class CopyPasteReducer(Reducer):
    """Teacher-forced copy-paste score: per prompt (= prompt ids + greedy answer), per head,
    copy events over the answer's rows / span length. Needs the prompt length and span per prompt."""

    name = "copy_paste_score"
    needs = ("pattern",)
    description = "Retrieval (copy-paste) score of Wu et al.: argmax attention on the copy span at the copied token."

    def __init__(self, prompt_lens, spans, count: Count = "steps"):
        self.prompt_lens, self.spans, self.count = list(prompt_lens), [tuple(s) for s in spans], count

    def params(self):
        return {"count": self.count}

    def start(self, info, n_prompts):
        if n_prompts != len(self.prompt_lens):
            raise InputError(f"CopyPasteReducer has spans for {len(self.prompt_lens)} prompts, got {n_prompts}")
        self._events = np.zeros((n_prompts, info.n_layers, info.n_heads))

    fed_by_blocks = True

    def update_rows(self, layer, acts, ctx):
        """The most-attended key of each answer query (rows P-1 .. n-2) inside this block."""
        pattern = ctx.whole_keys(acts["pattern"])  # [batch, head, rows, k]
        if ctx.start == 0:
            self._argmax: dict[int, torch.Tensor] = {}
        lengths = ctx.valid.sum(-1)
        for row, idx in enumerate(ctx.index):
            P, n = self.prompt_lens[idx], int(lengths[row])
            lo, hi = max(P - 1, ctx.start), min(n - 1, ctx.stop)
            if lo >= hi:
                continue
            if row not in self._argmax:
                self._argmax[row] = torch.zeros(pattern.shape[1], n - P, dtype=torch.long)
            self._argmax[row][:, lo - (P - 1) : hi - (P - 1)] = pattern[
                row, :, lo - ctx.start : hi - ctx.start, :n
            ].argmax(-1)

    def end_layer(self, layer, ctx):
        for row, idx in enumerate(ctx.index):
            n = int(ctx.valid[row].sum())
            argmax = self._argmax.get(row, torch.zeros(self._events.shape[2], 0, dtype=torch.long))  # [head, Q]
            self._events[idx, layer] = count_copy_events(
                argmax, ctx.tokens[row, :n], self.spans[idx], self.count
            ).numpy()
        self._argmax = {}

    def result(self, info, prompts=None):
        span_len = np.array([b - a for a, b in self.spans], dtype=float)
        return HeadScores(
            self._events / span_len[:, None, None],
            name=self.name,
            n_kv_heads=info.n_kv_heads,
            layer_kinds=info.layer_kinds,
            model=info.name,
            analyzer="capture.CopyPasteReducer",
            params=self.params(),
            prompts=prompts,
            description=self.description,
        )


def generate_copy_scores(
    model,
    sample: NeedleSample,
    max_new_tokens: int,
    stop_ids=(),
    span: Span = "answer",
    count: Count = "steps",
    interventions=(),
) -> tuple[list[int], np.ndarray]:
    """The paper's loop for one sample: (greedy output ids, per-head score [layer, head]), optionally
    under `interventions` (applied by `greedy_generate`; the patterns read are the intervened ones)."""
    steps = []
    out = greedy_generate(
        model,
        list(sample.prompt_ids),
        max_new_tokens,
        stop_ids,
        interventions=interventions,
        observe=("pattern",),
        on_step=lambda step, token, acts: steps.append(acts["pattern"].argmax(-1)),
    )  # [layer, head]
    argmax = torch.stack(steps, -1)  # [layer, head, Q]
    L, H, _ = argmax.shape
    a, b = _span(sample, span)
    seq = torch.tensor(list(sample.prompt_ids) + out)
    events = count_copy_events(argmax.reshape(L * H, -1), seq, (a, b), count).reshape(L, H)
    return out, events.double().numpy() / (b - a)


def _span(sample: NeedleSample, span: Span) -> tuple[int, int]:
    return sample.answer_span if span == "answer" else sample.needle_span


def needle_accuracy(model, samples, interventions=()) -> float:
    """Fraction of samples whose answer greedy decoding reproduces exactly, with interventions applied
    by the generation driver (`headscope.generation.greedy_reproduces`; positions="decode" hits the
    last prompt token and the answer queries, as the paper's masking does).

    Measured teacher-forced (one forward over prompt + answer; correct iff every answer token is
    the argmax given the gold prefix, which is exactly when greedy decoding reproduces it), except
    under a kind that reads the whole query axis, where the answer is generated.
    """
    plan = plan_interventions(model, interventions)  # checked, references prepared once for every sample
    hits = [greedy_reproduces(model, list(s.prompt_ids), list(s.answer_ids), interventions=plan) for s in samples]
    return sum(hits) / len(samples)


@register
class RetrievalHeads(Analyzer):
    """Retrieval heads by the copy-paste score on needle-in-a-haystack (or repeated-segment) prompts.

    fit(model, data): data = a list of NeedleSample (`make_needle_prompts` / `make_repeat_samples`),
    "repeats" (n_samples repeated random segments), or None (needle prompts at `context_lengths`,
    `prompt_form`, where the bundled model retrieves >= 80%). Attributes after fit: `scores_`
    [1, layer, head]: the mean over retrieved samples, `heads_` (score > threshold), `accuracy_`,
    `sample_scores_` [sample, layer, head] (all samples), `per_sample_` (DataFrame).
    """

    name = "retrieval-heads"
    input_kind = "NeedleSamples (make_needle_prompts / make_repeat_samples), 'repeats', or None: needle prompts"
    parameter_constraints = {
        "threshold": [Interval(float, 0, None)],
        "mode": [Options(*MODES)],
        "n_samples": [Interval(int, 1, None)],
        "context_lengths": [IntList(low=1)],
        "depths": [None, Anything()],
        "prompt_form": [Options(*FORMS)],
        "success_rouge": [Interval(float, None, 1)],  # < 0: every sample counts
        "seed": [Interval(int, 0, None)],
        "max_new_tokens": [Interval(int, 1, None)],
        "span": [Options(*SPANS)],
        "count": [Options(*COUNTS)],
    }
    example_params = {"n_samples": 2}
    description = "Copy-paste retrieval score (Wu et al. 2024) on needle-in-a-haystack prompts."
    atlas = AtlasEntry(
        what=(
            "Whether a head copies the needle: at each answer step, is its most-attended key the token being "
            "written (Wu et al.'s copy-paste score, needle-in-a-haystack prompts, mean over retrieved samples)."
        ),
        docs="retrieval-heads.md",
        # Needle contexts fit the model (a tiny test model's context is 128 tokens).
        quick=lambda info: {
            "n_samples": 4,
            "context_lengths": [min(c, info.n_ctx - 32) for c in DEFAULT_CONTEXT_LENGTHS],
        },
        full=lambda info: {
            "n_samples": 20,
            "context_lengths": [min(c, info.n_ctx - 32) for c in DEFAULT_CONTEXT_LENGTHS],
        },
        columns=lambda a: {"retrieval_score": a.scores_},
        roles=(
            Role(
                "retrieval", "retrieval_score", selected=lambda a: a.heads_, rule="copy-paste score > 0.1 (Wu et al.)"
            ),
        ),
        notes=lambda a: [
            f"needle retrieved in {a.accuracy_:.0%} of {len(a.per_sample_)} samples (the score "
            "averages the retrieved ones)"
        ],
    )

    def __init__(
        self,
        threshold: float = 0.1,
        mode: Mode = "teacher_forced",
        n_samples: int = 10,
        context_lengths=DEFAULT_CONTEXT_LENGTHS,
        depths=None,
        prompt_form: NeedleForm = "completion",
        success_rouge: float = 0.5,
        seed: int = 0,
        max_new_tokens: int = 10,
        span: Span = "answer",
        count: Count = "steps",
    ):
        self.threshold, self.mode, self.n_samples = threshold, mode, n_samples
        self.context_lengths, self.depths, self.prompt_form = context_lengths, depths, prompt_form
        self.success_rouge, self.seed, self.max_new_tokens = success_rouge, seed, max_new_tokens
        self.span, self.count = span, count

    def _check_params(self, info) -> None:
        info.require_causal("retrieval-heads", "decodes the answer greedily, token by token")

    def prepare_data(self, model, data=None) -> list[NeedleSample]:
        """NeedleSamples: as given, "repeats" (n_samples repeated random segments), or None (needle
        prompts at `context_lengths` in `prompt_form`)."""
        if data is None:
            return make_needle_prompts(
                model, self.n_samples, self.context_lengths, self.depths, self.seed, self.prompt_form
            )
        if isinstance(data, str) and data == "repeats":
            info = model_info(model)
            return make_repeat_samples(
                int(model.cfg.d_vocab), self.n_samples, seed=self.seed, first_token=info.bos_token_id
            )
        if isinstance(data, NeedleSample):
            data = [data]
        if not isinstance(data, (list, tuple)) or not data or not all(isinstance(s, NeedleSample) for s in data):
            raise InputError(
                "data must be a list of NeedleSample (make_needle_prompts / make_repeat_samples), "
                "'repeats', or None for the default needle prompts"
            )
        return list(data)

    @classmethod
    def example_data(cls, model):
        return make_repeat_samples(int(model.cfg.d_vocab), 2, seed=0, first_token=model_info(model).bos_token_id)

    def _fit(self, model, samples: list[NeedleSample]) -> None:
        info = model_info(model)
        needs_stop = any(s.stop for s in samples)
        stops = model_info(model).stop_token_ids if needs_stop else frozenset()
        outputs: list[list[int]] = []
        values: Any = []  # per-sample arrays (generate), then one [sample, layer, head] array
        for s in tqdm(samples, desc="retrieval", unit="sample", disable=len(samples) < 5):
            steps = self.max_new_tokens if s.stop else len(s.answer_ids)
            if self.mode == "generate":
                out, v = generate_copy_scores(model, s, steps, stops if s.stop else (), self.span, self.count)
                values.append(v)
            else:
                out = greedy_generate(model, list(s.prompt_ids), steps, stops if s.stop else ())
            outputs.append(out)
        if self.mode == "teacher_forced":
            reducer = CopyPasteReducer(
                [len(s.prompt_ids) for s in samples], [_span(s, self.span) for s in samples], self.count
            )
            res = capture(
                model,
                [list(s.prompt_ids) + o for s, o in zip(samples, outputs)],
                [reducer],
                batch_size=4,
                progress=False,
            )
            values = res[reducer.name].values
        values = np.asarray(values, dtype=float)  # [sample, layer, head]
        texts, recall = [], []
        for s, out in zip(samples, outputs):
            body = out[:-1] if s.stop and out and out[-1] in stops else out
            if s.source == "repeats":
                texts.append(" ".join(map(str, body)))
                recall.append(token_recall(s.answer_ids, body))
            else:
                texts.append(model.tokenizer.decode(body))
                recall.append(rouge1_recall(s.answer_text, texts[-1]))
        success = np.array(recall) > self.success_rouge
        self._store(info, samples, values, texts, np.array(recall), success, outputs)

    def _store(self, info, samples, values, texts, recall, success, outputs):
        params = self.get_params()
        common = dict(
            n_kv_heads=info.n_kv_heads,
            layer_kinds=info.layer_kinds,
            model=info.name,
            analyzer=self.name,
            params=params,
            description=self.description,
        )
        self.sample_scores_ = HeadScores(values, name="copy_paste_score", **common)
        if success.any():
            mean = values[success].mean(0)
        else:
            warnings.warn(
                "the model retrieved no sample (accuracy 0): scores_ is all NaN; try shorter "
                "contexts or the 'completion' form (see docs/retrieval-accuracy.md)",
                stacklevel=3,
            )
            mean = np.full(values.shape[1:], np.nan)
        # The paper's score is a mean over the retrieved samples only: one row on the prompt axis.
        self.scores_ = HeadScores(
            mean[None],
            name="retrieval_score",
            **common,
            prompts=[f"mean over {int(success.sum())} retrieved of {len(samples)} samples"],
        )
        self.heads_ = select_heads(self.scores_, threshold=self.threshold)
        self.accuracy_ = float(success.mean())
        flat = values.reshape(len(samples), -1)
        best = flat.argmax(1)
        self.per_sample_ = pd.DataFrame(
            {
                "sample": range(len(samples)),
                "source": [s.source for s in samples],
                "form": [s.form for s in samples],
                "needle_id": [s.needle_id for s in samples],
                "context_length": [s.context_length for s in samples],
                "depth": [s.depth for s in samples],
                "needle_start": [s.needle_span[0] for s in samples],
                "answer": [s.answer_text for s in samples],
                "output": texts,
                "recall": recall,
                "success": success,
                "n_steps": [len(o) for o in outputs],
                "best_head": [
                    f"L{i // info.n_heads}H{i % info.n_heads}" if flat[k, i] > 0 else ""  # no copy event
                    for k, i in enumerate(best)
                ],
                "best_score": flat[np.arange(len(samples)), best],
            }
        )

    def ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0, method: CIMethod = "percentile"):
        """Bootstrap CI per head, resampling needle samples (retrieved or not, as drawn): a resample's
        score is the mean over its retrieved samples, as the fit's (so the accuracy's own noise is in the
        interval). A resample with no retrieved sample has no score and is left out."""
        self._check_fitted()
        success = self.per_sample_["success"].to_numpy(bool)
        if not success.any():
            raise InputError(
                "RetrievalHeads.ci: the model retrieved no sample, so the score (a mean over the "
                "retrieved samples) is undefined. Fix: shorter contexts or the 'completion' form "
                "(docs/retrieval-accuracy.md)"
            )
        return mean_ci(
            self.sample_scores_.values,
            name="retrieval_score",
            level=level,
            n_boot=n_boot,
            seed=seed,
            method=method,
            include=success[:, None, None],
            unit="samples",
            statistic="copy-paste score, mean over the retrieved samples",
            attrs=self.scores_.provenance,
        )

    def plot(self, **kw):
        """Heatmap of the retrieval score (mean over retrieved samples)."""
        self._check_fitted()
        kw.setdefault(
            "title", f"retrieval score — {len(self.heads_)} heads > {self.threshold}, accuracy {self.accuracy_:.0%}"
        )
        return self.scores_.plot(**kw)


# ---- `headscope run`: `evaluate: needle_accuracy` -------------------------------------------------------


def _needle_evaluator(req) -> dict:
    return {"value": needle_accuracy(req.model, req.data.items, req.interventions)}


EVALUATORS.register(
    "needle_accuracy",
    Evaluator(
        _needle_evaluator,
        data=("needle",),
        better="higher",
        needs=frozenset({"generation"}),
        doc="fraction of needle samples whose answer greedy decoding reproduces (measured teacher-forced)",
    ),
)
