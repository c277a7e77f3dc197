#!/usr/bin/env bash
# One session on a lent GPU machine, in as few calls as possible: build the extension for the
# GPU that is there, run the CUDA tests, run the benchmark suite. Logs and results go to $OUT.
#
#   bash scripts/gpu_session.sh build probe test     # first call (~8 min): build, tests
#   bash scripts/gpu_session.sh build bench          # second call (extension carried or rebuilt)
#   TEST_K="opcheck or errors" bash scripts/gpu_session.sh test   # a pytest -k selection only
#
# Carry the built extension (copied to $OUT by `build`) into later calls: a fresh machine then
# skips the build. Benchmarks take a call of their own: the full CUDA test run alone took more
# than 230 s on 14 workers (2026-11-22).
#
# The machine's own python3 (its PyTorch and Triton) is used; the extension is built in place
# with no build isolation, for the local GPU's architecture only.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')

log() { echo "== $(date +%T) $*"; }
# `sparse_lottery.kernels` is the top-level kernels/ folder (setup.py's package_dir); an in-place
# build needs the link that an install would make.
[ -e sparse_lottery/kernels ] || ln -s ../kernels sparse_lottery/kernels

build() {
    log "build for sm_${ARCH/./}"
    if ls sparse_lottery/_C*.so >/dev/null 2>&1 && [ "${REBUILD:-0}" != 1 ]; then
        log "extension present (carried); REBUILD=1 rebuilds"
        return
    fi
    TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=${MAX_JOBS:-16} $PY setup.py -q build_ext --inplace \
        >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
    cp sparse_lottery/_C*.so "$OUT/"
    $PY -c 'import sparse_lottery as s; print("built:", s.__file__)'
}

tests() {
    log "tests (CUDA and CPU cases of the kernel, op, layer and optimiser suites)"
    # Suites needing mnist1d or the experiment driver run in CI; these cover every kernel.
    timeout "${TEST_TIMEOUT:-420}" $PY -m pytest -q -n "${WORKERS:-12}" -p no:cacheprovider \
        --timeout 240 --max-worker-restart=1000 -rf --tb=line tests/test_ops.py tests/test_optim.py tests/test_selection.py \
        tests/test_selection_cuda.py tests/test_selection_kernels.py tests/test_sparse.py \
        tests/test_layers.py tests/test_triton_kernels.py tests/test_triton_selection.py \
        tests/test_triton_sparse.py tests/test_model_api.py tests/test_backends.py \
        --durations=15 --junitxml="$OUT/tests.xml" ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUT/tests.log" \
        | grep -v "^  File\|^Thread\|^Current thread\|^$\|^Extension modules" | tail -60
}

probe() {
    log "argument errors raised in the extension: diagnostics, plainly, then the native stack"
    local so; so=$(ls sparse_lottery/_C*.so | head -1)
    $PY -c 'import torch; print("torch cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI); print(torch.__config__.show().splitlines()[1:4])'
    ${CXX:-g++} --version | head -1; which g++ c++ gcc
    readelf -p .comment "$so" 2>/dev/null | grep -v "^$" | head -5
    ldd "$so" | grep -i "stdc\|gcc\|gomp\|unwind\|torch_python"
    nm -D --undefined-only "$so" | grep -i "unwind\|cxa_throw" | head
    timeout 60 $PY scripts/gpu_error_probe.py 2>&1 | tail -12
    SL_PROBE_NO_TRITON=1 timeout 60 $PY scripts/gpu_error_probe.py 2>&1 | tail -5
    timeout 300 $PY scripts/gpu_throw_matrix.py
    local dbg; dbg=$(command -v gdb || command -v cuda-gdb)
    timeout 120 "$dbg" -q -batch -ex run -ex "bt 12" --args $PY scripts/gpu_error_probe.py 2>&1 \
        | grep -v "^\[New Thread\|^\[Thread\|^\[Detaching" | grep -v "^0x.*/python3\.12/site-packages/\(nvidia\|numpy\)" | tail -30
}

smoke() {
    log "benchmark smoke runs"
    for b in masked_linear sparse_training selection; do
        timeout 120 $PY benchmarks/bench_$b.py --device cuda --quick --out "$OUT/smoke_$b" \
            2>&1 | tail -15
    done
}

bench() {
    for b in ${BENCHES:-masked_linear sparse_training selection}; do
        log "benchmark $b"
        timeout "${BENCH_TIMEOUT:-280}" $PY benchmarks/bench_$b.py --device cuda \
            --out "$OUT/${b}_cuda" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/${b}_cuda.log" | tail -25
    done
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
for stage in "$@"; do
    case $stage in
        build) build ;;
        test) tests ;;
        probe) probe ;;
        smoke) smoke ;;
        bench) bench ;;
        *) echo "unknown stage $stage (build, probe, test, smoke, bench)"; exit 2 ;;
    esac
done
log done
