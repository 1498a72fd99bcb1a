"""Metrics comparing a variant run with the clean run, one number per prompt.

A metric is called as `metric(base, variant, batch) -> [batch]` where base and variant are logits
and `batch` is the TokenBatch (right-padded tokens, lengths: `batch.tokens` [batch, pos],
`batch.lengths` [batch], `batch.valid` [batch, pos] bool, `batch.index` the prompts' indices in the
scanned list). Each metric declares `important`: which end of its change marks an important head
("higher": the largest change first, "lower": the most negative first, "magnitude": the largest |change|
first); every ranking of a scan (`HeadScores.top`, `rank_heads`, summaries, the atlas, the CLI) reads it.
A plain callable may set `important` too; without it, scans rank by magnitude. Built-in metrics declare
`last_only = True` when they read only each prompt's last real position: scan() then unembeds
just that position (a [rows, vocab] slice instead of [rows, pos, vocab]), so base and variant
arrive as [batch, 1, vocab]. A plain callable receives full [batch, pos, vocab] logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, get_args

import torch
import torch.nn.functional as F

from ..confidence import Better
from ..errors import InputError


class BuiltinMetric:
    """What every built-in metric declares (see the module docstring); `__call__` computes it."""

    name: ClassVar[str]
    last_only: ClassVar[bool]
    description: ClassVar[str]
    important: ClassVar[Better]

    def __call__(self, base: torch.Tensor, variant: torch.Tensor, batch) -> torch.Tensor:
        raise NotImplementedError


class KLLast(BuiltinMetric):
    """KL(p_base || p_variant) of the next-token distribution at the last prompt position
    (Ships' per-head score; computed from log-softmax, so the paper's +1e-12 is not needed)."""

    name, last_only, description = "kl_last", True, "KL(base || intervened), last-position next-token distribution"
    important = "higher"  # a head whose removal moves the distribution most

    def __call__(self, base, variant, batch):
        log_p, log_q = F.log_softmax(base[:, -1].double(), -1), F.log_softmax(variant[:, -1].double(), -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).float()


class LogitDiff(BuiltinMetric):
    """Change of logit(correct) - logit(wrong) at the last position: negative = the head helped."""

    name, last_only, description = "logit_diff", True, "change in logit(correct) - logit(wrong) at the last position"
    important = "lower"  # the most negative change: the head that helped the correct answer most

    def __init__(self, answer_ids: torch.Tensor):
        self.answer_ids = answer_ids  # [n_prompts, 2] (correct, wrong)

    def __call__(self, base, variant, batch):
        ids = self.answer_ids[torch.as_tensor(batch.index)].to(variant.device)  # [batch, 2]

        def diff(logits):
            last = logits[:, -1].float()  # fp32 whatever the model's dtype
            return last.gather(-1, ids[:, :1])[:, 0] - last.gather(-1, ids[:, 1:])[:, 0]

        return diff(variant) - diff(base)


class LossChange(BuiltinMetric):
    """Change of the mean next-token cross-entropy over each prompt's real tokens."""

    name, last_only, description = "loss", False, "change in mean next-token loss"
    important = "higher"  # the largest loss increase

    def __call__(self, base, variant, batch):
        return _loss(variant, batch) - _loss(base, batch)


def _loss(logits, batch):
    targets = batch.tokens[:, 1:].to(logits.device)
    valid = batch.valid[:, 1:].float().to(logits.device)
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")  # [batch, pos-1], fp32
    return (nll * valid).sum(-1) / valid.sum(-1).clamp_min(1)


METRICS: dict[str, type[BuiltinMetric]] = {"kl_last": KLLast, "logit_diff": LogitDiff, "loss": LossChange}


def _answer_ids(model, answers, n_prompts: int) -> torch.Tensor:
    if answers is None or len(answers) != n_prompts:
        raise InputError(
            f"metric 'logit_diff' needs metric_kwargs={{'answers': [(correct, wrong), ...]}} with one "
            f"pair per prompt ({n_prompts} prompts)"
        )
    out = []
    for i, pair in enumerate(answers):
        ids = []
        for answer in pair:
            if isinstance(answer, int):
                ids.append(answer)
                continue
            toks = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if len(toks) != 1:
                raise InputError(
                    f"answers[{i}]: {answer!r} is {len(toks)} tokens; logit_diff needs single-token "
                    "answers (mind the leading space, e.g. ' Paris')"
                )
            ids.append(toks[0])
        out.append(ids)
    return torch.tensor(out)


IMPORTANT: tuple[Better, ...] = get_args(Better)


def important_end(metric) -> Better:
    """Which end of `metric`'s change marks an important head (its `important`, else "magnitude")."""
    end = getattr(metric, "important", "magnitude")
    if end not in IMPORTANT:
        raise InputError(f"metric attribute important={end!r}: use one of {', '.join(IMPORTANT)}")
    return end


def resolve_metric(metric, model, n_prompts: int, metric_kwargs: dict | None) -> Callable:
    """A metric name (see METRICS) or a callable → the metric object."""
    kwargs = dict(metric_kwargs or {})
    if callable(metric) and not isinstance(metric, str):
        return metric
    if metric not in METRICS:
        raise InputError(
            f"unknown metric {metric!r}; built in: {sorted(METRICS)}, or pass a callable "
            "metric(base_logits, variant_logits, batch) -> [batch]"
        )
    if metric == "logit_diff":
        return LogitDiff(_answer_ids(model, kwargs.pop("answers", None), n_prompts))
    if kwargs:
        raise InputError(f"metric {metric!r} takes no metric_kwargs, got {sorted(kwargs)}")
    return METRICS[metric]()
