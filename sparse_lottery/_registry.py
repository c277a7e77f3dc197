"""Which implementation serves each op on each device.

Backends: "cpp" (the compiled `_C` extension, which registers its C++ CPU and C++/CUDA kernels
with the dispatcher itself when it loads: no Python on the call path), "triton"
(`sparse_lottery.kernels`, CUDA only) and "reference" (pure PyTorch). Python registers a kernel
here only where C++ has none, or where the user chose another CUDA backend with `set_backend`:
that registration lives in its own `Library`, so dropping it restores the C++ kernel.
"""

import functools
import importlib
import os
import warnings

import torch

from . import reference
from ._extension import _C, has_cuda_kernels
from ._library import SCHEMAS
from ._mask_format import CHECKS
from ._sparse_checks import SPARSE_CHECKS

KERNEL_OPS = [name for name in SCHEMAS if not name.startswith("masked_conv")]
BACKENDS = ("cpp", "triton", "reference")
DEFAULT_CUDA_ORDER = BACKENDS


@functools.cache
def triton_status() -> tuple[bool, str]:
    """(usable, reason) for the Triton kernels on CUDA."""
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return False, f"triton not installed ({exc})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False, "TRITON_INTERPRET=1 (the interpreter runs kernels on the CPU, tests only)"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible"
    return True, "available"


def provides(backend: str, op: str, device: str) -> bool:
    """Whether `backend` has a kernel for `op` on `device`."""
    if backend == "cpp":
        compiled = _C is not None if device == "cpu" else has_cuda_kernels()
        return compiled and _has_cpp_kernel(op, device)
    if backend == "triton":
        return device == "cuda" and triton_status()[0] and hasattr(_triton_module(), op)
    return True


def _has_cpp_kernel(op: str, device: str) -> bool:
    """Whether the extension registered a kernel for `op` (called before Python registers any)."""
    key = "CPU" if device == "cpu" else "CUDA"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_lottery::{op}", key)


def _triton_module():
    return importlib.import_module("sparse_lottery.kernels")


def python_kernel(backend: str, op: str):
    """The Python callable of a "triton" kernel (which checks its input itself) or a
    "reference" one (checked here first, like every other backend)."""
    if backend == "triton":
        return getattr(_triton_module(), op)
    fn, check = getattr(reference, op), {**CHECKS, **SPARSE_CHECKS}[op]

    @functools.wraps(fn)
    def run(*args):
        check(*args)
        return fn(*args)

    return run


class _Selection:
    """The backend chosen per (op, device) and the Python registrations that enact it."""

    def __init__(self):
        self.cuda_order = list(DEFAULT_CUDA_ORDER)
        self.library = None
        self.chosen: dict[tuple[str, str], str] = {}

    def apply(self) -> None:
        if self.library is not None:
            self.library._destroy()  # the C++ kernels it shadowed serve again
        self.library = torch.library.Library("sparse_lottery", "IMPL")
        for op in KERNEL_OPS:
            for device, order in (("cpu", ["cpp", "reference"]), ("cuda", self.cuda_order)):
                backend = next(b for b in order if provides(b, op, device))
                self.chosen[op, device] = backend
                if backend != "cpp":
                    with warnings.catch_warnings():  # "Overriding a previously registered kernel"
                        warnings.simplefilter("ignore")
                        self.library.impl(op, python_kernel(backend, op), device.upper())


_selection = _Selection()
_selection.apply()


def selected_backend(op: str, device: str) -> str:
    return _selection.chosen[op, device]


def set_cuda_order(order: list[str]) -> None:
    bad = [b for b in order if b not in BACKENDS]
    if bad or not order:
        raise ValueError(f"backend: expected a non-empty list of {list(BACKENDS)}, got {order}")
    _selection.cuda_order = list(order) + [b for b in BACKENDS if b not in order]
    _selection.apply()
