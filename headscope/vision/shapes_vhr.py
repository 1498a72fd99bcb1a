"""The shapes-world metrics under VHR (heads chosen per prompt at t=0): image QA, POPE and CHAIR.

VHR chooses its heads separately for every prompt, so it cannot be one fixed intervention around a
batched evaluation; each item runs `vhr_select` (one batched forward: with / without the image) and
reads its answer from that pass, and descriptions are generated with `vhr_generate`. `alpha=None`
gives the same protocol without reinforcement (plain greedy), so the two are directly comparable.

    >>> sets = default_eval_sets()
    >>> vhr_image_qa(model, sets["image_qa"], alpha=2.0)["accuracy"]
"""

from __future__ import annotations

import numpy as np
import torch

from ..generation import greedy_generate
from . import shapes as W
from .shapes_eval import chair, pope_metrics
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
    return {"accuracy": float(np.mean(correct)), "answers": answers, "correct": correct,
            "mean_reinforced_heads": float(np.mean([n for _, _, n in runs]))}


def vhr_pope(model, items, *, layers=None, alpha: float | None = 2.0, noise: float = 0.0) -> dict:
    """POPE from the yes-vs-no logits at t=0."""
    vocab = W.vocabulary()
    yes, no = vocab.index("yes"), vocab.index("no")
    said_yes = [bool(lg[yes] > lg[no]) for _, lg, _ in (_t0(model, it, layers, alpha, noise) for it in items)]
    return {**pope_metrics([it.meta["label"] for it in items], said_yes), "said_yes": said_yes}


def vhr_describe(model, scenes, *, layers=None, alpha: float | None = 2.0, max_new_tokens: int = 13,
                 noise: float = 0.0) -> dict:
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
