#!/usr/bin/env bash
# The six analyses of the source research at full size on MNIST-1D, on the 2-core CPU machine
# (about 25 minutes in all on a quiet machine; every step resumes where it stopped). Results
# (Markdown, JSON, PNG) are collected in examples/results/, which examples/README.md shows.
#
#   bash examples/mnist1d_analyses.sh            # after scripts/setup.sh (or bash scripts/quickstart.sh)
#
# Steps, each a sparse-lottery command on the same run folder (examples/runs):
#   imp (2 replicates, reinit and random-pruning baselines) -> overlap, stability, sanity,
#   finetune, jackpot, transfer -> report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
ROOT=${ROOT:-examples/runs}
OUT=examples/results
sl() { echo "== $(date +%T) sparse-lottery $*"; "$PY" -m sparse_lottery "$@"; }
mkdir -p "$OUT"

for replicate in 0 1; do
  sl imp --root "$ROOT" --levels 10 --baselines reinit,random_prune --replicate "$replicate"
done
sl overlap "$ROOT" --out "$OUT/overlap"
for level in 3 8; do
  sl stability --root "$ROOT" --level "$level" --k 0,100
done
sl sanity --root "$ROOT" --lrs 0.002,0.02 --levels 5
sl finetune --root "$ROOT" --levels 4 --lrs 0.002,0.02 --k 1ep
sl jackpot --root "$ROOT" --density 0.1,0.05,0.02,0.01
sl transfer --root "$ROOT" --target mnist1d_shifted --levels 4 --prune-fraction 0.5 \
  --resets late,init

# Gather each analysis's Markdown, JSON and plot (they live in their experiment's folders).
for name in stability sanity finetune jackpot transfer; do
  find "$ROOT" -name "$name.md" -o -name "$name.json" -o -name "$name.png" | sort |
    while read -r file; do
      flat=$(dirname "${file#"$ROOT"/}" | tr / _)  # the run folder, made one name
      mkdir -p "$OUT/$name"
      cp "$file" "$OUT/$name/${flat}_$(basename "$file")"
    done
done
sl report "$ROOT" --out "$OUT/report"  # every experiment and every analysis above, with plots
echo "== results in $OUT"
