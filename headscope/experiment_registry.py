"""What an experiment can measure and where its data can come from: the evaluator and data-generator
registries of `headscope run`, and the entry types their owners register.

    from headscope.experiment_registry import EVALUATORS, Evaluator

    def my_run(req, threshold=0.5):               # keyword parameters = the spec's `params:`
        return {"value": ..., "per_prompt": [...]}
    EVALUATORS.register("my_metric", Evaluator(my_run, data=("text",), better="higher"))

This module sits in the core layer (it imports only `errors` and `registry`) so that every module
that owns a method can register it where the method lives, however high that is: safety registers
attack_success_rate, vision the shapes metrics and the shapes generator, the retrieval analyzer
needle_accuracy, inputs the needle and repeated-token generators. `headscope.experiments` (the top
layer) only looks names up; a registry fills itself on first lookup (see headscope.registry).

"Which direction is better" is spelled `better` = "higher" or "lower": the direction of an
evaluator's value in which the *model* does better (accuracy: higher; attack success, hallucination
rate, KL from the clean model: lower). Head rankings use the same word (headscope.results.rank_heads).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import InputError
from .registry import Registry

REQUIRED = inspect.Parameter.empty  # a Param without a default must be given
EvalBetter = Literal["higher", "lower"]  # the direction in which the model does better
BETTER: tuple[EvalBetter, ...] = get_args(EvalBetter)
# What an evaluator may need (Evaluator.needs). The spec validation enforces each one.
Need = Literal["generation", "chat", "answers"]
NEEDS: dict[Need, str] = {
    "generation": "decodes after the prompt (greedy or teacher-forced answer), so interventions with "
    "positions: decode have a decode start; evaluators without it refuse positions: decode",
    "chat": "a chat model: the tokenizer must have a chat template (checked once the model is loaded)",
    "answers": "data with one [correct, wrong] answer pair per prompt",
}


@dataclass(frozen=True)
class Param:
    """One parameter of an evaluator or generator, as a spec gives it.

    Validation (before the model loads): the name; the type of the default (a bool default takes
    booleans, an int default integers, a float default numbers, a str default strings); then `check`.
    `check(value)` returns the value to pass on (it may convert it) or raises InputError/ValueError
    with what is wrong. `fields`: the parameters of a mapping-valued parameter, checked the same way
    before `check` sees the mapping.
    """

    name: str
    default: Any = REQUIRED
    check: Callable[[Any], Any] | None = None
    fields: tuple[Param, ...] | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def params_of(
    func: Callable, *, skip: Iterable[str] = (), checks: dict | None = None, fields: dict | None = None
) -> tuple[Param, ...]:
    """The keyword parameters of `func` as Params (defaults from the signature, so they live in one
    place), minus `skip` (what headscope supplies itself: the model, the items, ...), `*args`, `**kw`."""
    checks, fields, skip = checks or {}, fields or {}, set(skip)
    out = []
    for p in inspect.signature(func).parameters.values():
        if p.name in skip or p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out.append(Param(p.name, p.default, checks.get(p.name), fields.get(p.name)))
    unknown = (set(checks) | set(fields)) - {p.name for p in out}
    if unknown:
        raise TypeError(f"checks/fields for {sorted(unknown)}, which {func.__qualname__} does not take")
    return tuple(out)


def one_of(choices: Iterable[str], what: str) -> Callable[[Any], Any]:
    """A Param check accepting only `choices` (the error lists them)."""
    choices = tuple(choices)

    def check(value):
        if value not in choices:
            raise InputError(f"unknown {what} {value!r}; known: {', '.join(choices)}")
        return value

    return check


def _owned_by(entry, func: Callable) -> None:
    # Registry records `module.qualname` of an entry to tell a re-import from a clash; for an entry
    # object that is the function it wraps, not this module's class.
    object.__setattr__(entry, "__module__", getattr(func, "__module__", "?"))
    object.__setattr__(entry, "__qualname__", getattr(func, "__qualname__", type(func).__name__))


@dataclass
class EvalRequest:
    """What an evaluator's `run` gets for one work unit (one condition, K and seed).

    `data` is the unit's materialized dataset (`.items` as the generator made them, `.token_lists`,
    `.answers`, `.prompts` for image data, `.name`); `interventions` are the condition's specs (all
    applied at once); `cache` is shared by the work units of one experiment unit within a run (e.g.
    clean outputs); `vhr` holds a VHR condition's {alpha, layers} (evaluators with `vhr=True` only).
    """

    model: Any
    info: Any
    data: Any
    interventions: list
    name: str
    batch_size: int = 8
    cache: dict = field(default_factory=dict)
    vhr: dict | None = None


@dataclass(frozen=True)
class Evaluator:
    """An `evaluate: NAME` metric.

    run(req: EvalRequest, **params) -> {"value": float, ...}: extra JSON-able keys ("per_prompt",
        "responses", "texts" ...) are stored with the work unit's record.
    data: dataset kinds it accepts ("text", "tokens", "needle", "shapes", or a generator's own kind).
    better: "higher" or "lower" (see the module docstring).
    params: its parameters (default: the keyword parameters of `run` after `req`).
    needs: a subset of NEEDS.
    vhr: it can run a `vhr:` condition (heads chosen per prompt by VHR; `req.vhr` is set).
    check_data(dataset spec) -> None, or what the dataset lacks ("needs split: pope in dataset 'x'").
    label: the y axis of its metric-vs-K figure (default: the name).
    """

    run: Callable[..., dict]
    data: tuple[str, ...]
    better: EvalBetter
    params: tuple[Param, ...] | None = None
    needs: Collection[Need] = frozenset()  # any collection; stored as a frozenset
    vhr: bool = False
    check_data: Callable[[Any], str | None] | None = None
    label: str = ""
    doc: str = ""

    def __post_init__(self):
        object.__setattr__(self, "data", (self.data,) if isinstance(self.data, str) else tuple(self.data))
        object.__setattr__(self, "needs", frozenset(self.needs))
        if self.params is None:
            object.__setattr__(self, "params", params_of(self.run, skip=_first_arg(self.run)))
        if self.better not in BETTER:
            raise TypeError(f"Evaluator better={self.better!r}: use one of {BETTER}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise TypeError(f"Evaluator needs {sorted(unknown)}: known needs are {sorted(NEEDS)}")
        if not self.data:
            raise TypeError("Evaluator data: name at least one dataset kind it accepts")
        _owned_by(self, self.run)


@dataclass(frozen=True)
class Generator:
    """A `generator: NAME` dataset.

    make(model, info, **params) -> items: runs after the model is loaded, before any forward pass.
    yields: the kind of items (what evaluators' `data` refers to): "text" (strings), "tokens" (id
        lists), "needle" (NeedleSamples), "shapes" (shapes-world QAItems) or a kind of your own.
    params: its parameters (default: the keyword parameters of `make` after `model, info`).
    token_ids(items) -> id lists, for items that carry their own tokens (analyzers get the items).
    model_inputs(items) -> what analyzers and the tokenizer take instead of the items (ImagePrompts).
    Without either, items are prompts (strings or id lists) and are tokenized as given.
    """

    make: Callable[..., list]
    yields: str
    params: tuple[Param, ...] | None = None
    token_ids: Callable[[list], list] | None = None
    model_inputs: Callable[[list], list] | None = None
    doc: str = ""

    def __post_init__(self):
        if self.params is None:
            object.__setattr__(self, "params", params_of(self.make, skip=_first_arg(self.make, 2)))
        if self.token_ids is not None and self.model_inputs is not None:
            raise TypeError("Generator: give token_ids or model_inputs, not both")
        _owned_by(self, self.make)


def _first_arg(func: Callable, n: int = 1) -> set[str]:
    """The names of the first `n` positional parameters (what headscope passes itself)."""
    return set(list(inspect.signature(func).parameters)[:n])


_FIX = "see docs/experiments.md, 'Adding an evaluator or a data generator'"
EVALUATORS: Registry[Evaluator] = Registry("evaluator", fix=_FIX)
GENERATORS: Registry[Generator] = Registry("data generator", fix=_FIX)
# How a dataset's `chat: true` formats a text prompt: (tokenizer, text) -> token ids. The safety
# package registers "chat" (the formatting its tuning and evaluation share).
PROMPT_FORMATS: Registry[Callable[[Any, str], list]] = Registry("prompt format", fix=_FIX)

__all__ = [
    "BETTER",
    "EVALUATORS",
    "GENERATORS",
    "NEEDS",
    "PROMPT_FORMATS",
    "REQUIRED",
    "EvalBetter",
    "EvalRequest",
    "Evaluator",
    "Generator",
    "Need",
    "Param",
    "one_of",
    "params_of",
]
