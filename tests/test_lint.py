"""The lint job CI runs (`make lint` in .ci/run) catches what it is there to catch.

Each check runs the pinned tool with the project's own configuration (pyproject.toml) on a small
planted file, so a configuration that silently stops checking (a too-broad ignore, a wrong `files`)
fails here rather than letting violations through.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = ROOT / "pyproject.toml"

PLANTED = '''"""A module with one violation of each kind the lint job must catch."""

import os


def count(items: list[int]) -> int:
    total: int = "none"
    return total + len(items)
'''


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ci_runs_the_lint_target_before_the_suite():
    ci = (ROOT / ".ci" / "run").read_text()
    steps = re.findall(r"^make (\w+)$", ci, flags=re.M)
    assert steps[:2] == ["lint", "test"], steps
    target = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert target, "Makefile has no lint target"
    recipe = target.group(1)
    for command in ("ruff check .", "ruff format --check .", "mypy"):
        assert command in recipe, f"`make lint` does not run {command!r}"


def test_ruff_flags_a_planted_unused_import_and_bad_formatting(tmp_path):
    bad = tmp_path / "planted.py"
    bad.write_text(PLANTED.replace("def count", "def  count"))
    lint = _run(BIN / "ruff", "check", "--config", CONFIG, "--no-cache", bad, cwd=tmp_path)
    assert lint.returncode == 1 and "F401" in lint.stdout, lint.stdout + lint.stderr
    fmt = _run(BIN / "ruff", "format", "--check", "--config", CONFIG, "--no-cache", bad, cwd=tmp_path)
    assert fmt.returncode == 1 and "would be reformatted" in fmt.stdout, fmt.stdout + fmt.stderr
    good = tmp_path / "clean.py"
    good.write_text(PLANTED.replace("import os\n\n", "").replace('total: int = "none"', "total: int = 0"))
    assert _run(BIN / "ruff", "check", "--config", CONFIG, "--no-cache", good, cwd=tmp_path).returncode == 0
    assert _run(BIN / "ruff", "format", "--check", "--config", CONFIG, "--no-cache", good, cwd=tmp_path).returncode == 0


def test_mypy_flags_a_planted_type_error(tmp_path):
    bad = tmp_path / "planted.py"
    bad.write_text(PLANTED)
    out = _run(BIN / "mypy", "--config-file", CONFIG, "--no-incremental", bad, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"planted\.py:7: error: .*\[assignment\]", out.stdout), out.stdout
