"""The shapes-world metrics under VHR (heads chosen per prompt at t=0): image QA, POPE and CHAIR.

VHR chooses its heads separately for every prompt, so it cannot be one fixed intervention around a
batched evaluation; each item runs `vhr_select` (one batched forward: with / without the image) and
reads its answer from that pass, and descriptions are generated with `vhr_generate`. `alpha=None`
gives the same protocol without reinforcement (plain greedy), so the two are directly comparable.

    >>> sets = default_eval_sets()
    >>> vhr_image_qa(model, sets["image_qa"], alpha=2.0)["accuracy"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np
import torch

from ..experiment_registry import EVALUATORS, EvalBetter, Evaluator, Param
from ..generation import greedy_generate
from . import shapes as W
from . import shapes_eval as E
from .shapes_eval import Split, chair, pope_metrics
from .vhr import vhr_generate, vhr_select


def _t0(model, item, layers, alpha, noise):
    """(answer id, logits [vocab], n reinforced heads) at the first generation step."""
    prompt = W.item_prompt(item, noise=noise)
    if alpha is None:
        with torch.no_grad():
            logits = model(torch.tensor([list(prompt.ids)]), pixel_values=prompt.pixel_values)[0, -1]
        return int(logits.argmax()), logits, 0
    sel = vhr_select(model, prompt, layers=layers, alpha=alpha)
    return sel.first_token, sel.logits, len(sel.heads)


def vhr_image_qa(model, items, *, layers=None, alpha: float | None = 2.0, noise: float = 0.0) -> dict:
    """Accuracy of the t=0 answer on one-word image questions (shapes.SINGLE_ANSWER_KINDS);
    `noise`: pixel noise std (shapes.render), the regime where the model hallucinates."""
    vocab = W.vocabulary()
    runs = [_t0(model, it, layers, alpha, noise) for it in items]
    answers = [vocab[a] for a, _, _ in runs]
    correct = [(a,) == it.answer for a, it in zip(answers, items)]
    return {
        "accuracy": float(np.mean(correct)),
        "answers": answers,
        "correct": correct,
        "mean_reinforced_heads": float(np.mean([n for _, _, n in runs])),
    }


def vhr_pope(model, items, *, layers=None, alpha: float | None = 2.0, noise: float = 0.0) -> dict:
    """POPE from the yes-vs-no logits at t=0."""
    vocab = W.vocabulary()
    yes, no = vocab.index("yes"), vocab.index("no")
    said_yes = [bool(lg[yes] > lg[no]) for _, lg, _ in (_t0(model, it, layers, alpha, noise) for it in items)]
    return {**pope_metrics([it.meta["label"] for it in items], said_yes), "said_yes": said_yes}


def vhr_describe(
    model, scenes, *, layers=None, alpha: float | None = 2.0, max_new_tokens: int = 13, noise: float = 0.0
) -> dict:
    """CHAIR of greedy descriptions generated with VHR (or plainly with alpha=None)."""
    vocab = W.vocabulary()
    stop = [vocab.index(W.END)]
    texts = []
    for scene in scenes:
        prompt = W.item_prompt(W.describe_item(scene), noise=noise)
        if alpha is None:
            toks = greedy_generate(model, list(prompt.ids), max_new_tokens, stop, pixel_values=prompt.pixel_values)
        else:
            toks = vhr_generate(model, prompt, max_new_tokens, stop, layers=layers, alpha=alpha).tokens
        texts.append(" ".join(vocab[t] for t in toks))
    return {**chair(scenes, texts), "texts": texts}


# ---- `headscope run`: the shapes-world metrics as evaluators (`evaluate: pope_f1` ...) -----------------
# Registered here, not in shapes_eval, because one evaluator runs both ways: with the condition's
# fixed interventions (shapes_eval) or under a `vhr:` condition (this module).

# metric -> (split its items must come from, key of the result, better)
_SHAPES_METRICS: dict[str, tuple[Split, str, EvalBetter]] = {
    "image_qa_accuracy": ("image_qa", "accuracy", "higher"),
    "text_qa_accuracy": ("text_qa", "accuracy", "higher"),
    "pope_accuracy": ("pope", "accuracy", "higher"),
    "pope_f1": ("pope", "f1", "higher"),
    "chair_i": ("describe", "chair_i", "lower"),
    "chair_s": ("describe", "chair_s", "lower"),
}


def _noise(value) -> float:
    if value < 0:
        raise ValueError(f"must be a number >= 0 (pixel noise std), got {value!r}")
    return float(value)


class _NoiseKw(TypedDict, total=False):
    noise: float  # pixel noise std: image splits only


def _shapes_evaluator(split: Split, key: str, better: EvalBetter) -> Evaluator:
    def run(req, noise: float = 0.0) -> dict:
        items = req.data.items
        kw: _NoiseKw = {"noise": noise} if split != "text_qa" else {}
        if req.vhr is not None:
            vhr_run = {"image_qa": vhr_image_qa, "pope": vhr_pope}.get(split)
            res = (
                vhr_run(req.model, items, **req.vhr, **kw)
                if vhr_run
                else vhr_describe(req.model, [it.scene for it in items], **req.vhr, **kw)
            )
            return {"value": float(res[key]), "vhr": req.vhr, **({"texts": res["texts"]} if "texts" in res else {})}
        if split == "describe":
            texts = E.describe(req.model, [it.scene for it in items], interventions=req.interventions, **kw)
            return {"value": float(E.chair([it.scene for it in items], texts)[key]), "texts": texts}
        plains: dict[str, Callable[..., Any]] = {
            "image_qa": E.image_qa_accuracy,
            "text_qa": E.text_qa_accuracy,
            "pope": E.pope,
        }
        plain = plains[split]
        return {"value": float(getattr(plain(req.model, items, interventions=req.interventions, **kw), key))}

    def check_data(data) -> str | None:
        if data.params.get("split", "image_qa") != split:  # shapes_set's default split
            return f"needs split: {split} in dataset {data.name!r}"
        return None

    # text QA has no image: no pixel noise, and VHR (with vs without the image) does not apply
    params = () if split == "text_qa" else (Param("noise", 0.0, _noise, doc="pixel noise std of the images"),)
    return Evaluator(
        run,
        data=("shapes",),
        better=better,
        params=params,
        vhr=split != "text_qa",
        check_data=check_data,
        doc=f"shapes-vlm {key} on {split} items",
    )


for _name, (_split, _key, _better) in _SHAPES_METRICS.items():
    EVALUATORS.register(_name, _shapes_evaluator(_split, _key, _better))
