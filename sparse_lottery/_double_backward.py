"""Autograd of the gradient ops and of `apply_mask`, so that `create_graph=True` (gradient
penalties, Hessian-vector products, MAML) differentiates exactly through every op, to any order.

A gradient op is bilinear in (grad_output, input or weight): for y = f(x, W) + b it returns
(dx, dW, db) = (g·∂f/∂x, g·∂f/∂W, Σ g), and its vector-Jacobian product for cotangents
(gx, gW, gb) of (dx, dW, db) is

    ∂/∂g = f(gx, W) + f(x, gW) + gb           the forward op, twice
    ∂/∂x = the input gradient of weights gW   } one call of the gradient op itself,
    ∂/∂W = the weight gradient of input gx    } with (x, W) replaced by (gx, gW)

so each op's derivative is made of the same ops, at the same (sparse) cost, and is itself
differentiable. Training does not pay for this: the layers' backward calls the gradient ops
below autograd unless a graph of the gradients is being built (csrc/registration.cpp).
"""

from collections.abc import Callable
from functools import partial

import torch

from . import _library  # noqa: F401  (the schemas)

_ops = torch.ops.sparse_lottery
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Backward = Callable[..., tuple]


def _vjp(forward: Forward, backward: Backward, grad, input, weight, gx, gw, gb, need, bias_view):
    """(∂/∂grad, ∂/∂input, ∂/∂weight) of a gradient op (see the module doc), each None unless
    `need` (for grad, input, weight) asks for it and a cotangent reaches it. `forward(x, W, b)`
    is the layer's op; `backward(grad, x, W, output_mask)` its gradient op; `bias_view` the
    shape that broadcasts d_bias over grad_output."""
    d_grad = None
    if need[0]:
        terms = []
        if gx is not None:
            terms.append(forward(gx, weight, None))
        if gw is not None:
            terms.append(forward(input, gw, gb))
        elif gb is not None:
            terms.append(gb.view(bias_view).expand(grad.shape))
        d_grad = sum(terms[1:], terms[0]) if terms else None
    want = [bool(need[1]) and gw is not None, bool(need[2]) and gx is not None, False]
    if not any(want):
        return d_grad, None, None
    x = gx if gx is not None else input  # read for its shape only when gx is None
    w = gw if gw is not None else weight  # read only when gw is given
    d_input, d_weight, _ = backward(grad, x, w, want)
    return d_grad, d_input, d_weight


def _produced(grads, output_mask) -> list:
    """The cotangents of the outputs the op computed (the others are None)."""
    return [g if asked else None for g, asked in zip(grads, output_mask)]


# --------------------------------------------------------------------------- masked linear
def _masked_forward(mask):
    return lambda x, w, b: _ops.masked_linear(x, w, mask, b)


def _masked_backward(mask):
    return lambda g, x, w, want: _ops.masked_linear_backward(g, x, w, mask, want)


def _setup_masked_backward(ctx, inputs, output):
    grad, input, weight, mask, output_mask = inputs
    ctx.save_for_backward(grad, input, weight, mask)
    ctx.output_mask = output_mask


def _masked_backward_vjp(ctx, *grads):
    grad, input, weight, mask = ctx.saved_tensors
    gx, gw, gb = _produced(grads, ctx.output_mask)
    need = ctx.needs_input_grad
    d = _vjp(_masked_forward(mask), _masked_backward(mask), grad, input, weight, gx, gw, gb,
             need[:3], (-1,))  # fmt: skip
    return *d, None, None


def _setup_masked_half(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # grad_output, weight or input, mask


def _masked_half_vjp(ctx, cotangent, input_half: bool):
    """VJP of masked_linear_grad_input (grad_output, weight, mask → dx; `input_half`) or of
    masked_linear_grad_weight (grad_output, input, mask → dW)."""
    grad, other, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    x, w = (None, other) if input_half else (other, None)
    gx, gw = (cotangent, None) if input_half else (None, cotangent)
    d_grad, d_input, d_weight = _vjp(
        _masked_forward(mask), _masked_backward(mask), grad, x, w, gx, gw, None,
        (need[0], not input_half and need[1], input_half and need[1]), (-1,),
    )  # fmt: skip
    return d_grad, d_weight if input_half else d_input, None


# --------------------------------------------------------------------------- sparse ops
def _setup_sparse_linear_backward(ctx, inputs, output):
    grad, input, values, *layout, output_mask = inputs
    ctx.save_for_backward(grad, input, values, *layout)
    ctx.output_mask = output_mask


def _sparse_linear_backward_vjp(ctx, *grads):
    grad, input, values, *layout = ctx.saved_tensors
    forward = lambda x, v, b: _ops.sparse_linear(x, v, *layout, b)  # noqa: E731
    backward = lambda g, x, v, want: _ops.sparse_linear_backward(g, x, v, *layout, want)  # noqa: E731
    d = _vjp(forward, backward, grad, input, values, *_produced(grads, ctx.output_mask),
             ctx.needs_input_grad[:3], (-1,))  # fmt: skip
    return *d, *[None] * 6


def _setup_sparse_conv2d_backward(ctx, inputs, output):
    grad, input, values, *rest = inputs
    ctx.save_for_backward(grad, input, values, *rest[:5])
    ctx.geometry, ctx.output_mask = rest[5:9], rest[9]


def _sparse_conv2d_backward_vjp(ctx, *grads):
    grad, input, values, *layout = ctx.saved_tensors
    geometry = ctx.geometry
    forward = lambda x, v, b: _ops.sparse_conv2d(x, v, *layout, b, *geometry)  # noqa: E731
    backward = lambda g, x, v, want: _ops.sparse_conv2d_backward(  # noqa: E731
        g, x, v, *layout, *geometry, want
    )
    d = _vjp(forward, backward, grad, input, values, *_produced(grads, ctx.output_mask),
             ctx.needs_input_grad[:3], (1, -1, 1, 1))  # fmt: skip
    return *d, *[None] * 10


# --------------------------------------------------------------------------- apply_mask
def _setup_apply_mask(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _apply_mask_vjp(ctx, grad):
    (mask,) = ctx.saved_tensors
    return _ops.apply_mask(grad, mask), None


for _name, _vjp_fn, _setup in (
    ("masked_linear_backward", _masked_backward_vjp, _setup_masked_backward),
    ("masked_linear_grad_input", partial(_masked_half_vjp, input_half=True), _setup_masked_half),
    ("masked_linear_grad_weight", partial(_masked_half_vjp, input_half=False), _setup_masked_half),
    ("sparse_linear_backward", _sparse_linear_backward_vjp, _setup_sparse_linear_backward),
    ("sparse_conv2d_backward", _sparse_conv2d_backward_vjp, _setup_sparse_conv2d_backward),
    ("apply_mask", _apply_mask_vjp, _setup_apply_mask),
):
    torch.library.register_autograd(f"sparse_lottery::{_name}", _vjp_fn, setup_context=_setup)
