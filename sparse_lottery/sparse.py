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

from typing import NamedTuple

import torch

from . import _registry  # noqa: F401  (registers the CPU and CUDA kernels)
from ._sparse_checks import check_sparse_backward, check_sparse_linear

_ops = torch.ops.sparse_lottery

INDEX_LIMIT = 2**31 - 1  # int32 indices


class SparseLayout(NamedTuple):
    """The CSR and CSC index of a mask's surviving entries (see `sparse_lottery._library`).

    Build it with `from_mask`; `values_of(weight)` gathers a dense weight's stored values in the
    layout's (CSR) order and `dense(values)` scatters them back.
    """

    row_offsets: torch.Tensor  # int64 [N + 1]
    col_indices: torch.Tensor  # int32 [nnz]
    col_offsets: torch.Tensor  # int64 [K + 1]
    row_indices: torch.Tensor  # int32 [nnz]
    csr_positions: torch.Tensor  # int32 [nnz]: CSC entry j is values[csr_positions[j]]

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "SparseLayout":
        """The layout of a 2-D bool mask (True = kept), on the mask's device."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            got = (
                f"{mask.dtype} of shape {list(mask.shape)}"
                if isinstance(mask, torch.Tensor)
                else type(mask).__name__
            )
            raise TypeError(f"mask: expected a 2-D bool tensor (out, in), got {got}")
        n, k = mask.shape
        if max(n, k, mask.count_nonzero().item()) > INDEX_LIMIT:
            raise ValueError(
                f"mask: at most {INDEX_LIMIT} rows, columns and survivors, got {n}×{k}"
            )
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: CSR order
        row_offsets = _offsets(rows, n)
        by_col = torch.argsort(cols * n + rows)  # column-major order of the same entries
        return cls(
            row_offsets=row_offsets,
            col_indices=cols.to(torch.int32),
            col_offsets=_offsets(cols[by_col], k),
            row_indices=rows[by_col].to(torch.int32),
            csr_positions=by_col.to(torch.int32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_offsets.numel() - 1, self.col_offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    def rows(self) -> torch.Tensor:
        """The row of every stored entry (CSR order), int64."""
        counts = self.row_offsets[1:] - self.row_offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)

    def mask(self) -> torch.Tensor:
        """The bool mask this layout was built from."""
        out = torch.zeros(self.shape, dtype=torch.bool, device=self.row_offsets.device)
        out[self.rows(), self.col_indices.long()] = True
        return out

    def values_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored entries of a dense weight of this shape, in CSR order (a new tensor)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"weight: expected shape {list(self.shape)} (the layout's), "
                f"got {list(weight.shape)}"
            )
        return weight.detach()[self.rows(), self.col_indices.long()].clone()

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """The dense weight (zeros where pruned) holding `values`."""
        out = values.new_zeros(self.shape)
        out[self.rows(), self.col_indices.long()] = values
        return out

    def to(self, device) -> "SparseLayout":
        return SparseLayout(*(t.to(device) for t in self))


def _offsets(sorted_index: torch.Tensor, length: int) -> torch.Tensor:
    counts = torch.bincount(sorted_index, minlength=length)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def sparse_linear(
    input: torch.Tensor,
    values: torch.Tensor,
    layout: SparseLayout,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = input @ Wᵀ + bias, W being `values` placed by `layout`; differentiable in input,
    values (the surviving weights only) and bias."""
    return _ops.sparse_linear(input, values, *layout, bias)


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


torch.library.register_autograd("sparse_lottery::sparse_linear", _backward, setup_context=_setup)

__all__ = ["SparseLayout", "sparse_linear"]
