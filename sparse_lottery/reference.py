"""Pure-PyTorch implementations of every op: the fallback path and the tests' oracle.

These materialise `weight * mask`; the fused kernels in `csrc/` and `kernels/` never do.
"""

import math

import torch
import torch.nn.functional as F

from ._mask_format import gemm_view
from ._sparse_checks import conv2d_output_size
from ._sparse_layout import SparseLayout

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


# --------------------------------------------------------------------------- selection
# Sort-based oracles of the selection ops, with the keys and tie-break of csrc/selection.h.
_INF_KEY = 0x7F800000
_MASK64 = (1 << 64) - 1


def _int64(value: int) -> int:
    """A Python int's low 64 bits as a signed int64 (torch's integer arithmetic wraps)."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def _shift_right(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z):
    """SplitMix64's finaliser on Python ints or int64 tensors (wrapping arithmetic)."""
    if isinstance(z, int):
        z &= _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)
    z = (z ^ _shift_right(z, 30)) * _int64(0xBF58476D1CE4E5B9)
    z = (z ^ _shift_right(z, 27)) * _int64(0x94D049BB133111EB)
    return z ^ _shift_right(z, 31)


def magnitude_keys(weight: torch.Tensor) -> torch.Tensor:
    """int64 keys of |weight| in row-major order: the bits of |w| as float32."""
    return weight.detach().reshape(-1).float().view(torch.int32).long() & 0x7FFFFFFF


def random_keys(seed: int, index: int, rows: int, cols: int, device) -> torch.Tensor:
    """int64 keys (31 bits) of random_prune for a (rows, cols) mask, row-major."""
    stream = _mix64(seed + 0x9E3779B97F4A7C15 * (index + 1))
    r = torch.arange(rows, device=device, dtype=torch.int64)[:, None]
    c = torch.arange(cols, device=device, dtype=torch.int64)[None, :]
    position = r * _int64(0xD1B54A32D192ED03) + c * _int64(0x8CB92BA72F3D8DD7)
    return _shift_right(_mix64(position ^ _int64(stream)), 33).reshape(-1)


def _remove_smallest(keys, survivors, amounts, counts, layerwise):
    """Per group, the flags of the k surviving entries with the smallest keys (ties: first
    position first), k, and the largest removed key (-1 when none)."""
    groups = [[i] for i in range(len(keys))] if layerwise else [list(range(len(keys)))]
    removed = [torch.zeros_like(s) for s in survivors]
    ks, largest = [], []
    for group, amount in zip(groups, amounts):
        parts = [keys[i][survivors[i]] for i in group]
        pool = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        n = pool.numel()
        k = int(amount) if counts else round(amount * n)
        if k > n:
            where = f"tensor {group[0]}" if layerwise else "the pool"
            raise ValueError(f"amounts: {k} to remove exceeds the {n} surviving weights of {where}")
        order = torch.sort(pool, stable=True).indices[:k]
        flags = torch.zeros(n, dtype=torch.bool, device=pool.device)
        flags[order] = True
        start = 0
        for i in group:
            count = int(survivors[i].sum())
            removed[i][survivors[i]] = flags[start : start + count]
            start += count
        ks.append(k)
        largest.append(int(pool[order].max()) if k else -1)
    return removed, ks, largest


def _mask_out(survivors, removed, masks, shapes):
    """New masks (survivors minus removed): packed where the given mask was packed, else bool of
    `shapes`."""
    out = []
    for keep, gone, m, shape in zip(survivors, removed, masks, shapes):
        new = keep & ~gone
        packed = m is not None and m.dtype == torch.uint8
        if packed:  # rows of the packed mask; 0 rows keep its byte width
            rows = m.shape[0]
            out.append(
                pack_mask(new.reshape(rows, new.numel() // rows if rows else 8 * m.shape[1]))
            )
        else:
            out.append(new.reshape(shape))
    return out


def magnitude_prune(weights, masks, amounts, counts, layerwise):
    keys, survivors = [], []
    for i, (w, m) in enumerate(zip(weights, masks)):
        key = magnitude_keys(w)
        if bool((key > _INF_KEY).any()):
            raise ValueError(f"weights[{i}]: contains NaN, which has no magnitude to rank")
        keys.append(key)
        keep = as_bool(m, w.shape) if m is not None else torch.ones_like(w, dtype=torch.bool)
        survivors.append(keep.reshape(-1))
    removed, ks, largest = _remove_smallest(keys, survivors, amounts, counts, layerwise)
    out = _mask_out(survivors, removed, masks, [w.shape for w in weights])
    thresholds = [
        torch.tensor(key, dtype=torch.int32).view(torch.float32).item() if key >= 0 else 0.0
        for key in largest
    ]
    return (
        out,
        torch.tensor(thresholds, dtype=torch.float64),
        torch.tensor(ks, dtype=torch.int64),
    )


def random_prune(masks, amounts, counts, layerwise, seed):
    keys, survivors = [], []
    for i, m in enumerate(masks):
        if m.dtype == torch.uint8:  # packed: bits of (rows, 8·bytes); padding bits are zero
            rows, cols = m.shape[0], 8 * m.shape[1]
            keep = unpack_mask(m, (rows, cols))
        else:
            rows, cols = gemm_view(m.shape)
            keep = m
        keys.append(random_keys(seed, i, rows, cols, m.device))
        survivors.append(keep.reshape(-1))
    removed, ks, _ = _remove_smallest(keys, survivors, amounts, counts, layerwise)
    shapes = [m.shape for m in masks]
    return _mask_out(survivors, removed, masks, shapes), torch.tensor(ks, dtype=torch.int64)


# --------------------------------------------------------------------------- optimisers
# torch.optim.SGD / AdamW (single-tensor path) on the entries the masks keep, in float32
# (float64 for float64 tensors), in the order of operations of csrc/optim_math.h.
def _opmath(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _store(dst: torch.Tensor, value: torch.Tensor, keep: torch.Tensor | None) -> None:
    value = value.to(dst.dtype)
    dst.copy_(value if keep is None else torch.where(keep, value, dst))


def _keep(mask, param):
    return None if mask is None else as_bool(mask, param.shape)


def masked_sgd_(
    params,
    grads,
    momentum_buffers,
    masks,
    lr,
    momentum,
    dampening,
    weight_decay,
    nesterov,
    maximize,
    first_step,
) -> None:
    for i, (p, g, m) in enumerate(zip(params, grads, masks, strict=True)):
        keep = _keep(m, p)
        grad = -_opmath(g) if maximize else _opmath(g)
        if weight_decay != 0:
            grad = grad + weight_decay * _opmath(p)
        if momentum != 0:
            buf = momentum_buffers[i]
            new = grad if first_step else _opmath(buf) * momentum + (1 - dampening) * grad
            _store(buf, new, keep)
            grad = grad + momentum * new if nesterov else new
        _store(p, _opmath(p) + (-lr) * grad, keep)


def masked_adamw_(
    params, grads, exp_avgs, exp_avg_sqs, masks, lr, beta1, beta2, eps, weight_decay, step, maximize
) -> None:
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    neg_step_size = -(lr / (1 - beta1**step))
    for p, g, m_t, v_t, mask in zip(params, grads, exp_avgs, exp_avg_sqs, masks, strict=True):
        keep = _keep(mask, p)
        grad = -_opmath(g) if maximize else _opmath(g)
        param = _opmath(p)
        if weight_decay != 0:
            param = param * (1 - lr * weight_decay)
        exp_avg = torch.lerp(_opmath(m_t), grad, 1 - beta1)
        exp_avg_sq = _opmath(v_t) * beta2 + (1 - beta2) * grad * grad
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
        _store(p, param + neg_step_size * exp_avg / denom, keep)
        _store(m_t, exp_avg, keep)
        _store(v_t, exp_avg_sq, keep)


# --------------------------------------------------------------------------- sparse execution
def sparse_linear(
    input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias=None
):
    layout = SparseLayout(row_offsets, col_indices, col_offsets, row_indices, csr_positions)
    return F.linear(input, layout.dense(values), bias)


def sparse_linear_backward(
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
    layout = SparseLayout(row_offsets, col_indices, col_offsets, row_indices, csr_positions)
    k = layout.shape[1]
    g2 = grad_output.reshape(-1, grad_output.shape[-1])
    grad_input = grad_values = grad_bias = None
    if output_mask[0]:
        grad_input = (g2 @ layout.dense(values)).reshape(*grad_output.shape[:-1], k)
    if output_mask[1]:
        x2 = input.reshape(-1, k)
        grad_values = (g2.t() @ x2)[layout.rows(), col_indices.long()]
    if output_mask[2]:
        grad_bias = g2.sum(0)
    return grad_input, grad_values, grad_bias


def _conv_weight(values, layout, channels, kernel_size):
    return layout.dense(values).reshape(layout.shape[0], channels, *kernel_size)


def sparse_conv2d(
    input,
    values,
    row_offsets,
    col_indices,
    col_offsets,
    row_indices,
    csr_positions,
    bias,
    kernel_size,
    stride,
    padding,
    dilation,
):
    layout = SparseLayout(row_offsets, col_indices, col_offsets, row_indices, csr_positions)
    weight = _conv_weight(values, layout, input.shape[1], kernel_size)
    if 0 in (*input.shape[::2], input.shape[3], weight.shape[0]):  # F.conv2d refuses these
        out_h, out_w = conv2d_output_size(input.shape, kernel_size, stride, padding, dilation)
        out = input.new_zeros((input.shape[0], weight.shape[0], out_h, out_w))
        return out if bias is None else out + bias[:, None, None]
    return F.conv2d(input, weight, bias, stride, padding, dilation)


def sparse_conv2d_backward(
    grad_output,
    input,
    values,
    row_offsets,
    col_indices,
    col_offsets,
    row_indices,
    csr_positions,
    kernel_size,
    stride,
    padding,
    dilation,
    output_mask,
):
    layout = SparseLayout(row_offsets, col_indices, col_offsets, row_indices, csr_positions)
    weight = _conv_weight(values, layout, input.shape[1], kernel_size)
    if grad_output.numel() == 0:
        grad_input, grad_weight = torch.zeros_like(input), torch.zeros_like(weight)
    else:
        grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_output,
            input,
            weight,
            None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            1,
            [output_mask[0], output_mask[1], False],
        )
    grad_values = None
    if output_mask[1]:
        grad_values = grad_weight.reshape(layout.shape)[layout.rows(), col_indices.long()]
    grad_bias = grad_output.sum((0, 2, 3)) if output_mask[2] else None
    return grad_input if output_mask[0] else None, grad_values, grad_bias
