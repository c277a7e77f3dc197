"""Masked linear layer as one tiled Triton GEMM: the mask is applied where the weight tile is
loaded (forward, input gradient) or in the epilogue (weight gradient); W ⊙ M is never stored.

    forward     y  = x @ (W ⊙ M)ᵀ + b     A = x (M, K),   B[k, n] = W[n, k] ⊙ M[n, k]
    grad_input  dX = dY @ (W ⊙ M)         A = dY (M, N),  B[n, k] = W[n, k] ⊙ M[n, k]
    grad_weight dW = (dYᵀ @ X) ⊙ M        A = dYᵀ (N, M), B = X (M, K), mask on the output tile

The mask is a bool tensor (read as bytes) or the packed uint8 form (bit k % 8 of byte k // 8 of
the weight's row). Every operand is read through its strides; accumulation is in fp32 and fp32
inputs use TF32 when torch.backends.cuda.matmul.allow_tf32 is set, like cuBLAS through torch.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from ._config import INTERPRET, next_pow2

# Mask placement (constexpr MODE).
_MASK_B_WT = 0  # B[r, c] is weight[c, r] (forward)
_MASK_B_W = 1  # B[r, c] is weight[r, c] (grad_input)
_MASK_OUT = 2  # output C[i, j] is weight[i, j] (grad_weight)


@triton.jit
def _keep(mask_ptr, rows, cols, stride_r, stride_c, valid, PACKED: tl.constexpr):
    """Keep-flags of weight elements (rows, cols) (broadcast index tensors) as booleans."""
    if PACKED:
        byte = tl.load(mask_ptr + rows * stride_r + (cols // 8) * stride_c, mask=valid, other=0)
        keep = ((byte.to(tl.int32) >> (cols % 8).to(tl.int32)) & 1) != 0
    else:
        keep = tl.load(mask_ptr + rows * stride_r + cols * stride_c, mask=valid, other=0) != 0
    return keep


@triton.jit
def _masked_matmul_kernel(
    a_ptr, b_ptr, mask_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_mr, stride_mc,
    MODE: tl.constexpr, PACKED: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # C (M, N) = A (M, K) @ B (K, N), tiles ordered in groups of GROUP_M rows for L2 reuse.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * grid_n
    first_m = (pid // group) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    in_m = rm < M
    in_n = rn < N
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        in_k = kk < K
        a = tl.load(a_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
        b_valid = in_k[:, None] & in_n[None, :]
        b = tl.load(b_ptrs, mask=b_valid, other=0.0)
        if MODE == 0:  # weight[n, k]
            keep = _keep(mask_ptr, rn[None, :], kk[:, None], stride_mr, stride_mc, b_valid, PACKED)
            b = tl.where(keep, b, tl.zeros_like(b))
        elif MODE == 1:  # weight[k, n]
            keep = _keep(mask_ptr, kk[:, None], rn[None, :], stride_mr, stride_mc, b_valid, PACKED)
            b = tl.where(keep, b, tl.zeros_like(b))
        if UPCAST:  # interpreter only: it has no bf16 tl.dot (triton-lang/triton#11584)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c_valid = in_m[:, None] & in_n[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=in_n, other=0.0).to(tl.float32)[None, :]
    if MODE == 2:  # epilogue: exact zeros where pruned
        keep = _keep(mask_ptr, rm[:, None], rn[None, :], stride_mr, stride_mc, c_valid, PACKED)
        acc = tl.where(keep, acc, 0.0)
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_valid)


def _configs():
    """Hopper/Ampere tile shapes (bf16/fp16 tensor cores; fp32 takes the smaller K tiles)."""
    shapes = [  # BLOCK_M, BLOCK_N, BLOCK_K, stages, warps
        (128, 256, 64, 3, 8),
        (256, 128, 64, 3, 8),
        (128, 128, 64, 4, 8),
        (128, 128, 32, 4, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 32, 32, 5, 2),
        (32, 64, 32, 5, 2),
        (16, 64, 64, 4, 4),
        (16, 128, 64, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},
                      num_stages=s, num_warps=w)
        for m, n, k, s, w in shapes
    ]  # fmt: skip


@functools.cache
def _shared_memory_limit(device_index: int) -> int:
    """Bytes of shared memory a block may use: H100/H200 227 KB, A100 163 KB, others ~99 KB."""
    major, minor = torch.cuda.get_device_capability(device_index)
    if major >= 9:
        return 220 * 1024
    return 160 * 1024 if (major, minor) == (8, 0) else 96 * 1024


def _prune(configs, named_args, **kwargs):
    """Drop tiles far larger than the problem (a 1-row batch needs no 256-row tile) and those
    whose pipelined A, B and mask tiles would not fit in shared memory."""
    m, n, k = named_args["M"], named_args["N"], named_args["K"]
    a = named_args["a_ptr"]
    elem = a.element_size()
    mask_bytes = 0 if kwargs.get("MODE", named_args.get("MODE")) == _MASK_OUT else 1
    limit = _shared_memory_limit(a.device.index if a.device.index is not None else 0)

    def fits(c):
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        stage = bk * ((bm + bn) * elem + bn * mask_bytes)
        return stage * c.num_stages <= limit

    kept = [
        c for c in configs
        if c.kwargs["BLOCK_M"] <= max(16, next_pow2(m))
        and c.kwargs["BLOCK_N"] <= max(32, next_pow2(n))
        and c.kwargs["BLOCK_K"] <= max(32, next_pow2(k))
        and fits(c)
    ]  # fmt: skip
    return kept or [c for c in configs if fits(c)][-3:]


_tuned_kernel = triton.autotune(
    configs=_configs(),
    key=["M", "N", "K", "MODE", "PACKED", "HAS_BIAS", "PRECISION"],  # + dtypes (implicit)
    prune_configs_by={"early_config_prune": _prune},
)(_masked_matmul_kernel)


def _precision(dtype: torch.dtype) -> str:
    """IEEE fp32 unless torch allows TF32 (16-bit inputs ignore it: tensor cores either way)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _launch(a, b, mask, bias, c, mode):
    """c (M, N) = a (M, K) @ b (K, N) with the mask placed by `mode`; all are strided views."""
    m, k = a.shape
    n = b.shape[1]
    packed = mask.dtype == torch.uint8
    mask_arg = mask if packed else mask.view(torch.uint8)
    bias = bias.contiguous() if bias is not None else None
    args = (
        a, b, mask_arg, bias if bias is not None else c, c, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        mask_arg.stride(0), mask_arg.stride(1),
    )  # fmt: skip
    flags = dict(
        MODE=mode, PACKED=packed, HAS_BIAS=bias is not None, PRECISION=_precision(a.dtype),
        UPCAST=INTERPRET and a.dtype == torch.bfloat16,
    )  # fmt: skip
    if INTERPRET:  # the CPU interpreter: one small tile shape, no tuning
        grid = (triton.cdiv(m, 32) * triton.cdiv(n, 32),)
        _masked_matmul_kernel[grid](*args, **flags, BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2)
    else:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
        _tuned_kernel[grid](*args, **flags)
    return c


def _rows(t: torch.Tensor, last: int) -> torch.Tensor:
    """(-1, last) view of t (a copy only when its batch dimensions cannot be merged)."""
    return t.reshape(math.prod(t.shape[:-1]), last)  # not -1: t may have 0 elements


def masked_linear_forward(input, weight, mask, bias=None):
    n, k = weight.shape
    x = _rows(input, k)
    out = torch.empty((x.shape[0], n), dtype=input.dtype, device=input.device)
    if out.numel() > 0:
        # B[k, n] = weight[n, k]: the transposed strides; the mask indexes the weight itself.
        _launch(x, weight.t(), mask, bias, out, _MASK_B_WT)
    return out.view(*input.shape[:-1], n)


def masked_linear_backward_input(grad_output, weight, mask):
    n, k = weight.shape
    g = _rows(grad_output, n)
    out = torch.empty((g.shape[0], k), dtype=grad_output.dtype, device=grad_output.device)
    if out.numel() > 0:
        _launch(g, weight, mask, None, out, _MASK_B_W)
    return out.view(*grad_output.shape[:-1], k)


def masked_linear_backward_weight(grad_output, input, mask):
    n, k = grad_output.shape[-1], input.shape[-1]
    g = _rows(grad_output, n)
    x = _rows(input, k)
    out = torch.empty((n, k), dtype=input.dtype, device=input.device)
    if out.numel() == 0:
        return out
    if x.shape[0] == 0:  # empty batch: the gradient is zero
        return out.zero_()
    return _launch(g.t(), x, mask, None, out, _MASK_OUT)
