"""Nothing is installed while headscope runs: TransformerLens's on-the-fly `pip install torchvision`
is refused while a model boots, and the test session itself fails when the installed distributions
change between its start and its end."""

import subprocess
import sys

import pytest

from headscope.models.compat import RuntimeInstallRefused, _is_install, no_runtime_installs
from headscope.testing.installed import changes, snapshot


@pytest.fixture
def recorded(monkeypatch):
    """subprocess calls that reach the real subprocess module (recorded, never run)."""
    calls = []
    for name in ("check_call", "check_output", "call", "run"):
        monkeypatch.setattr(subprocess, name, lambda cmd, *a, _n=name, **k: calls.append((_n, cmd)) or 0)
    return calls


def test_install_commands_are_recognised():
    assert _is_install([sys.executable, "-m", "pip", "install", "torchvision", "-q"])
    assert _is_install(["uv", "pip", "install", "torchvision", "-q"])
    assert _is_install("/usr/bin/pip3 install x")
    assert not _is_install([sys.executable, "-m", "pip", "list"])
    assert not _is_install(["chromium", "--headless"])


def test_install_is_refused_and_other_commands_pass(recorded):
    with no_runtime_installs():
        with pytest.raises(RuntimeInstallRefused, match="requirements/lock.txt"):
            subprocess.check_call([sys.executable, "-m", "pip", "install", "torchvision", "-q"])
        subprocess.run(["echo", "hi"])
    assert recorded == [("run", ["echo", "hi"])]
    subprocess.check_call(["pip", "install", "x"])  # outside the guard: the recorder again, restored
    assert recorded[-1] == ("check_call", ["pip", "install", "x"])


def test_transformer_lens_does_not_install_torchvision(recorded):
    from transformer_lens.model_bridge.sources.transformers import helpers

    original = helpers._ensure_torchvision
    try:
        import torchvision  # noqa: F401

        has_torchvision = True
    except Exception:
        has_torchvision = False
    with no_runtime_installs():
        assert helpers._ensure_torchvision() is has_torchvision
    assert helpers._ensure_torchvision is original
    assert recorded == []


def test_booting_a_multimodal_model_installs_nothing(recorded):
    """The tiny LLaVA's processor cannot be built offline: TL 4.3 would `pip install torchvision` here."""
    from headscope.testing.tiny_vlm import tiny_llava

    model = tiny_llava()
    assert model.cfg.is_multimodal
    assert [c for c in recorded if _is_install(c[1])] == []


def test_snapshot_changes_name_every_difference():
    before = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "six": "1.16.0"}
    assert changes(before, dict(before)) == []
    assert changes(before, {**before, "torchvision": "0.29.1"}) == ["installed torchvision==0.29.1"]
    assert changes(before, {**before, "torch": "2.14.1"}) == ["changed torch 2.13.0+cpu -> 2.14.1"]
    assert changes(before, {k: v for k, v in before.items() if k != "six"}) == ["removed six==1.16.0"]
    assert {"torch", "transformers", "headscope"} <= set(snapshot())  # reads the real environment


def test_a_vendored_copy_put_on_sys_path_is_not_an_install(tmp_path, monkeypatch):
    # Ray puts ray/thirdparty_files (colorama, psutil) on sys.path when imported: nothing was installed.
    (tmp_path / "vendored-1.0.dist-info").mkdir()
    (tmp_path / "vendored-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vendored\nVersion: 1.0\n"
    )
    before = snapshot()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert changes(before, snapshot()) == []


INNER_CONFTEST = """
import sys
import headscope.testing.installed as installed
sys.path.insert(0, {site!r})
_own = installed.install_dirs
installed.install_dirs = lambda: _own() + [{site!r}]  # the fake site is where this session "installs"
"""

INNER_TEST = """
def test_installs_a_distribution():
    dist = {site!r} + "/fakepkg-1.0.dist-info"
    import os
    os.makedirs(dist)
    open(dist + "/METADATA", "w").write("Metadata-Version: 2.1\\nName: fakepkg\\nVersion: 1.0\\n")
"""


def test_a_session_that_installs_something_fails(pytester):
    site = str(pytester.path / "site")
    (pytester.path / "site").mkdir()
    pytester.makeconftest(INNER_CONFTEST.format(site=site))
    pytester.makepyfile(test_inner=INNER_TEST.format(site=site))
    result = pytester.runpytest_subprocess("-p", "headscope.testing.installed", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*installed distributions changed during the test session: installed fakepkg==1.0*"])


def test_a_session_that_installs_nothing_passes(pytester):
    pytester.makepyfile(test_inner="def test_nothing():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "headscope.testing.installed", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
