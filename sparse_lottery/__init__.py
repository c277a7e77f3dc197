"""sparse_lottery: fused masked kernels and tools for lottery-ticket research.

Example:
    >>> import torch, sparse_lottery as sl
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 10))
    >>> model = sl.sparsify(model)          # masked layers, same weights and state-dict keys
    >>> sl.density(model)
    1.0
"""

from . import data, lottery, models, nn, ops, optim, sparse
from .backends import backends, format_backends, set_backend
from .execution import set_execution
from .model import (
    density,
    export_dense,
    from_torch_prune,
    load_masks,
    masks,
    sparsify,
    to_torch_prune,
)
from .ops import apply_mask, apply_masks_, pack_mask, unpack_mask
from .pruning import PruneReport, prune

__version__ = "0.1.0"

__all__ = [
    "data",
    "lottery",
    "models",
    "nn",
    "ops",
    "optim",
    "sparse",
    "backends",
    "format_backends",
    "set_backend",
    "apply_mask",
    "apply_masks_",
    "pack_mask",
    "unpack_mask",
    "sparsify",
    "masks",
    "load_masks",
    "density",
    "export_dense",
    "from_torch_prune",
    "to_torch_prune",
    "prune",
    "set_execution",
    "PruneReport",
]
