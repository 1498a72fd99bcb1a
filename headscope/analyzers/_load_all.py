"""Importing this module imports every analyzer module in the package, so each registers itself."""

import importlib
import pkgutil

from .. import analyzers as _pkg

for _mod in pkgutil.iter_modules(_pkg.__path__):
    if not _mod.name.startswith("_") and _mod.name != "base":
        importlib.import_module(f"{_pkg.__name__}.{_mod.name}")
