"""Argument checks of the sparse-execution ops, shared by the fake, reference and Triton kernels;
mirror of csrc/sparse_checks.h (same messages and exception types). The layout's indices are
validated where it is built (`sparse_lottery.sparse.SparseLayout.from_mask`); these are O(1).
"""

import torch


def _check_index(t, name, dtype, numel, what, values):
    torch._check_type(t.dtype == dtype, lambda: f"{name}: expected dtype {dtype}, got {t.dtype}")
    torch._check_value(
        t.dim() == 1 and t.numel() == numel,
        lambda: (
            f"{name}: expected a 1-D tensor of {numel} entries ({what}), got shape {list(t.shape)}"
        ),
    )
    torch._check_value(t.is_contiguous(), lambda: f"{name}: expected a contiguous tensor")
    torch._check(
        t.device == values.device,
        lambda: f"{name}: expected device {values.device} (the device of values), got {t.device}",
    )


def check_sparse_layout(
    values, row_offsets, col_indices, col_offsets, row_indices, csr_positions
) -> tuple[int, int]:
    """Mirror of csrc/sparse_checks.h; returns (out_features, in_features)."""
    torch._check_type(
        values.dtype.is_floating_point,
        lambda: f"values: expected a floating dtype, got {values.dtype}",
    )
    torch._check_value(
        values.dim() == 1 and values.is_contiguous(),
        lambda: (
            "values: expected a contiguous 1-D tensor (the stored weights), got shape "
            f"{list(values.shape)}"
        ),
    )
    torch._check_value(
        row_offsets.dim() == 1 and row_offsets.numel() >= 1,
        lambda: (
            "row_offsets: expected a 1-D tensor of out_features + 1 entries, got shape "
            f"{list(row_offsets.shape)}"
        ),
    )
    torch._check_value(
        col_offsets.dim() == 1 and col_offsets.numel() >= 1,
        lambda: (
            "col_offsets: expected a 1-D tensor of in_features + 1 entries, got shape "
            f"{list(col_offsets.shape)}"
        ),
    )
    nnz, out_features = values.numel(), row_offsets.numel() - 1
    in_features = col_offsets.numel() - 1
    _check_index(
        row_offsets, "row_offsets", torch.int64, out_features + 1, "out_features + 1", values
    )
    _check_index(col_indices, "col_indices", torch.int32, nnz, "one per stored weight", values)
    _check_index(
        col_offsets, "col_offsets", torch.int64, in_features + 1, "in_features + 1", values
    )
    _check_index(row_indices, "row_indices", torch.int32, nnz, "one per stored weight", values)
    _check_index(csr_positions, "csr_positions", torch.int32, nnz, "one per stored weight", values)
    return out_features, in_features


def _check_like_values(t, name, values):
    """`t` on values' device, of values' dtype (csrc: check_same_device/check_same_dtype)."""
    torch._check(
        t.device == values.device,
        lambda: f"{name}: expected device {values.device} (the device of values), got {t.device}",
    )
    torch._check(
        t.dtype == values.dtype,
        lambda: f"{name}: expected dtype {values.dtype} (the dtype of values), got {t.dtype}",
    )


def _check_operand(t, name, values, last, last_name):
    _check_like_values(t, name, values)
    torch._check_value(
        t.dim() >= 1 and t.shape[-1] == last,
        lambda: f"{name}: expected last dimension {last_name}={last}, got shape {list(t.shape)}",
    )


def check_sparse_linear(
    input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions, bias=None
) -> int:
    n, k = check_sparse_layout(
        values, row_offsets, col_indices, col_offsets, row_indices, csr_positions
    )
    _check_operand(input, "input", values, k, "in_features")
    _check_bias(bias, values, n, "out_features")
    return n


def check_sparse_backward(
    grad_output,
    input,
    values,
    row_offsets,
    col_indices,
    col_offsets,
    row_indices,
    csr_positions,
    output_mask,
) -> tuple[int, int]:
    torch._check_value(
        not output_mask[1] or input is not None,
        lambda: "input: required for grad_values (output_mask[1] is set), got None",
    )
    n, k = check_sparse_layout(
        values, row_offsets, col_indices, col_offsets, row_indices, csr_positions
    )
    _check_operand(grad_output, "grad_output", values, n, "out_features")
    if input is not None:
        _check_operand(input, "input", values, k, "in_features")
        torch._check_value(
            input.shape[:-1] == grad_output.shape[:-1],
            lambda: (
                f"input: expected batch dimensions {list(grad_output.shape[:-1])} "
                f"(grad_output's), got shape {list(input.shape)}"
            ),
        )
    return n, k


def _check_conv_param(p, name, least):
    torch._check_value(len(p) == 2, lambda: f"{name}: expected 2 values, got {list(p)}")
    torch._check_value(
        p[0] >= least and p[1] >= least,
        lambda: f"{name}: expected values >= {least}, got {list(p)}",
    )


def conv2d_output_size(input_shape, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """(height, width) of a 2-D convolution's output for an input of `input_shape` (N, C, H, W)
    (negative when the padded input is smaller than the dilated kernel)."""
    out_h, out_w = (
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(input_shape[2:], padding, dilation, kernel_size, stride)
    )
    return out_h, out_w


def check_sparse_conv2d(
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
) -> tuple[int, int, int]:
    """Mirror of csrc/sparse_checks.h; returns (out_channels, out_height, out_width)."""
    n, k = check_sparse_layout(
        values, row_offsets, col_indices, col_offsets, row_indices, csr_positions
    )
    _check_conv_param(kernel_size, "kernel_size", 1)
    _check_conv_param(stride, "stride", 1)
    _check_conv_param(padding, "padding", 0)
    _check_conv_param(dilation, "dilation", 1)
    _check_like_values(input, "input", values)
    torch._check_value(
        input.dim() == 4,
        lambda: (
            "input: expected a 4-D tensor (batch, channels, height, width), got shape "
            f"{list(input.shape)}"
        ),
    )
    kh, kw = kernel_size
    torch._check_value(
        input.shape[1] * kh * kw == k,
        lambda: (
            f"input: expected channels·kh·kw = in_features={k} (kernel_size {list(kernel_size)}), "
            f"got shape {list(input.shape)}"
        ),
    )
    out_h, out_w = conv2d_output_size(input.shape, kernel_size, stride, padding, dilation)
    torch._check_value(
        out_h >= 0 and out_w >= 0,
        lambda: (
            f"input: height and width {list(input.shape[2:])} (padded) are smaller than the "
            "dilated kernel"
        ),
    )
    _check_bias(bias, values, n, "out_channels")
    return n, out_h, out_w


def check_sparse_conv2d_backward(
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
) -> tuple[int, int, int]:
    n, out_h, out_w = check_sparse_conv2d(
        input,
        values,
        row_offsets,
        col_indices,
        col_offsets,
        row_indices,
        csr_positions,
        None,
        kernel_size,
        stride,
        padding,
        dilation,
    )
    _check_like_values(grad_output, "grad_output", values)
    expected = [input.shape[0], n, out_h, out_w]
    torch._check_value(
        list(grad_output.shape) == expected,
        lambda: (
            f"grad_output: expected shape {expected} (batch, out_channels, out_height, "
            f"out_width), got {list(grad_output.shape)}"
        ),
    )
    return n, out_h, out_w


SPARSE_CHECKS = {
    "sparse_linear": check_sparse_linear,
    "sparse_linear_backward": check_sparse_backward,
    "sparse_conv2d": check_sparse_conv2d,
    "sparse_conv2d_backward": check_sparse_conv2d_backward,
}


def _check_bias(bias, values, n: int, what: str) -> None:
    """An optional bias: values' device and dtype, shape [n] (`what` names n)."""
    if bias is None:
        return
    _check_like_values(bias, "bias", values)
    torch._check_value(
        tuple(bias.shape) == (n,),
        lambda: f"bias: expected shape [{n}] ({what}), got {list(bias.shape)}",
    )
