"""The built-in plugin: importing this module imports every headscope module that registers an
entry (analyzers, intervention kinds, testbeds, evaluators, generators).

It sits at the top of the layer order (it imports everything) and is reached only through the
registries' plugin loading (`headscope.registry.load_plugins`). Adding a module anywhere in the
package is enough for it to be found: there is no list to edit.
"""

import importlib
import pkgutil
from pathlib import Path

# Modules that register nothing and must not be imported eagerly: the CLI (start-up time) and the
# pytest plugin (it is pytest's to load).
SKIP = ("headscope.cli", "headscope.plugins", "headscope.__main__", "headscope.testing.installed")

for _mod in pkgutil.walk_packages([str(Path(__file__).parent)], prefix="headscope."):
    if not _mod.name.startswith(SKIP):
        importlib.import_module(_mod.name)
