"""Layers only point down: read every import in headscope's source and fail on an upward one.

The order (bottom to top) is the one drawn in docs/architecture.md. Packages in the same layer may
not import each other, except in the core layer. Imports inside functions are allowed only in the
CLI (start-up time) and for modules outside headscope (optional dependencies, heavy libraries):
an inner headscope import is how a cycle hides.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "headscope"

LAYERS = [
    {
        "errors",
        "paths",
        "fileio",
        "_version",
        "registry",
        "experiment_registry",
        "confidence",
        "divergence",
        "options",
    },  # core
    {"viz"},
    {"results"},
    {"models"},
    {"inputs"},
    {"capture"},
    {"families"},  # one module per model family: blocked forwards (capture), readout quirks, refusals
    {"interventions"},
    {"generation"},
    {"safety", "vision"},  # domain support: prompt sets, judges, the shapes world, evaluators (no analyzer)
    {"analyzers"},  # every analyzer, whatever its domain (docs/architecture.md, "Where an analyzer lives")
    {"testbeds"},  # models built for a method; load_model finds them through the catalog
    {"experiments", "atlas"},
    {"cli", "plugins", "testing", "__init__", "__main__"},  # entry points and test helpers
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
INNER_ALLOWED = {"cli"}  # start-up time: `headscope --help` must not import torch


def _package(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0].removesuffix(".py")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(sub) for sub in ast.walk(node))
    return out


def _inner_nodes(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            out.update(id(sub) for sub in ast.walk(node) if sub is not node)
    return out


def headscope_imports(path: Path, root: Path = ROOT):
    """(line, imported module, inside a function?) for every headscope import of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip, inner = _type_checking_nodes(tree), _inner_nodes(tree)
    me = _module_name(path, root).split(".")
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me if is_pkg else me[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from headscope import x` / `from . import x`: x may be a subpackage
            targets = [f"{mod}.{a.name}" for a in node.names] if mod == "headscope" else [mod]
        for target in targets:
            if target == "headscope" or target.startswith("headscope."):
                yield node.lineno, target, id(node) in inner


def _sources():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer():
    missing = {_package(p) for p in _sources()} - set(RANK)
    assert not missing, f"give {sorted(missing)} a layer in LAYERS (and docs/architecture.md)"


def test_imports_point_down():
    bad = []
    for path in _sources():
        own = _package(path)
        for line, target, _ in headscope_imports(path):
            other = target.split(".")[1] if "." in target else "__init__"
            if other == own:
                continue
            if RANK[other] > RANK[own] or (RANK[other] == RANK[own] and RANK[own] != 0):
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {own} (layer {RANK[own]}) imports {target} (layer {RANK[other]})"
                )
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_headscope_imports_inside_functions():
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for path in _sources()
        if _package(path) not in INNER_ALLOWED
        for line, target, inside in headscope_imports(path)
        if inside
    ]
    assert not bad, (
        "headscope imports inside functions (import at the top; a cycle means a module is "
        "in the wrong layer):\n" + "\n".join(bad)
    )


def test_no_string_imports_of_headscope_modules():
    """import_module("headscope.x") / __import__ would bypass the checks above (the plugin loader in
    headscope/registry.py is the one declared exception: it names the built-in plugin)."""
    pattern = re.compile(r"""(import_module|__import__)\(\s*f?["']headscope""")
    bad = [
        f"{p.relative_to(ROOT)}"
        for p in _sources()
        if pattern.search(p.read_text(encoding="utf-8")) and p.name != "registry.py"
    ]
    assert not bad, f"string imports of headscope modules in {bad}: import them, or register through a Registry"


def test_the_checker_sees_upward_imports(tmp_path):
    """The reader itself: a relative upward import, an inner one and a TYPE_CHECKING one."""
    fake = tmp_path / "headscope" / "models" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from typing import TYPE_CHECKING\nfrom ..analyzers import base\n"
        "if TYPE_CHECKING:\n    from ..experiments import spec\n"
        "def f():\n    from headscope.capture import engine\n",
        encoding="utf-8",
    )
    found = list(headscope_imports(fake, root=tmp_path))
    assert found == [(2, "headscope.analyzers", False), (6, "headscope.capture", True)]


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_architecture_doc_lists_each_layer(layer):
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for pkg in LAYERS[layer] - {"__init__", "__main__", "_version"}:
        assert f"`{pkg}`" in doc, f"docs/architecture.md does not describe `{pkg}`"


def test_every_analyzer_lives_in_analyzers():
    """docs/architecture.md, "Where an analyzer lives": an Analyzer subclass defined anywhere else in
    the package (safety/, vision/, ...) is a second home. Read from the source, like the checks above."""
    bad = []
    for path in _sources():
        if _package(path) == "analyzers":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Analyzer") for b in node.bases):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: class {node.name}")
    assert not bad, "analyzers outside headscope/analyzers/ (move them there):\n" + "\n".join(bad)
