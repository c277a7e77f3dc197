"""Dense-fused or sparse execution, per layer: `set_execution(model, mode)`.

"dense" runs every linear layer as a `MaskedLinear` (the mask fused into dense products),
"sparse" as a `SparseLinear` (stored weights only: products, gradients and optimiser state cost
the survivors), and "auto" picks per layer from a measured crossover: one training step (forward
and both gradients) of each form, timed on the layer's device and dtype with a batch of
`batch` rows, the sparse form kept only where it is faster (so auto is never slower than dense
beyond timing noise). Layers at density above `MAX_SPARSE_DENSITY` stay dense without a
measurement: the sparse products then do at least half the dense work, with less regular
memory access. Decisions are cached per (device, dtype, shape, density, batch).

Conversion replaces modules, so call it where masks are fixed for a while, before building the
optimiser (at the start of an IMP level), and convert back with "dense" before pruning.
Masked convolutions stay dense.

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

import torch
from torch import nn

from .model import _replace_modules
from .nn.masked import MaskedLinear
from .nn.sparse import SparseLinear

MODES = ("auto", "dense", "sparse")
MAX_SPARSE_DENSITY = 0.3
DEFAULT_BATCH = 256
_decisions: dict[tuple, str] = {}


def set_execution(model: nn.Module, mode: str = "auto", batch: int = DEFAULT_BATCH) -> dict:
    """Convert the model's linear masked layers to the execution `mode` ("auto", "dense" or
    "sparse"), in place; returns {layer name: "dense" or "sparse"} for every such layer.

    `batch`: rows per step that "auto" times with (tokens or examples per step of training).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    chosen: dict[str, str] = {}

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, MaskedLinear | SparseLinear):
            return None
        want = mode if mode != "auto" else choose(module, batch)
        chosen[name] = want
        if want == "sparse" and isinstance(module, MaskedLinear):
            return SparseLinear.from_masked(module)
        if want == "dense" and isinstance(module, SparseLinear):
            return module.to_masked()
        return None

    _replace_modules(model, convert)
    return chosen


def choose(layer: MaskedLinear | SparseLinear, batch: int = DEFAULT_BATCH) -> str:
    """ "dense" or "sparse": the faster training step for this layer (see the module doc)."""
    if layer.density > MAX_SPARSE_DENSITY:
        return "dense"
    values = layer.values if isinstance(layer, SparseLinear) else layer.weight
    key = (
        values.device.type,
        values.dtype,
        layer.out_features,
        layer.in_features,
        round(layer.density, 3),
        batch,
    )
    if key not in _decisions:
        dense = layer.to_masked() if isinstance(layer, SparseLinear) else layer
        sparse = layer if isinstance(layer, SparseLinear) else SparseLinear.from_masked(layer)
        x = torch.randn(batch, layer.in_features, device=values.device, dtype=values.dtype)
        t_dense, t_sparse = _step_time(dense, x), _step_time(sparse, x)
        _decisions[key] = "sparse" if t_sparse < t_dense else "dense"
    return _decisions[key]


def _step_time(layer: nn.Module, x: torch.Tensor, reps: int = 3) -> float:
    """Best of `reps` timings of forward + backward (input and parameter gradients)."""
    x = x.detach().requires_grad_()
    params = [p for p in layer.parameters() if p.requires_grad]
    grad = torch.randn(x.shape[0], layer.out_features, device=x.device, dtype=x.dtype)

    def step():
        out = layer(x)
        torch.autograd.grad(out, [x, *params], grad)

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
