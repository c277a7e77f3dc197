"""What runs where: `backends()` reports each backend's availability and why not."""

import torch

from . import _registry
from ._extension import _C, LOAD_ERROR, has_cuda_kernels


def backends() -> dict:
    """Availability of each backend, with the reason when one is missing, and the ops' choices.

    Example:
        >>> import sparse_lottery as sl
        >>> sl.backends()["cpp_cpu"]["available"]  # doctest: +SKIP
        True
    """
    triton_ok, triton_why = _registry.triton_status()
    cuda_compiled = has_cuda_kernels()
    gpu = torch.cuda.is_available()
    if _C is None:
        cuda_why = LOAD_ERROR
    elif not _C.with_cuda():
        cuda_why = "extension built without CUDA (no toolkit, or SPARSE_LOTTERY_NO_CUDA)"
    elif not gpu:
        cuda_why = "compiled, but no CUDA GPU visible"
    else:
        cuda_why = "available"
    report = {
        "cpp_cpu": {"available": _C is not None, "reason": LOAD_ERROR or "available"},
        "cuda_cpp": {
            "available": cuda_compiled and gpu,
            "compiled": cuda_compiled,
            "archs": _C.cuda_archs() if cuda_compiled else "",
            "reason": cuda_why,
        },
        "triton_cuda": {"available": triton_ok, "reason": triton_why},
        "reference": {"available": True, "reason": "pure PyTorch, always available"},
    }
    report["selected"] = {
        op: {
            "cpu": _registry.selected_backend(op, "cpu"),
            "cuda": _registry.selected_backend(op, "cuda"),
        }
        for op in _registry.KERNEL_OPS
    }
    return report


def set_backend(*order: str) -> None:
    """Order in which CUDA backends are tried, e.g. `set_backend("triton")` or
    `set_backend("cpp", "triton")`; names: "cpp", "triton", "reference"."""
    _registry.set_cuda_order(list(order))


def format_backends(report: dict | None = None) -> str:
    """The backends table as Markdown."""
    report = report or backends()
    rows = ["| backend | available | detail |", "|---|---|---|"]
    for name in ("cpp_cpu", "cuda_cpp", "triton_cuda", "reference"):
        entry = report[name]
        rows.append(f"| {name} | {'yes' if entry['available'] else 'no'} | {entry['reason']} |")
    return "\n".join(rows)
