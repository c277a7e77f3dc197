"""Loads the compiled `sparse_lottery._C` extension, if there is one, and says why not.

Like xformers' `_cpp_lib`, it tells "not built" from "built against another torch" and warns once;
the pure-PyTorch reference path keeps working either way.
"""

import importlib
import os
import warnings

import torch

# The schemas must exist before _C registers kernels for them.
from . import _library  # noqa: F401

_C = None
LOAD_ERROR: str | None = None

try:
    _C = importlib.import_module("sparse_lottery._C")
except ModuleNotFoundError:
    LOAD_ERROR = "not built (pip install --no-build-isolation . builds it)"
except (ImportError, OSError) as exc:  # undefined symbols: built for another torch
    LOAD_ERROR = f"failed to load ({exc}); rebuild it against torch {torch.__version__}"

if _C is not None:
    built_torch = _C.torch_version()
    if built_torch != torch.__version__.split("+")[0]:
        LOAD_ERROR = f"built against torch {built_torch}, running torch {torch.__version__}"
        _C = None

if LOAD_ERROR is not None and os.environ.get("SPARSE_LOTTERY_REQUIRE_EXTENSION") == "1":
    raise ImportError(
        f"sparse_lottery: C++/CUDA extension {LOAD_ERROR} "
        "(SPARSE_LOTTERY_REQUIRE_EXTENSION=1 forbids the fallback)"
    )
if LOAD_ERROR is not None:
    warnings.warn(
        f"sparse_lottery: C++/CUDA extension {LOAD_ERROR}; using the PyTorch reference path",
        stacklevel=2,
    )


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and _C.with_cuda()
