"""The safety prompt sets shipped in data/safety/ (written for headscope; see its README.md).

train_harmful.json   harmful requests + short refusals        -> "harmful-train"
train_harmless.json  harmless requests + short helpful answers -> "harmless-train"
heldout.json         25 harmful + 25 harmless requests        -> "harmful-heldout", "harmless-heldout"
"""

from __future__ import annotations

import json
from functools import cache
from typing import Literal, get_args

from ..errors import HeadscopeError, InputError
from ..experiment_registry import GENERATORS, Generator, one_of, params_of
from ..paths import data_dir

PromptSet = Literal["harmful-train", "harmless-train", "harmful-heldout", "harmless-heldout"]
PROMPT_SETS: tuple[PromptSet, ...] = get_args(PromptSet)
TrainingSet = Literal["harmful", "harmless"]
_TRAIN_FILES: dict[TrainingSet, str] = {"harmful": "train_harmful.json", "harmless": "train_harmless.json"}


@cache
def _load(filename: str) -> dict:
    path = data_dir() / "safety" / filename
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HeadscopeError(
            f"cannot read the safety prompt file {path}: {exc}. Fix: restore data/safety/ from the repository."
        ) from exc


def training_pairs(kind: TrainingSet) -> list[tuple[str, str]]:
    """(prompt, target response) pairs of the training set `kind` ("harmful" or "harmless").

    Harmful prompts are paired with refusals, harmless ones with helpful answers.
    """
    if kind not in _TRAIN_FILES:
        raise InputError(f"unknown training set {kind!r}; known: {sorted(_TRAIN_FILES)}")
    return [(it["prompt"], it["response"]) for it in _load(_TRAIN_FILES[kind])["items"]]


def prompt_set(name: PromptSet) -> list[str]:
    """The prompts of a named set: "harmful-train", "harmless-train", "harmful-heldout" or
    "harmless-heldout" (a fresh list; the held-out sets have 25 prompts each).

    Example:
        >>> len(prompt_set("harmful-heldout"))
        25
    """
    if name not in PROMPT_SETS:
        raise InputError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
    kind: TrainingSet = "harmful" if name.startswith("harmful-") else "harmless"
    if name.endswith("-train"):
        return [p for p, _ in training_pairs(kind)]
    return list(_load("heldout.json")[kind])


# ---- `headscope run` data generator: a spec's `generator: prompt_set` ----------------------------------


def _prompt_set_generator(model, info, name: PromptSet) -> list[str]:
    return prompt_set(name)


GENERATORS.register(
    "prompt_set",
    Generator(
        _prompt_set_generator,
        yields="text",
        params=params_of(prompt_set, checks={"name": one_of(PROMPT_SETS, "prompt set")}),
        doc="a named safety prompt set (prompt_set); needs no model",
    ),
)
