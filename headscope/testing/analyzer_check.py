"""The analyzer contract as named checks, like scikit-learn's `check_estimator` / `parametrize_with_checks`.

All at once, reporting every broken rule:

    >>> from headscope.testing import check_analyzer
    >>> check_analyzer(MyAnalyzer)      # one AssertionError that names each broken rule

One pytest test per rule (test ids `my-heads-fits_on_test_models`, `my-heads-refit`, ...):

    >>> from headscope.testing import parametrize_with_checks
    >>> @parametrize_with_checks([MyAnalyzer])
    ... def test_contract(analyzer, check):
    ...     check(analyzer)

`analyzer_checks(MyAnalyzer)` yields the checks themselves (`check.name`, `check.rule`). They fit the
analyzer on two tiny test models (random weights and planted heads, or their image-token / LLaVA variants
when the class `requires` them) with its `example_data` and `example_params`, in seconds, and check:
parameters only stored by `__init__`, declared and enforced (`parameter_constraints`), `clone`, clear
errors before `fit`, `fit` returning self with `scores_` a [prompt, layer, head] HeadScores, `heads_` a
valid selection from `ranking_`, no parameter changed, the same result twice and from prepared data, no
attribute of an earlier fit surviving a refit, results that save, load and plot, and `ci()` holding the
score (or refusing with InputError). The checks of one analyzer share its fits (each made once, on
first use), so checking rule by rule costs what checking all at once does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

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


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)


class FitFailed(AssertionError):
    """`fit` raised on a test model: every check that reads that fit fails with this."""


@dataclass
class _Fit:
    """One fit on one test model, and the later fits of its checks (each made on first use)."""

    model: Any
    data: Any
    an: Analyzer
    out: Any
    before: str  # repr of the parameters before fit
    scores: Any
    heads: list
    _again: Analyzer | None = None
    _prepared: tuple[Analyzer, Any] | None = None  # (the analyzer fitted on prepared data, its scores_)

    def again(self) -> Analyzer:
        if self._again is None:
            self._again = self.an.clone().fit(self.model, type(self.an).example_data(self.model))
        return self._again

    def from_prepared(self) -> tuple[Analyzer, Any]:
        if self._prepared is None:
            fitted = self.an.clone().fit(self.model, self.an.prepare_data(self.model, self.data))
            self._prepared = (fitted, fitted.scores_)  # scores_ kept: the refit check refits this analyzer
        return self._prepared


@dataclass
class _Subject:
    """One analyzer class under check: its test models and fits, made on first use and shared by its
    checks; dropped once each check has run (a parametrized suite would otherwise hold every analyzer's)."""

    cls: type[Analyzer]
    given: dict | None
    n_checks: int
    _models: dict | None = None
    _fits: dict = field(default_factory=dict)  # label -> _Fit or the FitFailed it raised
    _ran: set = field(default_factory=set)

    @property
    def models(self) -> dict:
        if self._models is None:
            self._models = dict(self.given) if self.given else models_for(self.cls.requires)
        return self._models

    def fit(self, label: str) -> _Fit:
        if label not in self._fits:
            model = self.models[label]
            try:
                data = self.cls.example_data(model)
                an = self.cls(**self.cls.example_params)
                before = repr(an.get_params())
                out = an.fit(model, data)
                self._fits[label] = _Fit(model, data, an, out, before, an.scores_, list(an.heads_))
            except Exception as err:  # any error of the analyzer's own code is the finding: report it by rule
                failed = FitFailed(
                    f"{self.cls.__name__} breaks the analyzer contract (fits on the test models): on {label}, "
                    f"fit raised {type(err).__name__}: {err}"
                )
                failed.__cause__ = err
                self._fits[label] = failed
        got = self._fits[label]
        if isinstance(got, FitFailed):
            raise got.with_traceback(None)  # the same failure for every check: no traceback piling up
        return got

    def fits(self) -> Iterator[tuple[str, _Fit]]:
        for label in self.models:
            yield label, self.fit(label)

    def done(self, name: str) -> None:
        self._ran.add(name)
        if len(self._ran) >= self.n_checks:
            self._models, self._fits, self._ran = None, {}, set()


Fail = Callable[[str], NoReturn]
_CHECKS: list[tuple[str, str, Callable[[_Subject, Fail], None]]] = []


def _check(name: str, rule: str):
    """Register a check: `name` is its test id, `rule` the words its failure message names."""

    def register(fn):
        _CHECKS.append((name, rule, fn))
        return fn

    return register


@dataclass(frozen=True)
class AnalyzerCheck:
    """One rule of the contract for one analyzer class; call it (with that class, or nothing) to check."""

    analyzer: type[Analyzer]
    name: str  # the test id, e.g. "fits_on_test_models"
    rule: str  # the rule's words in failure messages, e.g. "fit returns self"
    _fn: Callable[[_Subject, Fail], None] = field(repr=False)
    _subject: _Subject = field(repr=False, compare=False)

    def __call__(self, analyzer=None) -> None:
        if analyzer is not None and _class_of(analyzer) is not self.analyzer:
            raise InputError(
                f"check {self.name!r} was made for {self.analyzer.__name__}, not {_class_of(analyzer).__name__}"
            )
        cls = self.analyzer

        def fail(detail: str) -> NoReturn:
            raise AssertionError(f"{cls.__name__} breaks the analyzer contract ({self.rule}): {detail}")

        try:
            self._fn(self._subject, fail)
        finally:
            self._subject.done(self.name)


def _class_of(analyzer) -> type[Analyzer]:
    cls = analyzer if isinstance(analyzer, type) else type(analyzer)
    if not issubclass(cls, Analyzer):
        raise InputError(f"{cls.__name__} is not a headscope Analyzer subclass")
    return cls


def analyzer_checks(analyzer, models: dict | None = None) -> Iterator[AnalyzerCheck]:
    """The contract's checks for an analyzer class (or instance: its class), one per rule, in order.
    `models` ({label: model}) replaces the built-in tiny test models."""
    cls = _class_of(analyzer)
    subject = _Subject(cls, models, len(_CHECKS))
    for name, rule, fn in _CHECKS:
        yield AnalyzerCheck(cls, name, rule, fn, subject)


def check_analyzer(analyzer, models: dict | None = None) -> list[str]:
    """Run every check of `analyzer_checks`; raise one AssertionError naming each broken rule, else return
    the labels of the models it fit on."""
    cls = _class_of(analyzer)
    checks = list(analyzer_checks(cls, models))
    labels = list(checks[0]._subject.models)  # built once here, shared by the checks
    broken, fit_errors = [], set()
    for check in checks:
        try:
            check()
        except FitFailed as err:
            seen = str(err) in fit_errors
            fit_errors.add(str(err))
            broken.append(f"- {check.name}: " + ("not checked: the fit failed (above)" if seen else str(err)))
        except AssertionError as err:
            broken.append(f"- {check.name}: {err}")
        except Exception as err:  # a check that crashes on this analyzer is a broken rule too: name it, go on
            broken.append(f"- {check.name} ({check.rule}): raised {type(err).__name__}: {err}")
    if broken:
        raise AssertionError(
            f"{cls.__name__} fails {len(broken)} of {len(checks)} checks of the analyzer contract:\n"
            + "\n".join(broken)
        )
    return labels


def parametrize_with_checks(analyzers, models: dict | None = None):
    """A `pytest.mark.parametrize("analyzer, check", ...)` over every (analyzer, check) pair, with ids
    `<analyzer name>-<check name>`; the test body is `check(analyzer)`."""
    import pytest  # only here: headscope.testing is importable without pytest

    params = [
        pytest.param(check.analyzer, check, id=f"{check.analyzer.name or check.analyzer.__name__}-{check.name}")
        for analyzer in analyzers
        for check in analyzer_checks(analyzer, models)
    ]
    return pytest.mark.parametrize("analyzer, check", params)


# ---- the rules ---------------------------------------------------------------------------------------


@_check("class_attributes", "class attributes")
def _class_attributes(s: _Subject, fail: Fail) -> None:
    empty = [attr for attr in ("name", "description", "input_kind") if not getattr(s.cls, attr, "")]
    if empty:
        fail(f"{', '.join(f'`{a}`' for a in empty)} empty")


@_check("registry", "registry")
def _registry(s: _Subject, fail: Fail) -> None:
    if s.cls.name in REGISTRY and REGISTRY[s.cls.name] is not s.cls:
        fail(f"the name {s.cls.name!r} belongs to {REGISTRY[s.cls.name].__name__}")


@_check("defaults", "defaults")
def _defaults(s: _Subject, fail: Fail) -> None:
    sig = inspect.signature(s.cls.__init__)
    missing = [n for n in s.cls._param_names() if sig.parameters[n].default is inspect.Parameter.empty]
    if missing:
        fail(f"parameters {missing} have no default (fit must run with defaults)")


@_check("parameter_constraints", "parameter_constraints")
def _parameter_constraints(s: _Subject, fail: Fail) -> None:
    names, constraints = s.cls._param_names(), s.cls.parameter_constraints
    undeclared = set(names) - set(constraints)
    if undeclared:
        fail(f"no constraints for {sorted(undeclared)}")
    sig = inspect.signature(s.cls.__init__)
    for name in names:
        default = sig.parameters[name].default
        if default is inspect.Parameter.empty:
            continue  # the defaults check reports it
        if not any(default is None if o is None else o.accepts(default) for o in constraints[name]):
            fail(f"the default {name}={default!r} is rejected by its own constraints")


@_check("init_stores_parameters_only", "__init__ stores parameters only")
def _init_stores_parameters_only(s: _Subject, fail: Fail) -> None:
    params = dict(s.cls.example_params)
    an = s.cls(**params)
    extra = set(vars(an)) - set(s.cls._param_names())
    if extra:
        fail(f"__init__ also set {sorted(extra)}")
    got = an.get_params()
    if any(got[k] is not v for k, v in params.items()):
        fail(
            f"a parameter was converted or copied in __init__ (got {got}, given {params}); keep it as given and check it in fit"
        )


@_check("clone", "clone")
def _clone(s: _Subject, fail: Fail) -> None:
    an = s.cls(**s.cls.example_params)
    clone = an.clone()
    if type(clone) is not s.cls or clone is an or clone.get_params().keys() != an.get_params().keys():
        fail("clone() must return a new unfitted instance with the same parameters")


@_check("not_fitted", "not fitted")
def _not_fitted(s: _Subject, fail: Fail) -> None:
    an = s.cls(**s.cls.example_params)
    for attr in ("scores_", "heads_", "ranking_"):
        try:
            getattr(an, attr)
        except NotFittedError:
            continue
        fail(f"reading {attr} before fit did not raise NotFittedError")


@_check("parameter_errors", "parameter errors")
def _parameter_errors(s: _Subject, fail: Fail) -> None:
    """Each parameter set to a value its constraints reject: fit raises InputError naming it."""
    model = next(iter(s.models.values()))
    data = s.cls.example_data(model)
    for name, options in s.cls.parameter_constraints.items():
        bad = next((o.invalid_example() for o in options if o is not None), None)
        if bad is None or any(bad is None if o is None else o.accepts(bad) for o in options):
            continue  # nothing is invalid for this parameter (Anything)
        an = s.cls(**{**s.cls.example_params, name: bad})
        try:
            an.fit(model, data)
        except InputError as err:
            if name not in str(err):
                fail(f"{name}={bad!r} raised an error that does not name it: {err}")
            continue
        fail(f"fit accepted {name}={bad!r}")


@_check("fits_on_test_models", "fit returns self")
def _fits(s: _Subject, fail: Fail) -> None:
    for label, f in s.fits():
        if f.out is not f.an:
            fail(f"on {label}: fit returned {type(f.out).__name__}")


@_check("fit_leaves_parameters_alone", "fit leaves parameters alone")
def _leaves_parameters(s: _Subject, fail: Fail) -> None:
    for _, f in s.fits():
        if repr(f.an.get_params()) != f.before:
            fail(f"{f.before} became {f.an.get_params()!r}")


@_check("scores", "scores_")
def _scores(s: _Subject, fail: Fail) -> None:
    measured = False
    for label, f in s.fits():
        if not isinstance(f.scores, HeadScores) or f.scores.values.ndim != 3:
            fail(f"on {label}: not a [prompt, layer, head] HeadScores")
        measured = measured or bool(np.isfinite(f.scores.values).any())
    if not measured:
        fail(f"every score is NaN on every test model ({', '.join(s.models)}): nothing was checked")


@_check("heads", "heads_")
def _heads(s: _Subject, fail: Fail) -> None:
    for label, f in s.fits():
        measured = set(f.an.ranking_)
        if not all(h in measured for h in f.heads):
            fail(f"on {label}: heads_ {f.heads} holds heads that ranking_ does not (unmeasured)")


@_check("deterministic", "deterministic")
def _deterministic(s: _Subject, fail: Fail) -> None:
    for label, f in s.fits():
        again = f.again()
        if not _same(again.scores_.values, f.scores.values) or again.heads_ != f.heads:
            fail(f"on {label}: a second fit on the same data gave other scores or heads")


@_check("prepare_data", "prepare_data")
def _prepare_data(s: _Subject, fail: Fail) -> None:
    for label, f in s.fits():
        if not _same(f.from_prepared()[1].values, f.scores.values):
            fail(f"on {label}: fitting prepared data gave other scores (not idempotent)")


@_check("refit", "refit")
def _refit(s: _Subject, fail: Fail) -> None:
    for _, f in s.fits():
        an = f.from_prepared()[0]
        an.__dict__["stale_"] = "left over"  # as if an earlier fit had set it
        an.fit(f.model, f.data)
        if "stale_" in vars(an):
            fail("an attribute of an earlier fit survived a refit")


@_check("results", "results")
def _results(s: _Subject, fail: Fail) -> None:
    for label, f in s.fits():
        if f.scores.to_dataframe().empty:
            fail(f"on {label}: scores_.to_dataframe() is empty")
        if f.an.plot() is None:
            fail(f"on {label}: plot() returned nothing")


@_check("ci", "ci")
def _ci(s: _Subject, fail: Fail) -> None:
    """ci() is an interval around the analyzer's own score (its prompt mean), or an InputError saying why not."""
    for label, f in s.fits():
        try:
            ci = f.an.ci(n_boot=100, seed=0)
        except InputError:
            continue  # a refusal (ci_refusal), one prompt, or nothing to resample: the message says which
        mean = f.scores.mean_over_prompts().values
        if ci.estimate.shape != mean.shape or not np.allclose(ci.estimate, mean, rtol=1e-9, atol=1e-12, equal_nan=True):
            fail(f"on {label}: ci().estimate is not the prompt mean of scores_")
        ok = np.isfinite(ci.estimate) & np.isfinite(ci.low) & np.isfinite(ci.high)
        if not ((ci.low[ok] <= ci.estimate[ok]) & (ci.estimate[ok] <= ci.high[ok])).all():
            fail(f"on {label}: an interval does not hold its estimate")


__all__ = ["AnalyzerCheck", "FitFailed", "analyzer_checks", "check_analyzer", "models_for", "parametrize_with_checks"]
