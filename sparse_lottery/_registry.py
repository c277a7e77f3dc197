"""Registers one implementation per op and device, choosing among the available backends.

Backends: "cpp" (the compiled `_C` extension: C++ CPU kernels, C++/CUDA kernels), "triton"
(`sparse_lottery.kernels`, CUDA only) and "reference" (pure PyTorch). On the CPU the C++ kernels
are used when built. On CUDA the order is the user's choice (`set_backend`), by default
cpp, then triton, then reference; an op a backend lacks falls through to the next one.
"""

import functools
import importlib
import os

from . import reference
from ._extension import _C, LOAD_ERROR, has_cuda_kernels
from ._library import LIB, SCHEMAS

KERNEL_OPS = [name for name in SCHEMAS if not name.startswith("masked_conv")]
BACKENDS = ("cpp", "triton", "reference")
_cuda_order = list(BACKENDS)


@functools.cache
def triton_status() -> tuple[bool, str]:
    """(usable, reason) for the Triton kernels on CUDA."""
    import torch

    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return False, f"triton not installed ({exc})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False, "TRITON_INTERPRET=1 (the interpreter runs kernels on the CPU, tests only)"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible"
    return True, "available"


def _cpp_impl(op: str, device: str):
    if device == "cuda" and not has_cuda_kernels():
        return None
    if device == "cpu" and _C is None:
        return None
    return getattr(_C, f"{op}_{device}", None)


def _triton_impl(op: str, device: str):
    if device != "cuda" or not triton_status()[0]:
        return None
    kernels = importlib.import_module("sparse_lottery.kernels")
    return getattr(kernels, op, None)


def implementation(op: str, device: str, backend: str):
    """The callable `backend` provides for `op` on `device`, or None."""
    if backend == "cpp":
        return _cpp_impl(op, device)
    if backend == "triton":
        return _triton_impl(op, device)
    return getattr(reference, op)


def selected_backend(op: str, device: str) -> str:
    order = _cuda_order if device == "cuda" else ["cpp", "reference"]
    return next(b for b in order if implementation(op, device, b) is not None)


def set_cuda_order(order: list[str]) -> None:
    bad = [b for b in order if b not in BACKENDS]
    if bad or not order:
        raise ValueError(f"backend: expected a non-empty list of {list(BACKENDS)}, got {order}")
    _cuda_order[:] = list(order) + [b for b in BACKENDS if b not in order]
    _dispatch_cuda.cache_clear()


@functools.cache
def _dispatch_cuda(op: str):
    return implementation(op, "cuda", selected_backend(op, "cuda"))


def _register() -> None:
    for op in KERNEL_OPS:
        LIB.impl(op, implementation(op, "cpu", selected_backend(op, "cpu")), "CPU")
        LIB.impl(op, functools.partial(_call_cuda, op), "CUDA")


def _call_cuda(op, *args):
    return _dispatch_cuda(op)(*args)


_register()
cpp_load_error = LOAD_ERROR
