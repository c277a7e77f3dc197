#!/usr/bin/env bash
# Quick start: set up, then sparsify an MLP on MNIST-1D, prune one-shot to 90%, train, and print
# dense vs sparse accuracy. Arguments go to `sparse-lottery quickstart` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/sparse-lottery" backends
"$VENV/bin/sparse-lottery" quickstart "$@"
