"""Sparse execution of masked linear layers: the stored weights only, in a layout built once per
mask, for tickets at high sparsity.

A weight W (out_features × in_features) with `nnz` surviving entries is kept as its `values`
(CSR order) and a `SparseLayout`: the CSR index for the forward product and the weight gradient
(a sampled product at the surviving positions only), and a CSC index for the input gradient.
Within one IMP level the mask does not change, so the layout is built once and reused for every
step; the parameters, their gradients and the optimiser state are all `nnz` long.

Example:
    >>> import torch, sparse_lottery as sl
    >>> w, mask = torch.randn(30, 20), torch.rand(30, 20) < 0.1
    >>> layout = sl.sparse.SparseLayout.from_mask(mask)
    >>> values = layout.values_of(w).requires_grad_()
    >>> x = torch.randn(8, 20)
    >>> y = sl.sparse.sparse_linear(x, values, layout)
    >>> torch.allclose(y, x @ (w * mask).t(), atol=1e-5)
    True
    >>> y.sum().backward()
    >>> values.grad.shape == (layout.nnz,)
    True
"""

import torch

from . import _registry  # noqa: F401  (registers the CPU and CUDA kernels)
from ._extension import has_cpu_kernels
from ._sparse_checks import (
    check_sparse_backward,
    check_sparse_conv2d,
    check_sparse_conv2d_backward,
    check_sparse_linear,
)
from ._sparse_layout import SparseLayout

_ops = torch.ops.sparse_lottery


def sparse_linear(
    input: torch.Tensor,
    values: torch.Tensor,
    layout: SparseLayout,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = input @ Wᵀ + bias, W being `values` placed by `layout`; differentiable in input,
    values (the surviving weights only) and bias."""
    return _ops.sparse_linear(input, values, *layout, bias)


def sparse_conv2d(
    input: torch.Tensor,
    values: torch.Tensor,
    layout: SparseLayout,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """conv2d(input, W, bias) with W (out, in, kh, kw) given by `values` placed by `layout` over
    its (out, in·kh·kw) view; input (batch, in, H, W), groups = 1, zero padding. Differentiable
    in input, values and bias; on the CPU a direct sparse convolution (no im2col)."""
    return _ops.sparse_conv2d(
        input, values, *layout, bias, list(kernel_size), list(stride), list(padding),
        list(dilation),
    )  # fmt: skip


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("sparse_lottery::sparse_linear")
def _(input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias=None):
    n = check_sparse_linear(
        input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias
    )
    return input.new_empty((*input.shape[:-1], n))


@torch.library.register_fake("sparse_lottery::sparse_linear_backward")
def _(
    grad_output,
    input,
    values,
    row_offsets,
    col_indices,
    col_offsets,
    row_indices,
    csr_positions,
    output_mask,
):
    _, k = check_sparse_backward(
        grad_output,
        input,
        values,
        row_offsets,
        col_indices,
        col_offsets,
        row_indices,
        csr_positions,
        output_mask,
    )
    return (
        grad_output.new_empty((*grad_output.shape[:-1], k)) if output_mask[0] else None,
        torch.empty_like(values) if output_mask[1] else None,
        grad_output.new_empty((grad_output.shape[-1],)) if output_mask[2] else None,
    )


@torch.library.register_fake("sparse_lottery::sparse_conv2d")
def _(input, values, *args):
    n, out_h, out_w = check_sparse_conv2d(input, values, *args)
    return input.new_empty((input.shape[0], n, out_h, out_w))


@torch.library.register_fake("sparse_lottery::sparse_conv2d_backward")
def _(grad_output, input, values, *args):
    n, _, _ = check_sparse_conv2d_backward(grad_output, input, values, *args)
    output_mask = args[-1]
    return (
        input.new_empty(input.shape) if output_mask[0] else None,
        torch.empty_like(values) if output_mask[1] else None,
        grad_output.new_empty((n,)) if output_mask[2] else None,
    )


# --------------------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    input, values, *layout, bias = inputs
    ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, values, *layout)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    input, values, *layout = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_input, grad_values, grad_bias = _ops.sparse_linear_backward(
        grad, input, values, *layout, [need[0], need[1], ctx.has_bias and need[7]]
    )
    return grad_input, grad_values, None, None, None, None, None, grad_bias


def _conv_setup(ctx, inputs, output):
    input, values, *layout = inputs[:7]
    ctx.save_for_backward(input, values, *layout)
    ctx.has_bias = inputs[7] is not None
    ctx.geometry = inputs[8:]  # kernel_size, stride, padding, dilation


def _conv_backward(ctx, grad):
    input, values, *layout = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_input, grad_values, grad_bias = _ops.sparse_conv2d_backward(
        grad, input, values, *layout, *ctx.geometry, [need[0], need[1], ctx.has_bias and need[7]]
    )
    return grad_input, grad_values, None, None, None, None, None, grad_bias, None, None, None, None


if not has_cpu_kernels():  # the extension registers these in C++ (csrc/registration.cpp)
    torch.library.register_autograd(
        "sparse_lottery::sparse_linear", _backward, setup_context=_setup
    )
    torch.library.register_autograd(
        "sparse_lottery::sparse_conv2d", _conv_backward, setup_context=_conv_setup
    )

__all__ = ["SparseLayout", "sparse_conv2d", "sparse_linear"]
