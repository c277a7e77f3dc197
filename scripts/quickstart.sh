#!/usr/bin/env bash
# Quick start: set up, then the main job on the offline default (MNIST-1D, generated locally):
# 10 levels of iterative magnitude pruning of the MNIST-1D MLP with the random-reinitialisation
# baseline at every level, a table of test accuracy vs density, and the report (Markdown + HTML
# with plots) under runs/report/. Arguments go to `sparse-lottery imp` (see its --help); a
# finished level is never recomputed, a killed run resumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/sparse-lottery" backends
start=$(date +%s)
"$VENV/bin/sparse-lottery" imp --levels 10 --baselines reinit --root runs --data-dir data "$@"
"$VENV/bin/sparse-lottery" report runs
echo "== IMP and report in $(( $(date +%s) - start )) s"
