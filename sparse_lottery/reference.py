"""Pure-PyTorch implementations of every op: the fallback path and the tests' oracle.

These materialise `weight * mask`; the fused kernels in `csrc/` and `kernels/` never do.
"""

import math

import torch
import torch.nn.functional as F

from ._mask_format import gemm_view

_BIT_WEIGHTS = [1 << b for b in range(8)]


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = gemm_view(mask.shape)
    flat = mask.reshape(rows, cols).to(torch.uint8)
    pad = (-cols) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    bits = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (flat.reshape(rows, (cols + pad) // 8, 8) * bits).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    rows, cols = gemm_view(shape)
    bits = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    flat = (packed.reshape(rows, packed.shape[-1], 1) & bits) != 0
    return flat.reshape(rows, 8 * packed.shape[-1])[:, :cols].reshape(tuple(shape)).contiguous()


def as_bool(mask: torch.Tensor, shape) -> torch.Tensor:
    """A bool mask of `shape`, unpacking a packed one."""
    return unpack_mask(mask, shape) if mask.dtype == torch.uint8 else mask


def apply_mask(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = as_bool(mask, tensor.shape)
    return torch.where(keep, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device))


def apply_masks_(tensors, masks) -> None:
    for t, m in zip(tensors, masks, strict=True):
        t.mul_(as_bool(m, t.shape))


def masked_linear(input, weight, mask, bias=None):
    return F.linear(input, apply_mask(weight, mask), bias)


def masked_linear_grad_input(grad_output, weight, mask):
    return grad_output @ apply_mask(weight, mask)


def masked_linear_grad_weight(grad_output, input, mask):
    g2 = grad_output.reshape(-1, grad_output.shape[-1])
    x2 = input.reshape(-1, input.shape[-1])
    return apply_mask(g2.t() @ x2, mask)


def masked_linear_backward(grad_output, input, weight, mask, output_mask):
    need_input, need_weight, need_bias = output_mask
    grad_input = masked_linear_grad_input(grad_output, weight, mask) if need_input else None
    grad_weight = masked_linear_grad_weight(grad_output, input, mask) if need_weight else None
    grad_bias = None
    if need_bias:
        rows = math.prod(grad_output.shape[:-1])  # not -1: grad_output may have no elements
        grad_bias = grad_output.reshape(rows, grad_output.shape[-1]).sum(0)
    return grad_input, grad_weight, grad_bias


def masked_conv1d(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv1d(input, apply_mask(weight, mask), bias, stride, padding, dilation, groups)


def masked_conv2d(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, apply_mask(weight, mask), bias, stride, padding, dilation, groups)
