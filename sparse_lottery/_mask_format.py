"""The packed mask format and the input checks shared by every backend.

A mask for a tensor of shape S is either a bool tensor of shape S, or its packed form: uint8 of
shape (rows, ceil(cols / 8)), where (rows, cols) is the GEMM view of S (rows = S[0] and
cols = prod(S[1:]) for 2-D and larger, (1, S[0]) for 1-D, (1, 1) for a scalar). Bit b of byte c
of row r (least significant bit first) is the mask of element (r, 8c + b); padding bits are zero.
"""

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def gemm_view(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of the row-major 2-D view that masks and packed masks use."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), math.prod(int(s) for s in shape[1:])


def packed_shape(shape: Sequence[int]) -> tuple[int, int]:
    """Shape of the packed (uint8) form of a mask for a tensor of `shape`."""
    rows, cols = gemm_view(shape)
    return rows, (cols + 7) // 8


def count_kept(packed: torch.Tensor) -> int:
    """Number of set bits of a packed mask (the weights it keeps), without unpacking it."""
    return sum(int(((packed >> b) & 1).sum(dtype=torch.int64)) for b in range(8))


def check_mask(
    mask: torch.Tensor, shape: Sequence[int], name: str = "mask", of: str = "weight"
) -> None:
    """Raise if `mask` is neither a bool mask of `shape` nor its packed form."""
    shape = tuple(shape)
    if mask.dtype == torch.bool:
        torch._check(
            tuple(mask.shape) == shape,
            lambda: (
                f"{name}: expected a bool mask of {of}'s shape {list(shape)}, "
                f"got shape {list(mask.shape)}"
            ),
        )
    elif mask.dtype == torch.uint8:
        expected = packed_shape(shape)
        torch._check(
            tuple(mask.shape) == expected,
            lambda: (
                f"{name}: expected a packed uint8 mask of shape {list(expected)} for {of} "
                f"of shape {list(shape)}, got shape {list(mask.shape)}"
            ),
        )
    else:
        raise TypeError(
            f"{name}: expected dtype torch.bool (one flag per weight) or torch.uint8 (packed by "
            f"sparse_lottery.pack_mask), got {mask.dtype}"
        )


def check_float(t: torch.Tensor, name: str) -> None:
    torch._check(
        t.dtype in FLOAT_DTYPES,
        lambda: (
            f"{name}: expected a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, got {t.dtype}"
        ),
    )


def check_same(ref: torch.Tensor, ref_name: str, t: torch.Tensor | None, name: str) -> None:
    """`t` has `ref`'s dtype and device (skipped when `t` is None)."""
    if t is None:
        return
    torch._check(
        t.device == ref.device,
        lambda: f"{name}: expected device {ref.device} (the device of {ref_name}), got {t.device}",
    )
    torch._check(
        t.dtype == ref.dtype,
        lambda: f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {t.dtype}",
    )


def check_device(ref: torch.Tensor, ref_name: str, t: torch.Tensor, name: str) -> None:
    torch._check(
        t.device == ref.device,
        lambda: f"{name}: expected device {ref.device} (the device of {ref_name}), got {t.device}",
    )


def check_masked_linear(input, weight, mask, bias=None) -> None:
    """All user-facing checks of masked_linear, shared by fake and real kernels."""
    check_float(weight, "weight")
    torch._check(
        weight.dim() == 2,
        lambda: (
            f"weight: expected a 2-D tensor (out_features, in_features), "
            f"got {weight.dim()}-D of shape {list(weight.shape)}"
        ),
    )
    check_same(weight, "weight", input, "input")
    torch._check(
        input.dim() >= 1,
        lambda: "input: expected at least 1 dimension (..., in_features), got a scalar",
    )
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: (
            f"input: expected last dimension in_features={weight.shape[1]} (weight is "
            f"{list(weight.shape)}), got {input.shape[-1]} (input shape {list(input.shape)})"
        ),
    )
    check_device(weight, "weight", mask, "mask")
    check_mask(mask, weight.shape)
    if bias is not None:
        check_same(weight, "weight", bias, "bias")
        torch._check(
            tuple(bias.shape) == (weight.shape[0],),
            lambda: (
                f"bias: expected shape [{weight.shape[0]}] (out_features), got {list(bias.shape)}"
            ),
        )


def check_grad_input(grad_output, weight, mask):
    check_float(weight, "weight")
    check_same(weight, "weight", grad_output, "grad_output")
    torch._check(weight.dim() == 2, lambda: f"weight: expected 2-D, got {weight.dim()}-D")
    torch._check(
        grad_output.dim() >= 1 and grad_output.shape[-1] == weight.shape[0],
        lambda: (
            f"grad_output: expected last dimension out_features={weight.shape[0]}, "
            f"got shape {list(grad_output.shape)}"
        ),
    )
    check_device(weight, "weight", mask, "mask")
    check_mask(mask, weight.shape)


def check_grad_weight(grad_output, input, mask):
    check_float(input, "input")
    check_same(input, "input", grad_output, "grad_output")
    torch._check(
        grad_output.shape[:-1] == input.shape[:-1],
        lambda: (
            f"grad_output: expected batch dimensions {list(input.shape[:-1])} (input's), "
            f"got {list(grad_output.shape[:-1])}"
        ),
    )
    check_device(input, "input", mask, "mask")
    check_mask(mask, (grad_output.shape[-1], input.shape[-1]))


def check_backward(grad_output, input, weight, mask, output_mask):
    torch._check(
        not output_mask[0] or weight is not None,
        lambda: "weight: required for grad_input (output_mask[0] is set), got None",
    )
    torch._check(
        not output_mask[1] or input is not None,
        lambda: "input: required for grad_weight (output_mask[1] is set), got None",
    )
    check_float(grad_output, "grad_output")
    torch._check(
        grad_output.dim() >= 1,
        lambda: "grad_output: expected at least 1 dimension (..., out_features), got a scalar",
    )
    if weight is not None:
        check_grad_input(grad_output, weight, mask)
    if input is not None:
        check_grad_weight(grad_output, input, mask)
    if weight is not None and input is not None:
        torch._check(
            input.shape[-1] == weight.shape[1],
            lambda: (
                f"input: expected last dimension in_features={weight.shape[1]} (weight is "
                f"{list(weight.shape)}), got shape {list(input.shape)}"
            ),
        )


def check_masks_list(tensors, masks):
    torch._check(
        len(tensors) == len(masks),
        lambda: f"masks: expected {len(tensors)} masks (one per tensor), got {len(masks)}",
    )
    for i, (t, m) in enumerate(zip(tensors, masks)):
        check_device(t, f"tensors[{i}]", m, f"masks[{i}]")
        check_mask(m, t.shape, name=f"masks[{i}]", of=f"tensors[{i}]")


def check_bool(mask):
    torch._check(
        mask.dtype == torch.bool, lambda: f"mask: expected dtype torch.bool, got {mask.dtype}"
    )


def check_packed(packed, shape):
    torch._check(
        packed.dtype == torch.uint8,
        lambda: f"packed: expected dtype torch.uint8, got {packed.dtype}",
    )
    expected = packed_shape(shape)
    torch._check(
        tuple(packed.shape) == expected,
        lambda: (
            f"packed: expected shape {list(expected)} for a mask of shape {list(shape)}, "
            f"got {list(packed.shape)}"
        ),
    )


def check_apply_mask(tensor, mask):
    check_device(tensor, "tensor", mask, "mask")
    check_mask(mask, tensor.shape, of="tensor")


SELECTION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_amounts(amounts, counts: bool, layerwise: bool, tensors: int) -> None:
    """One amount for the global scope, one per tensor for layerwise; fractions in [0, 1] or
    whole counts ≥ 0."""
    expected = tensors if layerwise else 1
    if len(amounts) != expected:
        scope = "one per tensor, layerwise scope" if layerwise else "global scope"
        raise ValueError(f"amounts: expected {expected} amount(s) ({scope}), got {len(amounts)}")
    for i, a in enumerate(amounts):
        check_amount(f"amounts[{i}]", a, counts)


def check_amount(name: str, a: float, counts: bool) -> None:
    """A fraction in [0, 1], or with `counts` a whole count ≥ 0; errors name `name`."""
    if counts and not (math.isfinite(a) and a >= 0 and float(a).is_integer()):
        raise ValueError(f"{name}: expected a whole count ≥ 0, got {a}")
    if not counts and not 0.0 <= a <= 1.0:
        raise ValueError(f"{name}: expected a fraction in [0, 1], got {a}")


def check_magnitude_prune(weights, masks, amounts, counts, layerwise) -> None:
    if len(masks) != len(weights):
        raise ValueError(
            f"masks: expected {len(weights)} masks (one per weight, or None), got {len(masks)}"
        )
    for i, (w, m) in enumerate(zip(weights, masks)):
        if w.dtype not in SELECTION_DTYPES:
            raise TypeError(
                f"weights[{i}]: expected dtype torch.float32, torch.bfloat16 or torch.float16, "
                f"got {w.dtype}"
            )
        check_device(weights[0], "weights[0]", w, f"weights[{i}]")
        if m is not None:
            check_device(w, f"weights[{i}]", m, f"masks[{i}]")
            check_mask(m, w.shape, name=f"masks[{i}]", of=f"weights[{i}]")
    check_amounts(amounts, counts, layerwise, len(weights))


def check_random_prune(masks, amounts, counts, layerwise, seed) -> None:
    for i, m in enumerate(masks):
        check_device(masks[0], "masks[0]", m, f"masks[{i}]")
        if not (m.dtype == torch.bool or (m.dtype == torch.uint8 and m.dim() == 2)):
            raise TypeError(
                f"masks[{i}]: expected a bool mask or a packed 2-D torch.uint8 mask, "
                f"got {m.dim()}-D {m.dtype}"
            )
    check_amounts(amounts, counts, layerwise, len(masks))


# --------------------------------------------------------------------------- optimisers
# Mirrors csrc/masked_optim.h: TypeError for a wrong kind of tensor, ValueError for a wrong
# count, shape or device.
def _check_like(ref, ref_name: str, t, name: str) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got {t.layout}")
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {t.dtype}"
        )
    if t.device != ref.device:
        raise ValueError(
            f"{name}: expected device {ref.device} (the device of {ref_name}), got {t.device}"
        )
    if tuple(t.shape) != tuple(ref.shape):
        raise ValueError(
            f"{name}: expected shape {list(ref.shape)} (the shape of {ref_name}), "
            f"got {list(t.shape)}"
        )


def _check_optim_mask(mask, param, name: str, of: str) -> None:
    if mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(
            f"{name}: expected dtype torch.bool (one flag per weight) or torch.uint8 (packed by "
            f"sparse_lottery.pack_mask), got {mask.dtype}"
        )
    if mask.device != param.device:
        raise ValueError(
            f"{name}: expected device {param.device} (the device of {of}), got {mask.device}"
        )
    if mask.dtype == torch.uint8 and tuple(mask.shape) != packed_shape(param.shape):
        raise ValueError(
            f"{name}: expected a packed uint8 mask of shape {list(packed_shape(param.shape))} "
            f"for {of} of shape {list(param.shape)}, got shape {list(mask.shape)}"
        )
    if mask.dtype == torch.bool and tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"{name}: expected a bool mask of {of}'s shape {list(param.shape)}, "
            f"got shape {list(mask.shape)}"
        )


def check_optim_lists(params, grads, states: dict, masks) -> None:
    """One gradient, one tensor of each state list and one mask (or None) per parameter, each
    like its parameter; parameters of a float dtype, all on one device."""
    n = len(params)
    for name, items, what in (
        ("grads", grads, "tensors (one per parameter)"),
        ("masks", masks, "masks (one per parameter, or None)"),
        *((k, v, "tensors (one per parameter)") for k, v in states.items()),
    ):
        if len(items) != n:
            raise ValueError(f"{name}: expected {n} {what}, got {len(items)}")
    for i, p in enumerate(params):
        pn = f"params[{i}]"
        if p.layout != torch.strided:
            raise TypeError(f"{pn}: expected a dense (strided) tensor, got {p.layout}")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{pn}: expected a floating dtype in {[str(d) for d in FLOAT_DTYPES]}, "
                f"got {p.dtype}"
            )
        if p.device != params[0].device:
            raise ValueError(
                f"{pn}: expected device {params[0].device} (the device of params[0]), "
                f"got {p.device}"
            )
        _check_like(p, pn, grads[i], f"grads[{i}]")
        for name, items in states.items():
            _check_like(p, pn, items[i], f"{name}[{i}]")
        if masks[i] is not None:
            _check_optim_mask(masks[i], p, f"masks[{i}]", pn)


def check_masked_sgd(
    params, grads, momentum_buffers, masks, _lr, momentum, dampening, _weight_decay, nesterov, *_
) -> None:
    if momentum == 0 and len(momentum_buffers):
        raise ValueError(
            f"momentum_buffers: expected none when momentum is 0, got {len(momentum_buffers)}"
        )
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"nesterov: expected momentum > 0 and dampening == 0, got momentum {momentum} "
            f"and dampening {dampening}"
        )
    states = {"momentum_buffers": momentum_buffers} if momentum != 0 else {}
    check_optim_lists(params, grads, states, masks)


def check_masked_adamw(params, grads, exp_avgs, exp_avg_sqs, masks, *hyper) -> None:
    step = hyper[5]  # after lr, beta1, beta2, eps, weight_decay
    if step < 1:
        raise ValueError(f"step: expected the step count after this step, >= 1, got {step}")
    check_optim_lists(params, grads, {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}, masks)


# The checks each kernel op runs before a Python backend (reference, Triton) sees its input;
# the C++ kernels run the same checks (csrc/mask_format.h).
CHECKS = {
    "masked_linear": check_masked_linear,
    "masked_linear_grad_input": check_grad_input,
    "masked_linear_grad_weight": check_grad_weight,
    "masked_linear_backward": check_backward,
    "apply_mask": check_apply_mask,
    "apply_masks_": check_masks_list,
    "pack_mask": check_bool,
    "unpack_mask": check_packed,
    "magnitude_prune": check_magnitude_prune,
    "random_prune": check_random_prune,
    "masked_sgd_": check_masked_sgd,
    "masked_adamw_": check_masked_adamw,
}
