"""The analyzer contract (scikit-learn shaped) and the registry the CLI and configs use.

    class MyAnalyzer(Analyzer):
        name = "my-analyzer"                 # registry key, used by `headscope scan my-analyzer`
        def __init__(self, threshold=0.1):   # only stores parameters
            self.threshold = threshold
        def fit(self, model, data=None):     # runs; data=None means built-in default inputs
            self.scores_ = ...               # HeadScores
            self.heads_ = select_heads(self.scores_, threshold=self.threshold)
            return self
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from ..errors import InputError
from ..registry import Registry
# select_heads lives next to HeadScores (on top of results.rank_heads, the one head ranking, which the
# experiments use too); analyzers import it from here as before.
from ..results import HeadScores, select_heads  # noqa: F401

# Filled by each analyzer's own module (`@register`), wherever it lives (safety and vision analyzers
# live with their application); a lookup loads every module first (see headscope.registry).
REGISTRY: Registry[type["Analyzer"]] = Registry("analyzer", fix="`headscope analyze --list` shows them")


def register(cls: type["Analyzer"]) -> type["Analyzer"]:
    """Class decorator: make an analyzer available by its `name` (CLI, experiment specs)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    return REGISTRY.register(cls.name, cls)


def get_analyzer(name: str, **params) -> "Analyzer":
    """Instantiate a registered analyzer; unknown names and parameters fail with the valid ones listed."""
    cls = REGISTRY[name]
    valid = set(cls._param_names())
    unknown = set(params) - valid
    if unknown:
        raise InputError(f"analyzer {name!r} has no parameter(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(**params)


class Analyzer:
    """Base class: `__init__` stores parameters only; `fit(model, data)` returns self and sets
    `scores_` (HeadScores) and `heads_` (selected (layer, head) pairs), plus analyzer-specific
    attributes ending in `_`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "Analyzer":
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise InputError(f"{type(self).__name__} has no parameter {key!r}; valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def fit(self, model, data=None) -> "Analyzer":
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise InputError(f"{type(self).__name__} is not fitted yet: call .fit(model, data) first")

    def _own(self, scores: HeadScores, name: str | None = None, description: str | None = None) -> HeadScores:
        """A reducer's HeadScores re-labelled as this analyzer's result (its name and all parameters)."""
        return HeadScores(scores.values, name=name or scores.name, n_kv_heads=scores.n_kv_heads, model=scores.model,
                          analyzer=self.name, params=self.get_params(), prompts=scores.prompts,
                          higher_is_more=scores.higher_is_more, description=description or scores.description)

    def plot(self, **kw):
        """The analyzer's main figure (default: the heatmap of `scores_`)."""
        self._check_fitted()
        return self.scores_.plot(**kw)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"
