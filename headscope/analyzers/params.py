"""Declarative parameter constraints for analyzers, checked in one place (`Analyzer.fit`).

An analyzer lists, per parameter, the kinds of value it accepts (any one of them will do):

    parameter_constraints = {
        "epsilon": [Interval(float, 0, None)],            # a number >= 0
        "mode": [Options("teacher_forced", "generate")],
        "sink_dims": [None, IntList(min_len=1)],          # None or a non-empty list of ints
    }

Constraints that depend on the model (a head index below n_heads) or on two parameters at once go in
the analyzer's `_check_params(info)`, which `fit` calls right after these.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..errors import InputError


class Constraint:
    """One kind of acceptable value: `accepts(value)` and a phrase for the error message."""

    def accepts(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def invalid_example(self):
        """A value this constraint rejects (the conformance check feeds it to `fit`)."""
        return object()


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass(frozen=True)
class Interval(Constraint):
    """A number of `kind` (int or float) in [low, high] (None = unbounded); `closed` says which ends count."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right" or "neither"

    def accepts(self, v) -> bool:
        if not (_is_int(v) if self.kind is int else _is_real(v)):
            return False
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        return lo_ok and hi_ok

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is None:
            return f"{what} {'>=' if self.closed in ('both', 'left') else '>'} {self.low}"
        if self.low is None and self.high is not None:
            return f"{what} {'<=' if self.closed in ('both', 'right') else '<'} {self.high}"
        if self.low is None:
            return what
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"{what} in {left}{self.low}, {self.high}{right}"

    def invalid_example(self):
        if self.low is not None:
            return self.low - 1
        return "not a number"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (usually strings)."""

    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, v) -> bool:
        return isinstance(v, (str, bool, int, float, type(None))) and any(
            v == o and type(v) is type(o) for o in self.values
        )

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.values)

    def invalid_example(self):
        return "not-an-option"


class Boolean(Constraint):
    def accepts(self, v) -> bool:
        return isinstance(v, bool)

    def describe(self) -> str:
        return "True or False"

    def invalid_example(self):
        return "yes"


@dataclass(frozen=True)
class IntList(Constraint):
    """A list/tuple of integers (each >= `low` when given), at least `min_len` long."""

    min_len: int = 1
    low: int | None = None

    def accepts(self, v) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) >= self.min_len
            and all(_is_int(x) and (self.low is None or x >= self.low) for x in v)
        )

    def describe(self) -> str:
        floor = f" >= {self.low}" if self.low is not None else ""
        return f"a list of integers{floor}" + (" (non-empty)" if self.min_len else "")

    def invalid_example(self):
        return ["x"]


class HeadList(Constraint):
    """A non-empty list of (layer, head) pairs of integers (checked against the model in fit)."""

    def accepts(self, v) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) > 0
            and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(x) for x in p) for p in v)
        )

    def describe(self) -> str:
        return "a non-empty list of (layer, head) pairs"

    def invalid_example(self):
        return [(0,)]


@dataclass(frozen=True)
class Text(Constraint):
    """A string, containing `contains` when given (e.g. a template's "{query}" placeholder)."""

    contains: str | None = None

    def accepts(self, v) -> bool:
        return isinstance(v, str) and (self.contains is None or self.contains in v)

    def describe(self) -> str:
        return f"a string containing {self.contains}" if self.contains else "a string"

    def invalid_example(self):
        return 3 if self.contains is None else "no placeholder"


class IsCallable(Constraint):
    def accepts(self, v) -> bool:
        return callable(v)

    def describe(self) -> str:
        return "a callable"

    def invalid_example(self):
        return 3.5


class Anything(Constraint):
    """Accepted as is; the analyzer checks it itself (say where in the docstring)."""

    def accepts(self, v) -> bool:
        return True

    def describe(self) -> str:
        return "any value"


def _describe(option) -> str:
    return "None" if option is None else option.describe()


def check_params(owner: str, params: dict, constraints: dict) -> None:
    """Raise InputError naming the first parameter whose value no constraint accepts."""
    for name, options in constraints.items():
        value = params[name]
        if any(value is None if opt is None else opt.accepts(value) for opt in options):
            continue
        raise InputError(f"{owner}: {name}={value!r} must be " + " or ".join(_describe(o) for o in options))


__all__ = [
    "Anything",
    "Boolean",
    "Constraint",
    "HeadList",
    "IntList",
    "Interval",
    "IsCallable",
    "Options",
    "Text",
    "check_params",
]
