"""The installed distributions, as a snapshot to compare: the test suite fails if anything was
installed, removed, upgraded or downgraded while it ran (TransformerLens once pip-installed
torchvision, and with it a CUDA torch, in the middle of a test session).

    >>> before = snapshot()
    >>> ...                                   # run something
    >>> changes(before, snapshot())           # [] when nothing changed
"""

from __future__ import annotations

import site
import sysconfig
from importlib import metadata


def install_dirs() -> list[str]:
    """Where pip installs: the environment's site-packages (and the user site when it is active).
    Not sys.path: a package may put its own vendored copies on it at import time (Ray adds
    ray/thirdparty_files, holding colorama and psutil), which installs nothing."""
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    if site.ENABLE_USER_SITE:
        dirs.add(site.getusersitepackages())
    return sorted(dirs)


def snapshot() -> dict[str, str]:
    """{normalised distribution name: version} for every distribution installed in `install_dirs()`."""
    out = {}
    for dist in metadata.distributions(path=install_dirs()):
        name = dist.metadata["Name"]
        if name:
            out[name.lower().replace("_", "-")] = dist.version
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Human-readable differences between two snapshots, sorted; empty when they are equal."""
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            lines.append(f"installed {name}=={new}")
        elif new is None:
            lines.append(f"removed {name}=={old}")
        else:
            lines.append(f"changed {name} {old} -> {new}")
    return lines


# As a pytest plugin (`pytest_plugins = ("headscope.testing.installed",)` in a conftest, or
# `pytest -p headscope.testing.installed`): the session fails when the snapshot changed.
_AT_START: dict[str, str] = {}


def pytest_sessionstart(session):
    _AT_START.clear()
    _AT_START.update(snapshot())


def pytest_sessionfinish(session, exitstatus):
    import pytest  # optional dependency: only a test session imports this plugin

    diff = changes(_AT_START, snapshot())
    if not diff:
        return
    text = "installed distributions changed during the test session: " + "; ".join(diff)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("!", text, red=True)
    else:
        print(text)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
