"""sparse_lottery: fused masked kernels and tools for lottery-ticket research.

Example:
    >>> import torch, sparse_lottery as sl
    >>> model = torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    >>> model = sl.sparsify(model)          # masked layers, same weights and state-dict keys
    >>> sl.density(model)
    1.0
"""

from . import ops
from .backends import backends, format_backends, set_backend
from .ops import apply_mask, apply_masks_, pack_mask, unpack_mask

__version__ = "0.1.0"

__all__ = [
    "ops",
    "backends",
    "format_backends",
    "set_backend",
    "apply_mask",
    "apply_masks_",
    "pack_mask",
    "unpack_mask",
]
