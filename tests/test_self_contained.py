"""The repository stands alone: a user's clone has nothing beside it, so no tracked file may point
outside it (the developers' notes folder next to the checkout, a machine's absolute paths), and
every relative link in the Markdown docs must resolve to a file inside the repository."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
# Absolute paths of somebody's machine; system locations (/usr, /etc, /dev) are fine.
OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.])shared/docs/|(?<![\w.~])/(?:work|root|home|Users|opt|tmp|mnt|scratch)/")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / n for n in names.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree instead
        skip = {".git", ".venv", "__pycache__", ".cache", "headscope-report", "results"}
        files = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    out = []
    for p in files:
        if p.resolve() == THIS or not p.is_file():
            continue
        head = p.read_bytes()[:4096]
        if b"\0" not in head:
            out.append(p)
    return out


def test_no_file_refers_to_a_path_outside_the_repository():
    hits = []
    for path in _tracked_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not hits, "references outside the repository:\n" + "\n".join(hits)


def test_markdown_links_resolve_inside_the_repository():
    broken = []
    for path in _tracked_text_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "broken or escaping links:\n" + "\n".join(broken)


def test_the_check_catches_what_it_is_for():
    assert OUTSIDE.search("see `../shared/docs/methods.md` §1")
    assert OUTSIDE.search('"out": "/work/main/data/models/x"')
    assert OUTSIDE.search("cached in /home/alice/.cache")
    assert not OUTSIDE.search("chromium lives in /usr/lib/chromium; docs/methods.md; ~/.cache/headscope")
