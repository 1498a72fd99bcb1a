"""Typed readers for spec fields: every error names the field's path (`units[2].conditions[0].top_k`).

A `Section` wraps one YAML mapping; each `get` marks its key as known, and `finish()` rejects the
keys nobody asked for (typos like `metrc:` fail with a suggestion instead of being ignored).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from ..experiment_registry import Param, params_of

MISSING = object()
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe as a file name on every OS


def fail(path: str, message: str) -> InputError:
    return InputError(f"{path}: {message}" if path else message)


def type_name(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def unknown_keys(path: str, keys, allowed) -> InputError:
    allowed = sorted(allowed)
    hints = []
    for key in sorted(map(str, keys)):
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    where = path or "the spec"
    return InputError(f"{where}: unknown field(s) {', '.join(hints)}; allowed here: {', '.join(allowed)}")


class Section:
    """One mapping of the spec, read field by field."""

    def __init__(self, raw: Any, path: str):
        if not isinstance(raw, dict):
            raise fail(path, f"must be a mapping (key: value lines), got {type_name(raw)}")
        self.raw, self.path = raw, path
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        self.used.add(key)
        return key in self.raw

    def get(self, key: str, check: Callable[[Any, str], Any] | None = None, default: Any = MISSING) -> Any:
        self.used.add(key)
        if key not in self.raw or (self.raw[key] is None and default is not MISSING):
            if default is MISSING:
                close = difflib.get_close_matches(key, [k for k in map(str, self.raw) if k != key], n=1)
                hint = f" (is {close[0]!r} a misspelling of {key!r}?)" if close else ""
                raise fail(self.at(key), f"required field is missing{hint}")
            return default
        value = self.raw[key]
        return check(value, self.at(key)) if check else value

    def finish(self, extra_allowed=()) -> None:
        unknown = set(self.raw) - self.used - set(extra_allowed)
        if unknown:
            raise unknown_keys(self.path, unknown, self.used | set(extra_allowed))


# ---- checkers: (value, path) -> normalised value ------------------------------------------------------


def as_str(value, path):
    if not isinstance(value, str) or not value.strip():
        raise fail(path, f"must be a non-empty string, got {type_name(value)} {value!r}")
    return value


def as_name(value, path):
    as_str(value, path)
    if not NAME_RE.match(value):
        raise fail(
            path, f"{value!r} is not a valid name: use letters, digits, '_', '-' or '.' (it becomes a file name)"
        )
    return value


def as_int(value, path, minimum: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"must be an integer, got {type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise fail(path, f"must be >= {minimum}, got {value}")
    return value


def int_at_least(minimum: int):
    return lambda value, path: as_int(value, path, minimum)


def as_number(value, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, f"must be a number, got {type_name(value)} {value!r}")
    return value


def as_bool(value, path):
    if not isinstance(value, bool):
        raise fail(path, f"must be true or false, got {type_name(value)} {value!r}")
    return value


def as_mapping(value, path):
    if not isinstance(value, dict):
        raise fail(path, f"must be a mapping (key: value), got {type_name(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise fail(path, f"keys must be strings, got {bad[0]!r}")
    return dict(value)


def as_list(value, path):
    if not isinstance(value, list):
        raise fail(path, f"must be a list, got {type_name(value)} {value!r}")
    return value


def as_int_list(minimum: int = 0):
    """An integer or a non-empty list of integers (e.g. `top_k: 5` or `top_k: [1, 5, 10]`)."""

    def check(value, path):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise fail(path, "is an empty list: give at least one value")
        out = [as_int(v, f"{path}[{i}]" if isinstance(value, list) else path, minimum) for i, v in enumerate(items)]
        if len(set(out)) != len(out):
            raise fail(path, f"has repeated values {out}")
        return out

    return check


def as_heads(value, path):
    """A list of [layer, head] pairs (ranges are checked once the model is loaded)."""
    as_list(value, path)
    out = []
    for i, pair in enumerate(value):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)
        ):
            raise fail(f"{path}[{i}]", f"must be a [layer, head] pair of integers, got {pair!r}")
        out.append((pair[0], pair[1]))
    if len(set(out)) != len(out):
        raise fail(path, f"names a head twice: {out}")
    return out


# ---- parameters of analyzers, intervention kinds, evaluators and generators --------------------------


def check_params(params: dict, declared, path: str) -> None:
    """`params` against declared `Param`s: names (with "did you mean"), required ones, the type of each
    default, nested `fields`, then each Param's own check. Errors name `path.<param>`."""
    known = {p.name: p for p in declared}
    if params and not known:
        raise fail(path, f"takes no parameters, got {sorted(params)}")
    unknown = set(params) - set(known)
    if unknown:
        raise unknown_keys(path, unknown, known)
    missing = [n for n, p in known.items() if p.required and n not in params]
    if missing:
        raise fail(path, f"missing required parameter(s) {missing}")
    resolve_params(params, declared, path)


def resolve_params(params: dict, declared, path: str = "params") -> dict:
    """The given `params`, checked and converted by their Params (defaults stay with the function)."""
    known = {p.name: p for p in declared}
    return {name: _checked(value, known[name], f"{path}.{name}") for name, value in params.items()}


def _checked(value, param: Param, where: str):
    _default_type(value, param.default, where)
    if param.fields is not None and value is not None:
        check_params(as_mapping(value, where), param.fields, where)
    if param.check is None:
        return value
    try:
        return param.check(value)
    except (InputError, ValueError, TypeError) as e:
        raise fail(where, str(e)) from None


def _default_type(value, default, where: str) -> None:
    """The obvious type of a value, read off the default (a None default accepts anything)."""
    if isinstance(default, bool) and not isinstance(value, bool):
        raise fail(where, f"must be true or false, got {type_name(value)} {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
        ok = isinstance(value, int) if isinstance(default, int) else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            want = "an integer" if isinstance(default, int) else "a number"
            raise fail(where, f"must be {want}, got {type_name(value)} {value!r}")
    if isinstance(default, str) and not isinstance(value, (str, list)):
        raise fail(where, f"must be a string, got {type_name(value)} {value!r}")


def check_call_params(params: dict, func, path: str, skip=()) -> None:
    """`params` against `func`'s signature (an analyzer's __init__, an intervention kind, a test model)."""
    check_params(params, params_of(func, skip=skip), path)
