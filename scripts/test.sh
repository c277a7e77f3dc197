#!/usr/bin/env bash
# Set up, lint, then run the whole test suite (CUDA tests skip without a GPU; Triton kernels run
# under TRITON_INTERPRET=1 on the CPU). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# The compiled kernels must be what the tests exercise: fail rather than fall back silently.
SPARSE_LOTTERY_REQUIRE_EXTENSION=1 "$VENV/bin/python" -m sparse_lottery backends
SPARSE_LOTTERY_REQUIRE_EXTENSION=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
