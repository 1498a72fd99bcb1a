"""Named shapes-world evaluation sets, as lists of QAItems (what `headscope run` specs load with
`generator: shapes`). The held-out seed is the one of `shapes_eval.default_eval_sets`."""

from __future__ import annotations

from typing import get_args

from ..errors import InputError
from ..experiment_registry import GENERATORS, Generator, one_of, params_of
from ..models.catalog import default_image_prompts as _default_image_prompts
from . import shapes as W
from .shapes_eval import EVAL_SEED, Split, default_eval_sets

SPLITS: tuple[Split, ...] = get_args(Split)


def shapes_set(split: Split = "image_qa", n: int | None = None, seed: int = EVAL_SEED) -> list:
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


# Each testbed provides its own built-in image prompts (headscope/testbeds/); this is the lookup.
default_image_prompts = _default_image_prompts


# ---- `headscope run` data generator: a spec's `generator: shapes` --------------------------------------


def _shapes_generator(model, info, **params) -> list:
    return shapes_set(**params)


def _item_prompts(items) -> list:
    return [W.item_prompt(it) for it in items]  # ImagePrompts (image items) or id lists: what analyzers take


GENERATORS.register(
    "shapes",
    Generator(
        _shapes_generator,
        yields="shapes",
        model_inputs=_item_prompts,
        params=params_of(shapes_set, checks={"split": one_of(SPLITS, "split")}),
        doc="held-out shapes-world QA items with their images (shapes_set)",
    ),
)
