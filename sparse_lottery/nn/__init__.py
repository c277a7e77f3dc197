"""Masked drop-in layers: `MaskedLinear`, `MaskedConv1d`, `MaskedConv2d`; and `SparseLinear`,
`SparseConv2d`, their sparse-execution forms.

Example:
    >>> import torch, sparse_lottery as sl
    >>> conv = sl.nn.MaskedConv2d.from_dense(torch.nn.Conv2d(3, 8, 3))
    >>> conv.density
    1.0
"""

from .masked import (
    MASK_BUFFER,
    MASKED_TYPES,
    MaskedConv1d,
    MaskedConv2d,
    MaskedLinear,
    mask_of,
)
from .sparse import SPARSE_TYPES, SparseConv2d, SparseLinear

__all__ = [
    "MaskedLinear",
    "MaskedConv1d",
    "MaskedConv2d",
    "SparseLinear",
    "SparseConv2d",
    "SPARSE_TYPES",
    "MASKED_TYPES",
    "MASK_BUFFER",
    "mask_of",
]
