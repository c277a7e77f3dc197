"""Dense-fused or sparse execution, per layer: `set_execution(model, mode)`.

"dense" runs every masked linear and 2-D convolution layer in its dense-fused form
(`MaskedLinear`, `MaskedConv2d`: the mask fused into dense products), "sparse" in its sparse form
(`SparseLinear`, `SparseConv2d`: stored weights only, so products, gradients and optimiser
state cost the survivors), and "auto" picks per layer from a measured crossover: one training
step (forward and both gradients) of each form, timed on the layer's device, dtype and input
shape, the sparse form kept only where it is faster (so auto is never slower than dense beyond
timing noise). Every layer is measured, dense ones too: where the framework's dense kernel is
inefficient (a convolution over a 2×2 map) the sparse form can win at any density. Decisions
are cached per (layer type, device, dtype, shape, density, input shape).

Conversion replaces modules, so call it where masks are fixed for a while, before building the
optimiser (at the start of an IMP level), and convert back with "dense" before pruning.

Example:
    >>> import torch, sparse_lottery as sl
    >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(64, 64)))
    >>> model[0].set_mask(torch.rand(64, 64) < 0.02)
    >>> sl.set_execution(model, "sparse")
    {'0': 'sparse'}
    >>> type(model[0]).__name__
    'SparseLinear'
    >>> sl.set_execution(model, "dense")
    {'0': 'dense'}
"""

import time
from collections.abc import Mapping

import torch
from torch import nn

from .model import _replace_modules
from .nn.masked import MaskedLinear
from .nn.sparse import SPARSE_TYPES, _SparseWeight

MODES = ("auto", "dense", "sparse")
DEFAULT_BATCH = 256
_decisions: dict[tuple, str] = {}


def set_execution(
    model: nn.Module,
    mode: str | Mapping[str, str] = "auto",
    batch: int = DEFAULT_BATCH,
    example: torch.Tensor | None = None,
) -> dict:
    """Convert the model's masked linear and 2-D convolution layers to the execution `mode`
    ("auto", "dense" or "sparse"), in place; returns {layer name: "dense" or "sparse"}.

    Args:
        mode: "auto", "dense", "sparse", or a plan {layer name: "dense" or "sparse"} as an
            earlier call returned it (to restore the same forms, e.g. when resuming a run;
            layers it does not name stay as they are).
        batch: rows per step that "auto" times linear layers with (tokens or examples per
            training step), when no `example` is given.
        example: an input batch of the model: "auto" then times every layer on inputs of the
            shape it receives from it (one forward pass, no gradient). Convolutions need it
            (their input size is otherwise unknown): without it they stay dense in "auto".

    Layers without a sparse form (grouped or non-zero-padded convolutions) stay dense.
    """
    plan = dict(mode) if isinstance(mode, Mapping) else None
    if plan is not None:
        bad = {k: v for k, v in plan.items() if v not in ("dense", "sparse")}
        if bad:
            raise ValueError(f"mode: a plan maps layer names to 'dense' or 'sparse', got {bad}")
    elif mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)} or a plan dict, got {mode!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    shapes = _input_shapes(model, example) if mode == "auto" and example is not None else {}
    chosen: dict[str, str] = {}

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        is_sparse = isinstance(module, _SparseWeight)
        if not is_sparse and type(module) not in SPARSE_TYPES:
            return None
        masked = None  # the dense-fused form, made only where it is needed
        if plan is not None and name not in plan:
            return None
        if not is_sparse and SPARSE_TYPES[type(module)].unsupported(module):
            want = "dense"
        elif plan is not None:
            want = plan[name]
        elif mode == "auto":
            masked = module.to_masked() if is_sparse else module
            shape = shapes.get(name) or (
                (batch, masked.in_features) if isinstance(masked, MaskedLinear) else None
            )
            want = choose(masked, shape) if shape is not None else "dense"
        else:
            want = mode
        chosen[name] = want
        if want == "sparse" and not is_sparse:
            return SPARSE_TYPES[type(module)].from_masked(module)
        if want == "dense" and is_sparse:
            return masked if masked is not None else module.to_masked()
        return None

    _replace_modules(model, convert)
    return chosen


def _input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The input shape of every masked or sparse layer in one forward pass of `example`."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []

    def record(name):
        def hook(_, args):
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    for name, module in model.named_modules():
        if type(module) in SPARSE_TYPES or isinstance(module, _SparseWeight):
            hooks.append(module.register_forward_pre_hook(record(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def choose(layer: nn.Module, input_shape: tuple[int, ...]) -> str:
    """ "dense" or "sparse": the faster training step of the masked `layer` for inputs of
    `input_shape` (see the module doc)."""
    weight = layer.weight
    key = (type(layer), weight.device.type, weight.dtype, tuple(weight.shape),
           round(layer.density, 3), tuple(input_shape))  # fmt: skip
    if key not in _decisions:
        sparse = SPARSE_TYPES[type(layer)].from_masked(layer)
        x = torch.randn(input_shape, device=weight.device, dtype=weight.dtype)
        t_dense, t_sparse = _step_time(layer, x), _step_time(sparse, x)
        _decisions[key] = "sparse" if t_sparse < t_dense else "dense"
    return _decisions[key]


def _step_time(layer: nn.Module, x: torch.Tensor, reps: int = 3) -> float:
    """Best of `reps` timings of forward + backward (input and parameter gradients)."""
    x = x.detach().requires_grad_()
    params = [p for p in layer.parameters() if p.requires_grad]
    out = layer(x)
    grad = torch.randn_like(out)

    def step():
        torch.autograd.grad(layer(x), [x, *params], grad)

    step()  # warm-up
    best = float("inf")
    for _ in range(reps):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


__all__ = ["set_execution", "choose", "MODES"]
