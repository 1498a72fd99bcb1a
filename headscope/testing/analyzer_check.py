"""`check_analyzer`: run an analyzer class through headscope's analyzer contract, like scikit-learn's
`check_estimator`. The suite runs it on every registered analyzer; run it on your own:

    >>> from headscope.testing import check_analyzer
    >>> check_analyzer(MyAnalyzer)          # raises AssertionError naming the first broken rule

It fits the analyzer on two tiny test models (random weights and planted heads, or their
image-token / LLaVA variants when the class `requires` them) with its `example_data` and
`example_params`, in seconds, and checks: parameters only stored by `__init__`, declared and enforced
(`parameter_constraints`), `clone`, clear errors before `fit`, `fit` returning self with `scores_` a
[prompt, layer, head] HeadScores, `heads_` a valid selection from `ranking_`, no parameter changed,
the same result twice and from prepared data, no attribute of an earlier fit surviving a refit,
results that save, load and plot, and `ci()` holding the score (or refusing with InputError).
"""

from __future__ import annotations

import inspect

import numpy as np

from headscope.analyzers.base import REGISTRY, Analyzer, NotFittedError
from headscope.errors import InputError
from headscope.models.info import record_facts
from headscope.results import HeadScores
from headscope.testing.planted import planted_model
from headscope.testing.tiny import tiny_model
from headscope.testing.tiny_vlm import planted_llava, tiny_llava

IMAGE_TOKEN_FOR_TESTS = 40  # a tiny model's vocabulary is 48 ids; this one plays the image token


def models_for(requires=frozenset()) -> dict:
    """{label: model} for an analyzer's requirements: two models with different weights each."""
    if "vision_tower" in requires:
        return {"tiny llava": tiny_llava(seed=0), "planted llava": planted_llava()[0]}
    if "image_tokens" not in requires:
        return {"tiny": tiny_model(seed=0), "planted": planted_model()[0]}
    # Visual sinks are looked for from layer 2 on (VAR): image analyzers get 4-layer models.
    models = {"tiny": tiny_model(n_layers=4, seed=0), "planted": planted_model(n_layers=4)[0]}
    for model in models.values():
        record_facts(model, image_token_ids=frozenset({IMAGE_TOKEN_FOR_TESTS}))
    return models


def _fail(cls, rule: str, detail: str):
    raise AssertionError(f"{cls.__name__} breaks the analyzer contract ({rule}): {detail}")


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)


def _check_class(cls) -> None:
    for attr in ("name", "description", "input_kind"):
        if not getattr(cls, attr, ""):
            _fail(cls, "class attributes", f"`{attr}` is empty")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        _fail(cls, "registry", f"the name {cls.name!r} belongs to {REGISTRY[cls.name].__name__}")
    sig = inspect.signature(cls.__init__)
    names = cls._param_names()
    missing = [n for n in names if sig.parameters[n].default is inspect.Parameter.empty]
    if missing:
        _fail(cls, "defaults", f"parameters {missing} have no default (fit must run with defaults)")
    undeclared = set(names) - set(cls.parameter_constraints)
    if undeclared:
        _fail(cls, "parameter_constraints", f"no constraints for {sorted(undeclared)}")
    for name in names:
        default = sig.parameters[name].default
        options = cls.parameter_constraints[name]
        if not any(default is None if o is None else o.accepts(default) for o in options):
            _fail(cls, "parameter_constraints", f"the default {name}={default!r} is rejected by its own constraints")


def _check_params_only(cls, params: dict) -> Analyzer:
    an = cls(**params)
    extra = set(vars(an)) - set(cls._param_names())
    if extra:
        _fail(cls, "__init__ stores parameters only", f"__init__ also set {sorted(extra)}")
    got = an.get_params()
    if any(got[k] is not v for k, v in params.items()):
        _fail(
            cls,
            "__init__ stores parameters only",
            "a parameter was converted or copied in __init__ "
            f"(got {got}, given {params}); keep it as given and check it in fit",
        )
    clone = an.clone()
    if type(clone) is not cls or clone is an or clone.get_params().keys() != got.keys():
        _fail(cls, "clone", "clone() must return a new unfitted instance with the same parameters")
    for attr in ("scores_", "heads_", "ranking_"):
        try:
            getattr(an, attr)
        except NotFittedError:
            continue
        _fail(cls, "not fitted", f"reading {attr} before fit did not raise NotFittedError")
    return an


def _check_rejects_bad_params(cls, model, data) -> None:
    """Each parameter set to a value its constraints reject: fit raises InputError naming it."""
    for name, options in cls.parameter_constraints.items():
        bad = next((o.invalid_example() for o in options if o is not None), None)
        if bad is None or any(bad is None if o is None else o.accepts(bad) for o in options):
            continue  # nothing is invalid for this parameter (Anything)
        an = cls(**{**cls.example_params, name: bad})
        try:
            an.fit(model, data)
        except InputError as err:
            if name not in str(err):
                _fail(cls, "parameter errors", f"{name}={bad!r} raised an error that does not name it: {err}")
            continue
        _fail(cls, "parameter errors", f"fit accepted {name}={bad!r}")


def _check_fit(cls, model, label: str) -> bool:
    """Fit on one model and check the result; True when some score is finite."""
    data = cls.example_data(model)
    an = cls(**cls.example_params)
    before = repr(an.get_params())
    out = an.fit(model, data)
    if out is not an:
        _fail(cls, "fit returns self", f"fit returned {type(out).__name__}")
    if repr(an.get_params()) != before:
        _fail(cls, "fit leaves parameters alone", f"{before} became {an.get_params()!r}")
    scores = an.scores_
    if not isinstance(scores, HeadScores) or scores.values.ndim != 3:
        _fail(cls, "scores_", f"on {label}: not a [prompt, layer, head] HeadScores")
    measured = set(an.ranking_)
    if not all(h in measured for h in an.heads_):
        _fail(cls, "heads_", f"on {label}: heads_ {an.heads_} holds heads that ranking_ does not (unmeasured)")
    again = an.clone().fit(model, cls.example_data(model))
    if not _same(again.scores_.values, scores.values) or again.heads_ != an.heads_:
        _fail(cls, "deterministic", f"on {label}: a second fit on the same data gave other scores or heads")
    prepared = an.prepare_data(model, data)
    from_prepared = an.clone().fit(model, prepared)
    if not _same(from_prepared.scores_.values, scores.values):
        _fail(cls, "prepare_data", f"on {label}: fitting prepared data gave other scores (not idempotent)")
    an.stale_ = "left over"
    an.fit(model, data)
    if "stale_" in vars(an):
        _fail(cls, "refit", "an attribute of an earlier fit survived a refit")
    frame = scores.to_dataframe()
    if frame.empty:
        _fail(cls, "results", "scores_.to_dataframe() is empty")
    if an.plot() is None:
        _fail(cls, "results", "plot() returned nothing")
    _check_ci(cls, an, label)
    return bool(np.isfinite(scores.values).any())


def _check_ci(cls, an, label: str) -> None:
    """ci() is an interval around the analyzer's own score (its prompt mean), or an InputError saying why not."""
    try:
        ci = an.ci(n_boot=100, seed=0)
    except InputError:
        return  # a refusal (ci_refusal), one prompt, or nothing to resample: the message says which
    mean = an.scores_.mean_over_prompts().values
    if ci.estimate.shape != mean.shape or not np.allclose(ci.estimate, mean, rtol=1e-9, atol=1e-12, equal_nan=True):
        _fail(cls, "ci", f"on {label}: ci().estimate is not the prompt mean of scores_")
    ok = np.isfinite(ci.estimate) & np.isfinite(ci.low) & np.isfinite(ci.high)
    if not ((ci.low[ok] <= ci.estimate[ok]) & (ci.estimate[ok] <= ci.high[ok])).all():
        _fail(cls, "ci", f"on {label}: an interval does not hold its estimate")


def check_analyzer(analyzer, models: dict | None = None) -> list[str]:
    """Check an analyzer class (or instance: its class) against the contract; returns the models it fit
    on. `models` ({label: model}) replaces the built-in tiny test models."""
    cls = analyzer if isinstance(analyzer, type) else type(analyzer)
    if not issubclass(cls, Analyzer):
        raise InputError(f"{cls.__name__} is not a headscope Analyzer subclass")
    _check_class(cls)
    _check_params_only(cls, dict(cls.example_params))
    models = models or models_for(cls.requires)
    first = next(iter(models.values()))
    _check_rejects_bad_params(cls, first, cls.example_data(first))
    measured = [_check_fit(cls, model, label) for label, model in models.items()]
    if not any(measured):
        _fail(cls, "scores_", f"every score is NaN on every test model ({', '.join(models)}): nothing was checked")
    return list(models)


__all__ = ["check_analyzer", "models_for"]
