"""The analyzer contract (scikit-learn shaped) and the registry the CLI and experiment specs use.

    @register
    class MyAnalyzer(Analyzer):
        name = "my-analyzer"                       # registry key: `headscope analyze my-analyzer`
        input_kind = "token prompts"               # what `data` is (one phrase; see prepare_data)
        parameter_constraints = {"threshold": [Interval(float, 0, None)]}

        def __init__(self, threshold=0.1):         # only stores parameters
            self.threshold = threshold

        def prepare_data(self, model, data=None):  # the one public normaliser (None = built-in data)
            return as_token_prompts(model, data)

        def _fit(self, model, data):               # data already prepared and parameters checked
            self.scores_ = ...                     # HeadScores [prompt, layer, head]
            self.heads_ = select_heads(self.scores_, threshold=self.threshold)

`fit(model, data=None)` is the base class's: it checks the parameters against
`parameter_constraints` and `_check_params(info)`, normalises `data` with `prepare_data`, forgets the
attributes of an earlier fit, runs `_fit`, checks the result (scores_ a [prompt, layer, head]
HeadScores, heads_ a list of valid (layer, head) pairs) and sets `ranking_` (every measured head, best
first). Reading any attribute ending in `_` before `fit` raises NotFittedError. `check_analyzer`
(headscope.testing.analyzer_check) runs a class through all of this.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from ..confidence import CIMethod
from ..errors import InputError
from ..inputs.probes import repeated_random_tokens
from ..models.info import model_info
from ..registry import Registry

# select_heads lives next to HeadScores (on top of results.rank_heads, the one head ranking, which the
# experiments use too); analyzers import it from here as before.
from ..results import HeadScores, rank_heads, select_heads  # noqa: F401
from .params import check_params

# Filled by each analyzer's own module (`@register`), wherever it lives (safety and vision analyzers
# live with their application); a lookup loads every module first (see headscope.registry).
REGISTRY: Registry[type[Analyzer]] = Registry("analyzer", fix="`headscope analyze --list` shows them")


class NotFittedError(InputError, AttributeError):
    """A fitted attribute (name ending in `_`) was read before `fit`."""


def register(cls: type[Analyzer]) -> type[Analyzer]:
    """Class decorator: make an analyzer available by its `name` (CLI, experiment specs)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    for attr in ("input_kind", "description"):
        if not getattr(cls, attr, ""):
            raise TypeError(f"{cls.__name__} needs a class attribute `{attr}` (one phrase) to be registered")
    missing = set(cls._param_names()) - set(cls.parameter_constraints)
    if missing:
        raise TypeError(f"{cls.__name__}: give parameter_constraints for {sorted(missing)}")
    return REGISTRY.register(cls.name, cls)


def get_analyzer(name: str, **params) -> Analyzer:
    """Instantiate a registered analyzer; unknown names and parameters fail with the valid ones listed."""
    cls = REGISTRY[name]
    valid = set(cls._param_names())
    unknown = set(params) - valid
    if unknown:
        raise InputError(f"analyzer {name!r} has no parameter(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(**params)


class Analyzer:
    """Base class: `__init__` stores parameters only; `fit(model, data)` returns self and sets `scores_`
    ([prompt, layer, head] HeadScores), `heads_` (the selected (layer, head) pairs, best first),
    `ranking_` (every measured head, best first) and analyzer-specific attributes ending in `_`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    input_kind: ClassVar[str] = ""  # what `data` is, in one phrase (the CLI and docs show it)
    parameter_constraints: ClassVar[dict[str, list]] = {}
    # What a model needs for this analyzer: "image_tokens" (prompts with an image block) or "vision_tower"
    # (a LLaVA-class VLM); check_analyzer picks its test models by it.
    requires: ClassVar[frozenset[str]] = frozenset()
    # Parameters that keep a fit on `example_data` to seconds on a tiny test model (check_analyzer uses both).
    example_params: ClassVar[dict[str, Any]] = {}
    # Why `ci()` cannot resample this analyzer's score (a statistic of the whole data set that needs the
    # model again for every resample); None: scores_ is a mean over its per-prompt rows, or the
    # analyzer overrides `ci` with a resampling of its own per-sample data.
    ci_refusal: ClassVar[str | None] = None

    # --- parameters -----------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> Analyzer:
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise InputError(f"{type(self).__name__} has no parameter {key!r}; valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def clone(self) -> Analyzer:
        """An unfitted copy with the same parameters (deep-copied)."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def _check_params(self, info) -> None:
        """Checks that need the model or several parameters at once (after parameter_constraints)."""

    def validate_params(self, model) -> None:
        """Raise InputError naming the first bad parameter (what `fit` does first)."""
        check_params(type(self).__name__, self.get_params(), self.parameter_constraints)
        self._check_params(model_info(model))

    # --- data and fitting -------------------------------------------------------------------------
    def prepare_data(self, model, data=None):
        """Normalise `data` into what `_fit` consumes (None = the built-in default data); raises
        InputError naming the problem. Idempotent: prepared data passes through unchanged."""
        raise NotImplementedError

    @classmethod
    def example_data(cls, model):
        """Small data for `model` (a tiny test model) that fits in seconds: what `check_analyzer` runs.
        None = the built-in default data."""
        return None

    def _fit(self, model, data) -> None:
        raise NotImplementedError

    def fit(self, model, data=None) -> Analyzer:
        """Check parameters, prepare `data`, run the analysis; returns self."""
        self.validate_params(model)
        prepared = self.prepare_data(model, data)
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]:
            delattr(self, attr)  # a refit never mixes old and new results
        self._fit(model, prepared)
        self._check_result()
        self.ranking_ = rank_heads(self.scores_)
        return self

    def _check_result(self) -> None:
        """The contract every fit must meet (a failure is a bug in the analyzer, not the user's input)."""
        scores = self.__dict__.get("scores_")
        if not isinstance(scores, HeadScores) or scores.values.ndim != 3:
            raise TypeError(f"{type(self).__name__}._fit must set scores_ to a [prompt, layer, head] HeadScores")
        heads = self.__dict__.get("heads_")
        n_layers, n_heads = scores.values.shape[1:]
        if not isinstance(heads, list) or not all(
            isinstance(h, tuple) and len(h) == 2 and 0 <= h[0] < n_layers and 0 <= h[1] < n_heads for h in heads
        ):
            raise TypeError(f"{type(self).__name__}._fit must set heads_ to a list of (layer, head) tuples")

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: a fitted attribute read too early gets a clear error.
        if name.endswith("_") and not name.startswith("__"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet (no {name}): call .fit(model, data) first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check_fitted(self) -> None:
        self.scores_  # noqa: B018  (raises NotFittedError before fit)

    def _own(self, scores: HeadScores, name: str | None = None, description: str | None = None) -> HeadScores:
        """A reducer's HeadScores re-labelled as this analyzer's result (its name and all parameters)."""
        return HeadScores(
            scores.values,
            name=name or scores.name,
            n_kv_heads=scores.n_kv_heads,
            model=scores.model,
            analyzer=self.name,
            params=self.get_params(),
            prompts=scores.prompts,
            higher_is_more=scores.higher_is_more,
            description=description or scores.description,
            layer_kinds=scores.layer_kinds,
        )

    def ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0, method: CIMethod = "percentile"):
        """Bootstrap confidence interval per head of the analyzer's score, resampling prompts with
        replacement (a HeadScoresCI; docs/confidence-intervals.md). Default: the prompt mean of
        `scores_`; analyzers whose score is not a mean over prompts resample their own per-sample data
        (retrieval, head importance) or raise InputError saying why they cannot (`ci_refusal`)."""
        self._check_fitted()
        if self.ci_refusal:
            raise InputError(f"{type(self).__name__}.ci: {self.ci_refusal}")
        return self.scores_.ci(level=level, n_boot=n_boot, seed=seed, method=method)

    def plot(self, **kw):
        """The analyzer's main figure (default: the heatmap of `scores_`)."""
        return self.scores_.plot(**kw)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def prompts_or_default(data, default: Callable[[], Any]):
    """The prompt analyzers' normaliser: `data` as given (capture checks each prompt and names a bad one),
    or `default()` when it is None."""
    if data is None:
        return default()
    if isinstance(data, (str, bytes)):
        raise InputError("data is a single string: pass a list of prompts (strings or token id lists)")
    return data


def example_prompts(model, seq_len: int = 10, n_prompts: int = 2) -> list[list[int]]:
    """Small repeated-random-token prompts for any model (what most analyzers' `example_data` gives)."""
    vocab = int(model.cfg.d_vocab)
    return repeated_random_tokens(
        vocab,
        seq_len,
        2,
        n_prompts,
        seed=0,
        token_range=(2, min(vocab, 1000)),
        first_token=model_info(model).bos_token_id,
    ).tolist()
