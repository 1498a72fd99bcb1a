"""Named shapes-world evaluation sets, as lists of QAItems (what `headscope run` specs load with
`generator: shapes`). The held-out seed is the one of `shapes_eval.default_eval_sets`."""

from __future__ import annotations

from ..errors import InputError
from . import shapes as W
from .shapes_eval import EVAL_SEED, default_eval_sets

SPLITS = ("image_qa", "text_qa", "pope", "describe")


def shapes_set(split: str = "image_qa", n: int | None = None, seed: int = EVAL_SEED) -> list:
    """The first `n` items (all if None) of a held-out split; "describe" items carry their scene."""
    if split not in SPLITS:
        raise InputError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n={n!r} must be a positive integer (or omitted for the whole split)")
    sizes = {"n_image": n or 300, "n_pope_scenes": (n + 1) // 2 if n else 150, "n_describe": n or 100}
    items = default_eval_sets(seed=seed, **sizes)[split]
    if split == "describe":
        items = [W.describe_item(scene) for scene in items]
    return items[:n] if n else items


DETECT_SEED = 7_000  # the detection set of analyses/vision_heads.py: disjoint from the held-out sets


def default_image_prompts(model, n: int = 64) -> list:
    """Built-in prompts with an image for `model`'s testbed: shapes-vlm image questions (ImagePrompts),
    or the visual-sink testbed's prompts as (prefix, image, suffix) id triples. Other models: InputError."""
    from ..models.shapes_vlm import is_shapes_vlm
    from ..models.visual_sinks import default_prompts, is_visual_sinks

    if is_shapes_vlm(model):
        return [W.item_prompt(it) for it in shapes_set("image_qa", n=n, seed=DETECT_SEED)]
    if is_visual_sinks(model):
        out = []
        for p in default_prompts(model):
            (s, e), ids = p.image_span, list(p.ids)
            out.append((ids[:s], ids[s:e], ids[e:]))
        return out
    raise InputError("no built-in image prompts for this model. Fix: pass ImagePrompts, e.g. "
                     "ImagePrompt.from_processor(processor, text, image) for a LLaVA-family model.")


# ---- `headscope run` data generator: a spec's `generator: shapes` --------------------------------------
from ..experiment_registry import GENERATORS, Generator, one_of, params_of  # noqa: E402


def _shapes_generator(model, info, **params) -> list:
    return shapes_set(**params)


def _item_prompts(items) -> list:
    return [W.item_prompt(it) for it in items]  # ImagePrompts (image items) or id lists: what analyzers take


GENERATORS.register("shapes", Generator(
    _shapes_generator, yields="shapes", model_inputs=_item_prompts,
    params=params_of(shapes_set, checks={"split": one_of(SPLITS, "split")}),
    doc="held-out shapes-world QA items with their images (shapes_set)"))
