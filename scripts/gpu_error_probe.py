"""Does an argument error raised inside the extension reach Python as an exception?

On the lent H100 (2026-11-22: torch 2.11, extension built by the image's /opt/gcc g++) every test
that expects such an error crashed its process with SIGSEGV instead. `gpu_session.sh probe` runs
this file plainly and under cuda-gdb (which prints the native stack of the crash).
"""

import os
import sys

import torch

if os.environ.get("SL_PROBE_NO_TRITON"):
    sys.modules["triton"] = None  # an ImportError for triton: is the crash Triton's libraries'?
import sparse_lottery  # noqa: F401  (registers the ops)

with open("/proc/self/maps") as maps:
    libs = {line.split()[-1].rsplit("/", 1)[-1] for line in maps}
runtime = ("stdc++", "gcc_s", "unwind")
print("loaded:", sorted(lib for lib in libs if any(name in lib for name in runtime)))

CASES = {
    "aten RuntimeError": lambda: torch.mm(torch.randn(2, 3), torch.randn(2, 3)),
    "ours ValueError (CPU)": lambda: torch.ops.sparse_lottery.magnitude_prune(
        [torch.randn(3, 4)], [None], [1.5], False, False
    ),
    "ours RuntimeError (CPU)": lambda: torch.ops.sparse_lottery.apply_mask(
        torch.randn(3, 4), torch.ones(4, 3, dtype=torch.bool)
    ),
}

for name, call in CASES.items():
    print(f"{name}: ", end="", flush=True)
    try:
        call()
        print("no error raised")
    except Exception as e:  # the probe reports whatever arrives
        print(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
