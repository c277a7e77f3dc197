"""sparse_linear and its backward as Triton kernels (the CUDA path of sparse execution).

Same layout and reasoning as the C++ CPU kernels (csrc/cpu/sparse_kernels.h): the dense operands
are transposed to batch-contiguous panels (xᵀ: K × B, dyᵀ: N × B), so that every stored weight
multiplies a contiguous (coalesced) run of the batch.

  _spmm:  one program per (row of W or Wᵀ, block of the batch): the row's stored weights in
          chunks, each chunk a (chunk × batch block) gather of the panel, reduced over the chunk;
  _sddmm: one program per (row n of W, chunk of its stored weights): dot products of dyᵀ[n]
          with the chunk's rows of xᵀ, block by block of the batch.
Accumulation in fp32 (fp64 inputs go to the reference, as the masked-linear kernels do).
"""

import torch
import triton
import triton.language as tl

from ._config import INTERPRET, next_pow2


@triton.jit
def _spmm(
    offsets_ptr, idx_ptr, values_ptr, dense_ptr, bias_ptr, out_ptr, batch,
    HAS_BIAS: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    # out[r, b] = bias[r] + Σ_j values[j] · dense[idx[j], b] over the stored weights j of row r;
    # dense (·, batch) and out (·, batch) are contiguous.
    r = tl.program_id(0)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    in_batch = b < batch
    start = tl.load(offsets_ptr + r)
    end = tl.load(offsets_ptr + r + 1)
    acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        valid = j < end
        col = tl.load(idx_ptr + j, mask=valid, other=0).to(tl.int64)
        w = tl.load(values_ptr + j, mask=valid, other=0).to(tl.float32)
        tile = tl.load(
            dense_ptr + col[:, None] * batch + b[None, :],
            mask=valid[:, None] & in_batch[None, :],
            other=0,
        ).to(tl.float32)
        acc += tl.sum(w[:, None] * tile, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + r).to(tl.float32)
    tl.store(out_ptr + r.to(tl.int64) * batch + b, acc.to(out_ptr.dtype.element_ty), mask=in_batch)


@triton.jit
def _sddmm(
    offsets_ptr, cols_ptr, dyT_ptr, xT_ptr, out_ptr, batch,
    BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    # out[j] = <dyᵀ[n, :], xᵀ[cols[j], :]> for the chunk program_id(1) of row n's stored weights.
    n = tl.program_id(0)
    start = tl.load(offsets_ptr + n)
    end = tl.load(offsets_ptr + n + 1)
    j = start + tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    valid = j < end
    if tl.program_id(1) * BLOCK_J < end - start:
        col = tl.load(cols_ptr + j, mask=valid, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_J,), dtype=tl.float32)
        for b0 in range(0, batch, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B)
            in_batch = b < batch
            g = tl.load(dyT_ptr + n.to(tl.int64) * batch + b, mask=in_batch, other=0)
            x = tl.load(
                xT_ptr + col[:, None] * batch + b[None, :],
                mask=valid[:, None] & in_batch[None, :],
                other=0,
            )
            acc += tl.sum(g.to(tl.float32)[None, :] * x.to(tl.float32), axis=1)
        tl.store(out_ptr + j, acc.to(out_ptr.dtype.element_ty), mask=valid)


def _blocks(batch: int) -> tuple[int, int]:
    """(BLOCK_J, BLOCK_B)."""
    if INTERPRET:
        return 16, 16
    return 32, min(128, max(16, next_pow2(batch)))


def _panel(t: torch.Tensor, cols: int) -> torch.Tensor:
    """The (cols × rows) batch-contiguous transpose of t's (rows × cols) view."""
    return t.reshape(-1, cols).t().contiguous()


def _unpanel(tT: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """The contiguous (*lead, rows) result of a (rows × batch) panel product, the layout the
    fake kernels promise (a transposed view would differ from them in strides)."""
    return tT.t().contiguous().reshape(*lead, tT.shape[0])


def spmm(offsets, idx, values, panel, bias=None) -> torch.Tensor:
    """(rows × B) = the sparse rows (offsets, idx, values) times `panel` (· × B)."""
    rows, batch = offsets.numel() - 1, panel.shape[1]
    out = panel.new_empty((rows, batch))
    if rows == 0 or batch == 0:
        return out.zero_() if bias is None else out.copy_(bias[:, None].expand_as(out))
    block_j, block_b = _blocks(batch)
    grid = (rows, triton.cdiv(batch, block_b))
    _spmm[grid](
        offsets, idx, values, panel, bias if bias is not None else values, out, batch,
        HAS_BIAS=bias is not None, BLOCK_J=block_j, BLOCK_B=block_b,
    )  # fmt: skip
    return out


def sparse_linear_forward(input, values, row_offsets, col_indices, bias) -> torch.Tensor:
    yT = spmm(row_offsets, col_indices, values, _panel(input, input.shape[-1]), bias)
    return _unpanel(yT, input.shape[:-1])


def sparse_linear_grads(grad_output, input, values, row_offsets, col_indices, col_offsets,
                        row_indices, csr_positions, output_mask):  # fmt: skip
    n, k = row_offsets.numel() - 1, col_offsets.numel() - 1
    dyT = _panel(grad_output, n)
    grad_input = grad_values = grad_bias = None
    if output_mask[0]:
        csc_values = values.index_select(0, csr_positions)
        dxT = spmm(col_offsets, row_indices, csc_values, dyT)
        grad_input = _unpanel(dxT, grad_output.shape[:-1])
    if output_mask[1]:
        grad_values = torch.empty_like(values)
        batch = dyT.shape[1]
        if batch == 0 or values.numel() == 0:
            grad_values.zero_()
        else:
            block_j, block_b = _blocks(batch)
            longest = int((row_offsets[1:] - row_offsets[:-1]).max())
            grid = (n, triton.cdiv(longest, block_j))
            _sddmm[grid](
                row_offsets, col_indices, dyT, _panel(input, k), grad_values, batch,
                BLOCK_J=block_j, BLOCK_B=block_b,
            )  # fmt: skip
    if output_mask[2]:
        grad_bias = grad_output.reshape(-1, n).sum(0)
    return grad_input, grad_values, grad_bias
