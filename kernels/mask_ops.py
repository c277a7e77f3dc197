"""apply_mask, pack_mask and unpack_mask as bandwidth-bound Triton kernels.

Packed format (sparse_lottery._mask_format): uint8 (rows, ceil(cols / 8)) of the tensor's GEMM
view, bit b of byte c of row r = element (r, 8c + b), least significant bit first, padding zero.
"""

import torch
import triton
import triton.language as tl

from sparse_lottery._mask_format import gemm_view, packed_shape

_BLOCK = 1024
_BYTES_BLOCK = 256


@triton.jit
def _apply_mask_kernel(
    x_ptr, mask_ptr, out_ptr, numel, cols, stride_mr, stride_mc,
    PACKED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # out = x ⊙ mask over the flat contiguous x; a packed mask is indexed by (row, col).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    x = tl.load(x_ptr + offs, mask=valid, other=0)
    if PACKED:
        r = offs // cols
        c = offs % cols
        byte = tl.load(mask_ptr + r * stride_mr + (c // 8) * stride_mc, mask=valid, other=0)
        keep = ((byte.to(tl.int32) >> (c % 8).to(tl.int32)) & 1) != 0
    else:
        keep = tl.load(mask_ptr + offs, mask=valid, other=0) != 0
    tl.store(out_ptr + offs, tl.where(keep, x, tl.zeros_like(x)), mask=valid)


@triton.jit
def _pack_kernel(mask_ptr, out_ptr, total, cols, row_bytes, BLOCK: tl.constexpr):
    # One packed byte per row of a (BLOCK, 8) tile of flags; mask is contiguous (rows, cols).
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    r = o // row_bytes
    c = (o % row_bytes)[:, None] * 8 + tl.arange(0, 8)[None, :]
    valid = (o < total)[:, None] & (c < cols)
    flags = tl.load(mask_ptr + r[:, None] * cols + c, mask=valid, other=0)
    bits = (flags != 0).to(tl.int32) << tl.arange(0, 8)[None, :]
    tl.store(out_ptr + o, tl.sum(bits, axis=1).to(tl.uint8), mask=o < total)


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, numel, cols, stride_pr, stride_pc, BLOCK: tl.constexpr):
    # One flag per output element (contiguous (rows, cols)), read from its packed byte.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    r = offs // cols
    c = offs % cols
    byte = tl.load(packed_ptr + r * stride_pr + (c // 8) * stride_pc, mask=valid, other=0)
    bit = (byte.to(tl.int32) >> (c % 8).to(tl.int32)) & 1
    tl.store(out_ptr + offs, bit.to(tl.uint8), mask=valid)


def _as_loadable(t: torch.Tensor) -> torch.Tensor:
    """Bool tensors are read and written as their bytes."""
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def apply_mask_forward(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = tensor.contiguous()
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    packed = mask.dtype == torch.uint8
    _, cols = gemm_view(tensor.shape)
    m = mask if packed else mask.contiguous().view(torch.uint8)
    s_r, s_c = (m.stride(0), m.stride(1)) if packed else (0, 0)
    grid = (triton.cdiv(numel, _BLOCK),)
    _apply_mask_kernel[grid](
        _as_loadable(x), m, _as_loadable(out), numel, cols, s_r, s_c, PACKED=packed, BLOCK=_BLOCK
    )
    return out


def pack_mask_forward(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = gemm_view(mask.shape)
    row_bytes = packed_shape(mask.shape)[1]
    out = torch.empty((rows, row_bytes), dtype=torch.uint8, device=mask.device)
    total = out.numel()
    if total == 0:
        return out
    m = mask.contiguous().view(torch.uint8)
    grid = (triton.cdiv(total, _BYTES_BLOCK),)
    _pack_kernel[grid](m, out, total, cols, row_bytes, BLOCK=_BYTES_BLOCK)
    return out


def unpack_mask_forward(packed: torch.Tensor, shape) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    _, cols = gemm_view(shape)
    out = torch.empty(shape, dtype=torch.bool, device=packed.device)
    numel = out.numel()
    if numel == 0:
        return out
    grid = (triton.cdiv(numel, _BLOCK),)
    _unpack_kernel[grid](
        packed, out.view(torch.uint8), numel, cols, packed.stride(0), packed.stride(1),
        BLOCK=_BLOCK,
    )  # fmt: skip
    return out
