#!/usr/bin/env bash
# Creates .venv (or $VENV), installs the development requirements and builds sparse_lottery
# with its C++ CPU and CUDA kernels (editable install). Safe to run again: ninja rebuilds only
# what changed. Extra build flags (see setup.py) pass through the environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
stamp="$VENV/.requirements.sha"
want=$(sha1sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing requirements-dev.txt (torch with CUDA, triton, test tools)"
  "${PIP[@]}" install -q --upgrade pip
  "${PIP[@]}" install -q -r requirements-dev.txt
  echo "$want" >"$stamp"
fi
# Rebuild only when the sources or the build script changed (or the extension is missing).
build_stamp="$VENV/.build.sha"
build_want=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha1sum | cut -d' ' -f1)
if [ "$(cat "$build_stamp" 2>/dev/null)" = "$build_want" ] && ls sparse_lottery/_C*.so >/dev/null 2>&1; then
  echo "== sparse_lottery extension up to date"
  exit 0
fi
echo "== building sparse_lottery (C++ CPU + CUDA kernels; MAX_JOBS=${MAX_JOBS:-$(nproc)})"
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" install -q --no-build-isolation --no-deps -e . \
  >"$VENV/build.log" 2>&1 || { cat "$VENV/build.log"; exit 1; }
echo "$build_want" >"$build_stamp"
echo "== built in $(( $(date +%s) - start )) s"
