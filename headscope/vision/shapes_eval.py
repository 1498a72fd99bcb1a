"""Evaluate a shapes-world VLM: QA accuracy, POPE, greedy descriptions and CHAIR.

Every function takes the model (a TransformerBridge, or the plain HF LlavaForConditionalGeneration for
reference checks), ``interventions=()`` (headscope.interventions specs, bridge only) and ``hooks=()``
(raw TransformerLens forward hooks ``(name, fn)``, bridge only), applied around every forward, and the
image functions ``noise=0.0`` (Gaussian pixel noise std, ``shapes.render``: the hallucination regime).

    >>> sets = default_eval_sets()
    >>> image_qa_accuracy(model, sets["image_qa"]).accuracy
    >>> pope(model, sets["pope"]).f1
    >>> texts = describe(model, sets["describe"]); chair(sets["describe"], texts)

Answers are scored teacher-forced: an item is correct when the argmax at every answer position is
the answer token (for one-word answers this is exactly the greedy answer). POPE compares only the
"yes" and "no" logits (the model's full argmax is another word on `invalid` of the probes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from ..generation import greedy_generate, plan_interventions
from ..interventions import apply
from . import shapes as W

_WORD_ID = {w: i for i, w in enumerate(W.vocabulary())}
_ID_WORD = W.vocabulary()


@contextlib.contextmanager
def _applied(model, interventions, hooks):
    with contextlib.ExitStack() as stack:
        if (interventions or hooks) and not hasattr(model, "hooks"):
            raise InputError(
                "interventions/hooks need a TransformerBridge; got a plain HF model. "
                "Fix: use headscope.load_model('shapes-vlm')"
            )
        if interventions:
            stack.enter_context(apply(model, list(interventions)))
        if hooks:
            stack.enter_context(model.hooks(fwd_hooks=list(hooks)))
        stack.enter_context(torch.no_grad())
        yield


def _device(model):
    return next(model.parameters()).device


def _logits(model, ids: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
    kw = {} if pixels is None else {"pixel_values": pixels.to(_device(model))}
    out = model(ids.to(_device(model)), **kw)
    return (out.logits if hasattr(out, "logits") else out).float().cpu()


def _check_items(items, need_image: bool | None = None):
    if not items:
        raise InputError(
            "no items given: pass a non-empty list of shapes QAItems (e.g. default_eval_sets()['image_qa'])"
        )
    if need_image is not None and any(it.has_image != need_image for it in items):
        which = "image" if need_image else "text-only"
        raise InputError(f"expected only {which} items; split the list by `item.has_image`")


def teacher_forced(
    model, items, *, batch_size: int = 32, interventions=(), hooks=(), noise: float = 0.0, noise_seed: int = 0
) -> list[np.ndarray]:
    """Per item the logits [n_answer, vocab] at the positions that predict its answer tokens."""
    _check_items(items)
    out: dict[int, np.ndarray] = {}  # item index -> its logits (_run_group fills every index)
    order = sorted(range(len(items)), key=lambda i: items[i].has_image)  # text and image rows apart
    with _applied(model, interventions, hooks):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            # Split where the chunk switches from text to image items, so no batch mixes the two.
            for group in ([i for i in chunk if not items[i].has_image], [i for i in chunk if items[i].has_image]):
                if group:
                    _run_group(model, items, group, out, noise, noise_seed)
    return [out[i] for i in range(len(items))]


def _run_group(model, items, group, out, noise, noise_seed):
    seqs, plens = zip(*(W.encode_item(items[i]) for i in group))
    width = max(map(len, seqs))
    # Right padding: causal attention keeps every real position independent of the pads.
    ids = torch.full((len(seqs), width), W.PAD_ID, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    pixels = W.render_batch([items[i].scene for i in group], noise, noise_seed) if items[group[0]].has_image else None
    logits = _logits(model, ids, pixels)
    for r, i in enumerate(group):
        n_ans = len(seqs[r]) - plens[r]
        out[i] = logits[r, plens[r] - 1 : plens[r] - 1 + n_ans].numpy()


@dataclass
class QAResult:
    accuracy: float
    n: int
    per_kind: dict = field(default_factory=dict)  # kind -> accuracy
    predictions: list = field(default_factory=list)  # per item the argmax words (teacher-forced)
    correct: list = field(default_factory=list)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame({"kind": list(self.per_kind), "accuracy": list(self.per_kind.values())})


def _qa(model, items, need_image, **kw) -> QAResult:
    _check_items(items, need_image)
    logits = teacher_forced(model, items, **kw)
    preds = [tuple(_ID_WORD[j] for j in lg.argmax(-1)) for lg in logits]
    correct = [p == it.answer for p, it in zip(preds, items)]
    kinds = sorted({it.kind for it in items})
    per_kind = {k: float(np.mean([c for c, it in zip(correct, items) if it.kind == k])) for k in kinds}
    return QAResult(float(np.mean(correct)), len(items), per_kind, preds, correct)


def image_qa_accuracy(
    model, items, *, batch_size: int = 32, interventions=(), hooks=(), noise: float = 0.0, noise_seed: int = 0
) -> QAResult:
    """Exact-match accuracy on image questions (pixel_values passed; all answer tokens must be argmax).
    `noise`: Gaussian pixel noise std added to every image (see shapes.render)."""
    return _qa(
        model,
        items,
        True,
        batch_size=batch_size,
        interventions=interventions,
        hooks=hooks,
        noise=noise,
        noise_seed=noise_seed,
    )


def text_qa_accuracy(model, items, *, batch_size: int = 32, interventions=(), hooks=()) -> QAResult:
    """Exact-match accuracy on text-only questions (no image tokens, no pixel_values)."""
    return _qa(model, items, False, batch_size=batch_size, interventions=interventions, hooks=hooks)


@dataclass
class PopeResult:
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    n: int
    invalid: float  # fraction of probes whose full-vocabulary argmax is neither yes nor no
    per_probe: dict = field(default_factory=dict)  # probe type -> accuracy
    said_yes: list = field(default_factory=list)

    def to_dataframe(self):
        import pandas as pd

        row = {k: getattr(self, k) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "invalid", "n")}
        row.update({f"acc_{k}": v for k, v in self.per_probe.items()})
        return pd.DataFrame([row])


def pope_metrics(labels, said_yes) -> dict:
    """POPE's metrics from boolean labels (object present) and answers (said yes); yes is the positive class."""
    y, p = np.asarray(labels, bool), np.asarray(said_yes, bool)
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": float((y == p).mean()),
        "precision": prec,
        "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "yes_ratio": float(p.mean()),
    }


def pope(
    model, items, *, batch_size: int = 32, interventions=(), hooks=(), noise: float = 0.0, noise_seed: int = 0
) -> PopeResult:
    """POPE on "is there a <colour> <shape> ?" probes (items from shapes.pope_items)."""
    _check_items(items, True)
    if any(it.kind != "pope" for it in items):
        raise InputError("pope() takes POPE probes only: build them with shapes.pope_items(seed, n_scenes)")
    logits = teacher_forced(
        model,
        items,
        batch_size=batch_size,
        interventions=interventions,
        hooks=hooks,
        noise=noise,
        noise_seed=noise_seed,
    )
    yes, no = _WORD_ID["yes"], _WORD_ID["no"]
    said_yes = [bool(lg[0, yes] > lg[0, no]) for lg in logits]
    invalid = float(np.mean([lg[0].argmax() not in (yes, no) for lg in logits]))
    labels = [it.meta["label"] for it in items]
    probes = sorted({it.meta["probe"] for it in items})
    per_probe = {
        p: float(np.mean([s == lab for s, lab, it in zip(said_yes, labels, items) if it.meta["probe"] == p]))
        for p in probes
    }
    return PopeResult(
        **pope_metrics(labels, said_yes), n=len(items), invalid=invalid, per_probe=per_probe, said_yes=said_yes
    )


def describe(
    model,
    scenes,
    *,
    max_new_tokens: int = 13,
    batch_size: int = 32,
    interventions=(),
    hooks=(),
    noise: float = 0.0,
    noise_seed: int = 0,
) -> list[str]:
    """Greedy descriptions ("red circle top-left , blue square bottom-right .") of each scene.

    On a TransformerBridge each scene is generated by `headscope.generation.greedy_generate` (KV cache,
    `interventions` applied by the driver's position rules; raw `hooks` around every forward); a
    description stops at its "." token. The plain HF model (the reference) recomputes batches of
    `batch_size` scenes every step instead. Returns the generated words joined by spaces.
    """
    if not scenes:
        raise InputError("no scenes given: pass a list of shapes.Scene (e.g. default_eval_sets()['describe'])")
    prompt = W.prompt_ids(W.describe_item(scenes[0]))
    end = _WORD_ID[W.END]
    if not hasattr(model, "hooks"):
        with _applied(model, interventions, hooks):  # refuses interventions/hooks on a plain HF model
            return _describe_recompute(model, scenes, prompt, end, max_new_tokens, batch_size, noise, noise_seed)
    plan = plan_interventions(model, list(interventions))  # checked and prepared once for every scene
    texts: list[str] = []
    with _applied(model, (), hooks):
        for scene in scenes:
            pixels = W.render(scene, noise, noise_seed).unsqueeze(0)
            tokens = greedy_generate(model, prompt, max_new_tokens, [end], interventions=plan, pixel_values=pixels)
            texts.append(" ".join(_ID_WORD[t] for t in tokens))
    return texts


def _describe_recompute(model, scenes, prompt, end, max_new_tokens, batch_size, noise, noise_seed) -> list[str]:
    """Batched greedy descriptions by full recomputation every step (pixel_values passed each step);
    finished rows emit pads."""
    texts: list[str] = []
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start : start + batch_size]
        pixels = W.render_batch(batch, noise, noise_seed)
        ids = torch.tensor([prompt] * len(batch))
        done = torch.zeros(len(batch), dtype=torch.bool)
        for _ in range(max_new_tokens):
            nxt = _logits(model, ids, pixels)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, W.PAD_ID), nxt)  # finished rows emit pads
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == end
            if done.all():
                break
        for row in ids[:, len(prompt) :].tolist():
            texts.append(" ".join(_ID_WORD[t] for t in row if t != W.PAD_ID))
    return texts


def mentioned_objects(text) -> list[tuple[str, str]]:
    """(colour, shape) of every ", "/"."-separated chunk that names a colour and a shape, in order."""
    words = text.split() if isinstance(text, str) else list(text)
    chunks: list[list[str]] = []
    cur: list[str] = []
    for w in words + [","]:
        if w in (",", "."):
            chunks.append(cur)
            cur = []
        else:
            cur.append(w)
    out = []
    for c in chunks:
        colour = next((w for w in c if w in W.COLOURS), None)
        shape = next((w for w in c if w in W.SHAPES), None)
        if colour and shape:
            out.append((colour, shape))
    return out


def chair(scenes, texts) -> dict:
    """CHAIR for descriptions: objects = (colour, shape), each counted once per description.

    chair_i = hallucinated mentions / all mentions; chair_s = fraction of descriptions with at least one
    hallucinated object; recall = true objects mentioned / all true objects. Cell names are not scored.
    """
    if len(scenes) != len(texts):
        raise InputError(f"chair: {len(scenes)} scenes but {len(texts)} texts; pass one text per scene")
    if not scenes:
        raise InputError("chair: no scenes given")
    n_mention = n_halluc = n_true = n_hit = n_bad_text = 0
    for scene, text in zip(scenes, texts):
        mentions = set(mentioned_objects(text))
        truth = {o.kind for o in scene.objects}
        bad = mentions - truth
        n_mention += len(mentions)
        n_halluc += len(bad)
        n_bad_text += bool(bad)
        n_true += len(truth)
        n_hit += len(mentions & truth)
    return {
        "chair_i": n_halluc / n_mention if n_mention else 0.0,
        "chair_s": n_bad_text / len(scenes),
        "recall": n_hit / n_true,
        "n_mentions": n_mention,
        "n_texts": len(scenes),
    }


EVAL_SEED = 20_251_121  # far from the training seeds, so held-out scenes are new draws
# The held-out sets `default_eval_sets` returns (headscope.vision.datasets loads them by this name).
Split = Literal["image_qa", "text_qa", "pope", "describe"]


def default_eval_sets(
    seed: int = EVAL_SEED, n_image: int = 300, n_pope_scenes: int = 150, n_describe: int = 100
) -> dict:
    """Fixed held-out sets: image_qa (one-word image questions, kinds balanced), text_qa (every text
    item), pope (balanced present/absent probes), describe (scenes)."""
    rng = np.random.default_rng(seed)
    kinds = W.SINGLE_ANSWER_KINDS
    image_qa = [W.sample_image_item(rng, W.sample_scene(rng), kinds[i % len(kinds)]) for i in range(n_image)]
    return {
        "image_qa": image_qa,
        "text_qa": W.text_items(),
        "pope": W.pope_items(seed + 1, n_pope_scenes),
        "describe": [W.sample_scene(np.random.default_rng([seed, 2, i])) for i in range(n_describe)],
    }
