"""Which build flags make an extension's TORCH_CHECK crash instead of raising (GPU machine,
2026-11-22)?

Builds one tiny op per flag set with torch.utils.cpp_extension.load_inline, calls it in a fresh
process (boxed through torch.ops and directly through pybind11) and prints raised/crashed per set.
"""

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

SOURCE = r"""
#include <torch/extension.h>
#include <torch/library.h>
at::Tensor fail(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 7, "x: expected 7 dims, got ", x.dim());
  return x;
}
TORCH_LIBRARY(LIBNAME, m) { m.def("fail(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(LIBNAME, CPU, m) { m.impl("fail", &fail); }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fail", &fail); }
"""

VARIANTS = {
    "plain": [],
    "c++20": ["-std=c++20"],
    "O3 march": ["-O3", "-march=x86-64-v3"],
    "openmp": ["-fopenmp"],
    "ours": ["-O3", "-g0", "-march=x86-64-v3", "-std=c++20", "-fopenmp"],
    "ours + cuda": ["-O3", "-g0", "-march=x86-64-v3", "-std=c++20", "-fopenmp"],
    "ours after sparse_lottery": ["-O3", "-g0", "-march=x86-64-v3", "-std=c++20", "-fopenmp"],
}
CUDA_SOURCE = "__global__ void touch(float* x) { x[0] = 1; }"

CALL = """
import torch, sys
sys.path.insert(0, {dir!r})
{pre}
import {name} as m
for how, f in (("torch.ops", lambda: torch.ops.{name}.fail(torch.ones(2))),
               ("pybind", lambda: m.fail(torch.ones(2)))):
    try:
        f(); print(how, "no error", flush=True)
    except Exception as e:
        print(how, "raised", type(e).__name__, flush=True)
"""


def build_and_call(item):
    label, flags = item
    name = "probe_" + "".join(c if c.isalnum() else "_" for c in label)
    build = tempfile.mkdtemp(prefix=name)
    script = f"""
import torch.utils.cpp_extension as ce
ce.load_inline({name!r}, {SOURCE.replace("LIBNAME", name)!r}, extra_cflags={flags!r},
               cuda_sources={[CUDA_SOURCE] if "cuda" in label else None!r},
               extra_ldflags={["-fopenmp"] if "-fopenmp" in flags else []!r},
               build_directory={build!r}, is_python_module=True, verbose=False)
"""
    b = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if b.returncode:
        return f"{label}: build failed: {b.stderr[-400:]}"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CALL.format(
                dir=build, name=name, pre="import sparse_lottery" if "after" in label else ""
            ),
        ],
        capture_output=True,
        text=True,
    )
    return f"{label} {flags}: rc {r.returncode}: {r.stdout.strip()!r} {r.stderr.strip()[-200:]!r}"


if __name__ == "__main__":
    with ThreadPoolExecutor(len(VARIANTS)) as pool:
        for line in pool.map(build_and_call, VARIANTS.items()):
            print(line, flush=True)
