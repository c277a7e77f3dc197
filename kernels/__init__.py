"""Triton kernels of sparse_lottery, installed as `sparse_lottery.kernels`.

Registered by `sparse_lottery._registry` as the "triton" CUDA backend of the ops with the same
names; they also run on CPU tensors under TRITON_INTERPRET=1 (tests). Each function checks its
arguments like the other backends, handles leading batch dimensions, strided inputs and empty
batches (no launch), and takes a bool mask or the packed form of `sparse_lottery.pack_mask`.
float64 has no Triton tensor-core path: the masked-linear functions hand it to the reference.

Example:
    >>> import torch
    >>> from sparse_lottery import kernels
    >>> x, w = torch.randn(4, 8, device="cuda"), torch.randn(3, 8, device="cuda")
    >>> y = kernels.masked_linear(x, w, torch.rand(3, 8, device="cuda") > 0.5)  # doctest: +SKIP
"""

import math
from collections.abc import Sequence

import torch

from sparse_lottery import reference
from sparse_lottery._mask_format import CHECKS
from sparse_lottery._sparse_checks import SPARSE_CHECKS

from .mask_ops import apply_mask_forward, pack_mask_forward, unpack_mask_forward
from .masked_matmul import (
    masked_linear_backward_input,
    masked_linear_backward_weight,
    masked_linear_forward,
)
from .selection import magnitude_prune_forward, random_prune_forward
from .sparse_matmul import sparse_linear_forward, sparse_linear_grads

__all__ = [
    "masked_linear",
    "masked_linear_grad_input",
    "masked_linear_grad_weight",
    "masked_linear_backward",
    "apply_mask",
    "pack_mask",
    "unpack_mask",
    "magnitude_prune",
    "random_prune",
    "sparse_linear",
    "sparse_linear_backward",
]


def masked_linear(
    input: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = input @ (weight ⊙ mask)ᵀ + bias over any leading batch dimensions."""
    CHECKS["masked_linear"](input, weight, mask, bias)
    if weight.dtype == torch.float64:
        return reference.masked_linear(input, weight, mask, bias)
    return masked_linear_forward(input, weight, mask, bias)


def masked_linear_grad_input(
    grad_output: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """d_input = grad_output @ (weight ⊙ mask); grad_output (..., N) -> (..., K)."""
    CHECKS["masked_linear_grad_input"](grad_output, weight, mask)
    if weight.dtype == torch.float64:
        return reference.masked_linear_grad_input(grad_output, weight, mask)
    return masked_linear_backward_input(grad_output, weight, mask)


def masked_linear_grad_weight(
    grad_output: torch.Tensor, input: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """d_weight = (grad_outputᵀ @ input) ⊙ mask, exactly zero where pruned; -> (N, K)."""
    CHECKS["masked_linear_grad_weight"](grad_output, input, mask)
    if input.dtype == torch.float64:
        return reference.masked_linear_grad_weight(grad_output, input, mask)
    return masked_linear_backward_weight(grad_output, input, mask)


def masked_linear_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor | None,
    weight: torch.Tensor | None,
    mask: torch.Tensor,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad_input, grad_weight, grad_bias), each None unless output_mask asks for it."""
    CHECKS["masked_linear_backward"](grad_output, input, weight, mask, output_mask)
    need_input, need_weight, need_bias = output_mask
    grad_input = masked_linear_grad_input(grad_output, weight, mask) if need_input else None
    grad_weight = masked_linear_grad_weight(grad_output, input, mask) if need_weight else None
    grad_bias = None
    if need_bias:
        rows = math.prod(grad_output.shape[:-1])
        grad_bias = grad_output.reshape(rows, grad_output.shape[-1]).sum(0)
    return grad_input, grad_weight, grad_bias


def apply_mask(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tensor ⊙ mask, out of place (pruned entries become +0)."""
    CHECKS["apply_mask"](tensor, mask)
    return apply_mask_forward(tensor, mask)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool mask -> uint8 of shape `packed_shape(mask.shape)`, 1 bit per entry."""
    CHECKS["pack_mask"](mask)
    return pack_mask_forward(mask)


def unpack_mask(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool mask of `shape` that `packed` encodes."""
    CHECKS["unpack_mask"](packed, shape)
    return unpack_mask_forward(packed, shape)


def magnitude_prune(
    weights: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None],
    amounts: Sequence[float],
    counts: bool,
    layerwise: bool,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Remove exactly k survivors with the smallest |w| per group (csrc/selection.h): new masks
    (packed stays packed, bool of the weight's shape for None), CPU float64 thresholds and CPU
    int64 removed counts, one per group."""
    CHECKS["magnitude_prune"](weights, masks, amounts, counts, layerwise)
    return magnitude_prune_forward(list(weights), list(masks), amounts, counts, layerwise)


def random_prune(
    masks: Sequence[torch.Tensor],
    amounts: Sequence[float],
    counts: bool,
    layerwise: bool,
    seed: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Remove exactly k survivors per group by the hashed keys of (seed, tensor, position)."""
    CHECKS["random_prune"](masks, amounts, counts, layerwise, seed)
    return random_prune_forward(list(masks), amounts, counts, layerwise, seed)


def sparse_linear(
    input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias=None
) -> torch.Tensor:
    """y = input @ Wᵀ + bias, W the stored `values` placed by the CSR index."""
    SPARSE_CHECKS["sparse_linear"](
        input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias
    )
    if values.dtype == torch.float64:
        return reference.sparse_linear(
            input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias
        )
    return sparse_linear_forward(input, values, row_offsets, col_indices, bias)


def sparse_linear_backward(
    grad_output, input, values, row_offsets, col_indices, col_offsets, row_indices,
    csr_positions, output_mask,
):  # fmt: skip
    """(grad_input, grad_values, grad_bias), each None unless output_mask asks for it."""
    args = (grad_output, input, values, row_offsets, col_indices, col_offsets, row_indices,
            csr_positions, output_mask)  # fmt: skip
    SPARSE_CHECKS["sparse_linear_backward"](*args)
    if values.dtype == torch.float64:
        return reference.sparse_linear_backward(*args)
    return sparse_linear_grads(*args)
