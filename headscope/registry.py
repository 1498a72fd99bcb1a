"""Named registries for headscope's extension points, filled by the modules that own the entries.

Every extension point (analyzers, intervention kinds, testbeds, experiment evaluators and data
generators) is a `Registry`. The module that defines an entry registers it at import time:

    ANALYZERS.register("my-analyzer", MyAnalyzer)       # or @ANALYZERS.register("my-analyzer")

Registries live low in the layer order (next to what they register), but many entries live high
(safety and vision analyzers, the testbeds). So a registry fills itself on first lookup by loading
the *plugins*: every entry point in the group ``headscope.plugins`` (pyproject declares the built-in
one, ``headscope.plugins``, which imports every built-in module that registers). A package of your own
can register analyzers or testbeds the same way: declare an entry point in that group.

Looking up, iterating or counting a registry loads the plugins first, so a registry is never
observed half-filled; registering does not (it runs while plugins load).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import InputError

T = TypeVar("T")

PLUGIN_GROUP = "headscope.plugins"
# The built-in plugin, also used when headscope runs from a source tree that was never installed
# (no entry-point metadata): the one place where the registries learn which built-in modules exist.
BUILTIN_PLUGIN = importlib.metadata.EntryPoint(name="headscope", value="headscope.plugins", group=PLUGIN_GROUP)

_lock = threading.RLock()
_state = {"loaded": False, "loading": False}


def _plugin_entry_points() -> list[importlib.metadata.EntryPoint]:
    found = list(importlib.metadata.entry_points(group=PLUGIN_GROUP))
    if not any(ep.value == BUILTIN_PLUGIN.value for ep in found):
        found.insert(0, BUILTIN_PLUGIN)
    return found


def load_plugins() -> None:
    """Import every plugin once (idempotent; safe to call from inside a plugin's import)."""
    if _state["loaded"] or _state["loading"]:
        return
    with _lock:
        if _state["loaded"] or _state["loading"]:
            return
        _state["loading"] = True
        try:
            for ep in _plugin_entry_points():
                try:
                    loaded = ep.load()
                except Exception as err:
                    if ep.value == BUILTIN_PLUGIN.value:
                        raise  # a broken built-in is headscope's own bug: show the real traceback
                    warnings.warn(
                        f"headscope plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                        f"{type(err).__name__}: {err}. Fix: repair or uninstall the package that "
                        "declares it.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                if callable(loaded) and not hasattr(loaded, "__path__") and not hasattr(loaded, "__file__"):
                    loaded()  # an entry point may name a function instead of a module
            _state["loaded"] = True
        finally:
            _state["loading"] = False


def _origin(entry) -> str:
    """Where an entry was defined: a class or function's own module.qualname; for a record (a
    dataclass such as a Testbed or an Evaluator), that of the first function or class it holds."""
    if isinstance(entry, type) or (callable(entry) and hasattr(entry, "__qualname__")):
        return f"{entry.__module__}.{entry.__qualname__}"
    if dataclasses.is_dataclass(entry):
        for f in dataclasses.fields(entry):
            value = getattr(entry, f.name)
            if hasattr(value, "__qualname__") and hasattr(value, "__module__"):
                return f"{value.__module__}.{value.__qualname__}"
    return f"{type(entry).__module__}.{type(entry).__qualname__}"


class Registry(Mapping[str, T], Generic[T]):
    """A name → entry mapping for one extension point.

    `kind` names the extension point in messages ("analyzer", "intervention kind", ...) and `fix` says
    where entries come from, e.g. "see docs/contributing.md".
    """

    def __init__(self, kind: str, *, fix: str = "see docs/contributing.md for adding one") -> None:
        self.kind = kind
        self.fix = fix
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Register `entry` under `name` (usable as a decorator: `@REG.register("name")`).

        A name taken by a different entry is refused unless `replace=True` (a module re-imported
        under the same qualified name replaces its own entry silently).
        """
        if entry is None:
            return lambda obj: self.register(name, obj, replace=replace)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        origin = _origin(entry)
        taken = self._entries.get(name)
        if taken is not None and taken is not entry and not replace and self._origin[name] != origin:
            raise TypeError(
                f"{self.kind} name {name!r} is taken by {self._origin[name]}; pick another name or pass replace=True"
            )
        self._entries[name] = entry
        self._origin[name] = origin
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that plug in a toy entry clean up with this)."""
        self._entries.pop(name, None)
        self._origin.pop(name, None)

    def __getitem__(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise InputError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries)) or 'none'}. "
                f"Fix: use one of those names ({self.fix})."
            ) from None

    def get(self, name, default=None):
        load_plugins()
        return self._entries.get(name, default)

    def __contains__(self, name) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


def registered_from(registry: Registry, name: str) -> str:
    """The module.qualname that registered `name` (the conformance tests read it)."""
    registry[name]  # loads plugins, raises for unknown names
    return registry._origin[name]


__all__ = ["BUILTIN_PLUGIN", "PLUGIN_GROUP", "Registry", "load_plugins", "registered_from"]
