"""Typed wrappers of the `torch.ops.sparse_lottery` ops, with their fake kernels and autograd.

Every masked op takes a bool mask of the weight's shape or the packed form from `pack_mask`
(1 bit per weight). Pruned weights never reach the output, and their gradients are exactly zero.

Example:
    >>> import torch, sparse_lottery as sl
    >>> x, w = torch.randn(8, 20), torch.randn(30, 20, requires_grad=True)
    >>> mask = torch.rand(30, 20) > 0.9
    >>> y = sl.ops.masked_linear(x, w, sl.ops.pack_mask(mask))
    >>> y.sum().backward()
    >>> bool((w.grad[~mask] == 0).all())
    True
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _double_backward, _registry  # noqa: F401  (the CPU and CUDA kernels; autograd)
from ._extension import has_cpu_kernels
from ._mask_format import (
    check_apply_mask,
    check_backward,
    check_bool,
    check_device,
    check_float,
    check_grad_input,
    check_grad_weight,
    check_mask,
    check_masked_adamw,
    check_masked_linear,
    check_masked_sgd,
    check_masks_list,
    check_packed,
    check_same,
    gemm_view,
    packed_shape,
)
from .selection import PruneResult, magnitude_prune, random_prune

_ops = torch.ops.sparse_lottery


# --------------------------------------------------------------------------- typed wrappers
def masked_linear(
    input: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = input @ (weight ⊙ mask)ᵀ + bias, over any leading batch dimensions."""
    return _ops.masked_linear(input, weight, mask, bias)


def masked_conv1d(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`F.conv1d` with `weight ⊙ mask`; d_weight is masked, no masked weight is kept."""
    return _ops.masked_conv1d(
        input, weight, mask, bias, *_conv_args(1, stride, padding, dilation), groups
    )


def masked_conv2d(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`F.conv2d` with `weight ⊙ mask`; d_weight is masked, no masked weight is kept."""
    return _ops.masked_conv2d(
        input, weight, mask, bias, *_conv_args(2, stride, padding, dilation), groups
    )


def apply_mask(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tensor ⊙ mask, out of place (pruned entries become +0)."""
    return _ops.apply_mask(tensor, mask)


def apply_masks_(tensors: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """Zero the pruned entries of many tensors (weights, momentum, Adam moments) in one call."""
    tensors, masks = list(tensors), list(masks)
    if len(tensors) != len(masks):
        raise ValueError(f"masks: expected {len(tensors)} masks (one per tensor), got {len(masks)}")
    if tensors:  # the dispatcher needs at least one tensor to pick a device
        _ops.apply_masks_(tensors, masks)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool mask into 1 bit per entry: uint8 of shape `packed_shape(mask.shape)`."""
    return _ops.pack_mask(mask)


def unpack_mask(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool mask of `shape` that `packed` encodes."""
    return _ops.unpack_mask(packed, list(shape))


def _conv_args(n: int, *args):
    return [[a] * n if isinstance(a, int) else list(a) for a in args]


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("sparse_lottery::masked_linear")
def _(input, weight, mask, bias=None):
    check_masked_linear(input, weight, mask, bias)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("sparse_lottery::masked_linear_grad_input")
def _(grad_output, weight, mask):
    check_grad_input(grad_output, weight, mask)
    return grad_output.new_empty((*grad_output.shape[:-1], weight.shape[1]))


@torch.library.register_fake("sparse_lottery::masked_linear_grad_weight")
def _(grad_output, input, mask):
    check_grad_weight(grad_output, input, mask)
    return input.new_empty((grad_output.shape[-1], input.shape[-1]))


@torch.library.register_fake("sparse_lottery::masked_linear_backward")
def _(grad_output, input, weight, mask, output_mask):
    check_backward(grad_output, input, weight, mask, output_mask)
    n = grad_output.shape[-1]
    k = weight.shape[1] if weight is not None else input.shape[-1] if input is not None else 0
    return (
        grad_output.new_empty((*grad_output.shape[:-1], k)) if output_mask[0] else None,
        grad_output.new_empty((n, k)) if output_mask[1] else None,
        grad_output.new_empty((n,)) if output_mask[2] else None,
    )


@torch.library.register_fake("sparse_lottery::apply_mask")
def _(tensor, mask):
    check_apply_mask(tensor, mask)
    return torch.empty_like(tensor)


@torch.library.register_fake("sparse_lottery::apply_masks_")
def _(tensors, masks):
    check_masks_list(tensors, masks)


@torch.library.register_fake("sparse_lottery::pack_mask")
def _(mask):
    check_bool(mask)
    return mask.new_empty(packed_shape(mask.shape), dtype=torch.uint8)


@torch.library.register_fake("sparse_lottery::unpack_mask")
def _(packed, shape):
    check_packed(packed, shape)
    return packed.new_empty(shape, dtype=torch.bool)


@torch.library.register_fake("sparse_lottery::masked_sgd_")
def _(*args):
    check_masked_sgd(*args)


@torch.library.register_fake("sparse_lottery::masked_adamw_")
def _(*args):
    check_masked_adamw(*args)


# --------------------------------------------------------------------------- autograd
def _linear_setup(ctx, inputs, output):
    input, weight, mask, bias = inputs
    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    ctx.save_for_backward(input if need_weight else None, weight if need_input else None, mask)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad):
    input, weight, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_input, grad_weight, grad_bias = _ops.masked_linear_backward(
        grad, input, weight, mask, [need[0], need[1], ctx.has_bias and need[3]]
    )
    return grad_input, grad_weight, None, grad_bias


if not has_cpu_kernels():  # the extension registers this autograd in C++ (csrc/registration.cpp)
    torch.library.register_autograd(
        "sparse_lottery::masked_linear", _linear_backward, setup_context=_linear_setup
    )


# --------------------------------------------------------------------------- convolutions
def _masked_conv(conv, input, weight, mask, bias, stride, padding, dilation, groups):
    check_float(weight, "weight")
    check_same(weight, "weight", input, "input")
    check_same(weight, "weight", bias, "bias")
    check_device(weight, "weight", mask, "mask")
    check_mask(mask, weight.shape)
    return conv(input, _ops.apply_mask(weight, mask), bias, stride, padding, dilation, groups)


if not has_cpu_kernels():  # else the extension registers these and their autograd in C++

    @torch.library.impl("sparse_lottery::masked_conv1d", "CompositeExplicitAutograd")
    def _(input, weight, mask, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
        return _masked_conv(F.conv1d, input, weight, mask, bias, stride, padding, dilation, groups)

    @torch.library.impl("sparse_lottery::masked_conv2d", "CompositeExplicitAutograd")
    def _(input, weight, mask, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        return _masked_conv(F.conv2d, input, weight, mask, bias, stride, padding, dilation, groups)


def _conv_setup(ctx, inputs, output):
    input, weight, mask, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight, mask)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.bias_shape = None if bias is None else list(bias.shape)


def _conv_backward(ctx, grad):
    input, weight, mask = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    need = ctx.needs_input_grad
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad,
        input,
        _ops.apply_mask(weight, mask),
        ctx.bias_shape,
        stride,
        padding,
        dilation,
        False,
        [0] * len(stride),
        groups,
        [need[0], need[1], ctx.bias_shape is not None and need[3]],
    )
    if grad_weight is not None:
        grad_weight = _ops.apply_mask(grad_weight, mask)
    return grad_input, grad_weight, None, grad_bias, None, None, None, None


@torch.library.register_fake("sparse_lottery::masked_conv1d")
def _(input, weight, mask, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    return _masked_conv(F.conv1d, input, weight, mask, bias, stride, padding, dilation, groups)


@torch.library.register_fake("sparse_lottery::masked_conv2d")
def _(input, weight, mask, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return _masked_conv(F.conv2d, input, weight, mask, bias, stride, padding, dilation, groups)


if not has_cpu_kernels():
    for _conv in ("masked_conv1d", "masked_conv2d"):
        torch.library.register_autograd(
            f"sparse_lottery::{_conv}", _conv_backward, setup_context=_conv_setup
        )


# --------------------------------------------------------------------------- in-place ops
def _refusing_grad(op: str):
    """The Autograd kernel of an in-place op that is not differentiable: in grad mode it refuses
    the tensors it writes that require grad (autograd would not know they changed); below it,
    the kernels' own in-place writes bump the versions. The Python twin of
    csrc/registration.cpp's, for when the extension is not built."""
    overload = getattr(_ops, op).default
    written = [(i, a.name) for i, a in enumerate(overload._schema.arguments)
               if a.alias_info is not None and a.alias_info.is_write]  # fmt: skip

    def kernel(*args):
        if torch.is_grad_enabled():
            for i, name in written:
                for j, t in enumerate(args[i]):
                    if t.requires_grad:
                        raise RuntimeError(
                            f"sparse_lottery::{op}: {name}[{j}] requires grad, and the op writes "
                            "it in place without being differentiable; call it under "
                            "torch.no_grad() (as optimisers and pruning do)"
                        )
        with torch._C._AutoDispatchBelowAutograd():
            return overload(*args)

    return kernel


if not has_cpu_kernels():  # else csrc/registration.cpp registers these
    _IN_PLACE = torch.library.Library("sparse_lottery", "IMPL")
    for _op in ("apply_masks_", "masked_sgd_", "masked_adamw_"):
        _IN_PLACE.impl(_op, _refusing_grad(_op), "Autograd")

__all__ = [
    "masked_linear",
    "masked_conv1d",
    "masked_conv2d",
    "apply_mask",
    "apply_masks_",
    "pack_mask",
    "unpack_mask",
    "gemm_view",
    "packed_shape",
    "magnitude_prune",
    "random_prune",
    "PruneResult",
]
