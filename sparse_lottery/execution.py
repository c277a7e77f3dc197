"""Dense-fused or sparse execution, per layer: `set_execution(model, mode)`.

"dense" runs every masked linear and 2-D convolution layer in its dense-fused form
(`MaskedLinear`, `MaskedConv2d`: the mask fused into dense products), "sparse" in its sparse form
(`SparseLinear`, `SparseConv2d`: stored weights only, so products, gradients and optimiser
state cost the survivors), and "auto" picks per layer from a measured crossover: one training
step (forward, the gradients training needs — the input's too, except for the first layer of
an `example` that requires none — and the masked optimiser's update of the stored parameters:
SGD with momentum, or AdamW with `optimizer="adamw"`) of each form, timed on the layer's
device, dtype and input shape, the sparse form kept only where it is
faster (so auto is never slower than dense beyond timing noise). Every pruned layer is
measured, nearly dense ones too (where the dense kernel is inefficient the sparse form can win
at a high density); a layer that keeps every weight stays dense (torch's own kernel).
Measurements are kept per (layer type, device, dtype, shape, input shape, input gradient,
optimiser): see `choose`.

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

from . import ops  # noqa: F401  (registers the optimiser kernels)
from .model import _replace_modules
from .nn.masked import MaskedLinear, mask_of
from .nn.sparse import SPARSE_TYPES, _SparseWeight

MODES = ("auto", "dense", "sparse")
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_BATCH = 256
_decisions: dict[tuple, dict] = {}  # layer configuration -> what its measurements showed


def set_execution(
    model: nn.Module,
    mode: str | Mapping[str, str] = "auto",
    batch: int = DEFAULT_BATCH,
    example: torch.Tensor | None = None,
    optimizer: str = "sgd",
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
            shape it receives from it (one forward pass in eval mode), the first layer with
            an input gradient only if `example` requires grad. Convolutions need it (their
            input size is otherwise unknown): without it they stay dense in "auto".
        optimizer: "sgd" or "adamw", the masked optimiser that "auto" times each form's update
            with (AdamW's update costs more per stored weight, which favours the sparse form).

    Layers without a sparse form (grouped or non-zero-padded convolutions) stay dense.
    """
    plan = dict(mode) if isinstance(mode, Mapping) else None
    if plan is not None:
        bad = {k: v for k, v in plan.items() if v not in ("dense", "sparse")}
        if bad:
            raise ValueError(f"mode: a plan maps layer names to 'dense' or 'sparse', got {bad}")
        layers = [n for n, m in model.named_modules() if _has_forms(m)]
        unknown = sorted(set(plan) - set(layers))
        if unknown:
            raise ValueError(
                f"mode: the plan names {unknown}, not masked layers of the model ({layers})"
            )
    elif mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)} or a plan dict, got {mode!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {optimizer!r}")
    shapes = _input_shapes(model, example) if mode == "auto" and example is not None else {}
    chosen: dict[str, str] = {}

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        if not _has_forms(module):
            return None
        is_sparse = isinstance(module, _SparseWeight)
        masked = None  # the dense-fused form, made only where it is needed
        if plan is not None and name not in plan:
            return None
        if not is_sparse and SPARSE_TYPES[type(module)].unsupported(module):
            want = "dense"
        elif plan is not None:
            want = plan[name]
        elif mode == "auto":
            masked = module.to_masked() if is_sparse else module
            shape, input_grad = shapes.get(name) or (
                (batch, masked.in_features) if isinstance(masked, MaskedLinear) else None,
                True,
            )
            want = choose(masked, shape, input_grad, optimizer) if shape is not None else "dense"
        else:
            want = mode
        chosen[name] = want
        if want == "sparse" and not is_sparse:
            return _retiring(module, SPARSE_TYPES[type(module)].from_masked(module), name)
        if want == "dense" and is_sparse:
            return _retiring(module, masked if masked is not None else module.to_masked(), name)
        return None

    _replace_modules(model, convert)
    return chosen


def _has_forms(module: nn.Module) -> bool:
    """Whether `set_execution` converts `module`: a masked layer with a sparse form, or one."""
    return isinstance(module, _SparseWeight) or type(module) in SPARSE_TYPES


RETIRED = "_sparse_lottery_retired"  # attribute of a Parameter that a conversion replaced


def _retiring(old: nn.Module, new: nn.Module, name: str) -> nn.Module:
    """`new`, after marking the Parameters of `old` it does not keep (the weight or `values`):
    the masked optimisers refuse them, since they no longer receive gradients (an optimiser
    built before `set_execution` would otherwise train nothing, silently)."""
    kept = {id(p) for p in new.parameters()}
    for key, param in old.named_parameters():
        if id(param) not in kept:
            setattr(param, RETIRED, f"{name}.{key}" if name else key)
    return new


def _input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple, bool]]:
    """(input shape, whether training needs the input's gradient) of every masked or sparse
    layer, from one forward pass of `example` in eval mode (so that it changes no state: batch
    norm's running statistics stay as they were). A network's first layer needs no input
    gradient unless `example` requires one, so its step is then timed without it."""
    shapes: dict[str, tuple[tuple, bool]] = {}
    hooks = []

    def record(name):
        def hook(_, args):
            shapes.setdefault(name, (tuple(args[0].shape), args[0].requires_grad))

        return hook

    for name, module in model.named_modules():
        if _has_forms(module):
            hooks.append(module.register_forward_pre_hook(record(name)))
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.enable_grad():
            model(example)
    except (RuntimeError, TypeError, AttributeError, ValueError) as error:
        what = f"shape {list(example.shape)}" if isinstance(example, torch.Tensor) else "it"
        raise ValueError(
            f"example: expected an input batch of the model, but its forward pass on {what} "
            f"failed: {error}"
        ) from error
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in training.items():
            m.training = mode
    return shapes


_OPS = torch.ops.sparse_lottery  # the masked optimisers' kernels, for the timed steps
SPARSE_MARGIN = 0.9  # the sparse form must be at least 10% faster to be chosen
GIVE_UP = 1.5  # a sparse warm-up step this much slower than dense ends the measurement


def choose(layer: nn.Module, input_shape: tuple[int, ...], input_grad: bool = True,
           optimizer: str = "sgd") -> str:  # fmt: skip
    """ "dense" or "sparse": the faster training step of the masked `layer` for inputs of
    `input_shape`, with the input's gradient when `input_grad` and the update of the masked
    `optimizer` ("sgd" or "adamw"; see the module doc). The two
    forms are timed alternately (`_step_times`); the sparse form must beat dense by
    `SPARSE_MARGIN` (a near tie stays dense: switching must pay beyond timing noise), and the
    measurement stops after the warm-up when sparse is `GIVE_UP` times slower than dense (the
    common case for convolutions at moderate density, so choosing costs little there).

    Decisions are reused: the sparse step only gets cheaper as the density falls, so a layer
    whose sparse form won at some density takes it at every lower one, and one whose sparse
    form lost keeps dense at every higher one (IMP's levels only lower the density). Below a
    lost density d₀ the sparse step is not measured again until it could win: a step costing
    a + b·d (fixed work plus work per stored weight) takes at least t(d₀)·d/d₀ at density
    d ≤ d₀, so while that bound is not below the margin times the last dense time (the dense
    time does not depend on the density below 1) the layer stays dense without a measurement
    (an IMP level then chooses in microseconds instead of timing every layer's losing sparse
    form again). A full mask is dense without a measurement: the dense form then runs torch's
    own kernel, and the sparse form would run the same products with every weight's index."""
    exact = layer.density
    if exact >= 1.0:  # torch's own kernel, against the same products plus the index traffic
        return "dense"
    weight = layer.weight
    config = (type(layer), weight.device.type, weight.dtype, tuple(weight.shape),
              tuple(input_shape), input_grad, optimizer)  # fmt: skip
    density = round(exact, 3)
    known = _decisions.setdefault(
        config, {"won": -1.0, "lost": 2.0, "dense": None, "lost_time": 0.0}
    )
    if density <= known["won"]:
        return "sparse"
    if density >= known["lost"]:
        return "dense"
    t_dense = known["dense"]
    if t_dense is not None and known["lost_time"] * density / known["lost"] >= (
        SPARSE_MARGIN * t_dense
    ):
        return "dense"  # cannot win yet (see the bound above)
    x = torch.full(input_shape, 0.5, device=weight.device, dtype=weight.dtype)
    sparse = SPARSE_TYPES[type(layer)].from_masked(layer)
    t_dense, t_sparse = _step_times(layer, sparse, x, input_grad, optimizer=optimizer)
    known["dense"] = t_dense
    if t_sparse < SPARSE_MARGIN * t_dense:
        known["won"] = max(known["won"], density)
        return "sparse"
    if density < known["lost"]:
        known["lost"], known["lost_time"] = density, t_sparse
    return "dense"


def _step_times(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, input_grad: bool = True,
                optimizer: str = "sgd", reps: int = 3,
                min_seconds: float = 0.02) -> tuple[float, float]:  # fmt: skip
    """Best training-step times (dense form, sparse form) on input `x`, the two timed
    alternately so that a drift of the machine's speed (seconds long on a shared machine) hits
    both: after one warm-up step each, pairs of steps until at least `reps` pairs and
    `min_seconds` of them (a small layer's single steps are noisy), at most 50. When the sparse
    warm-up is `GIVE_UP` times the dense one, one more step each and the better of the two
    (a warm-up may carry one-time costs, and `choose` bounds later densities by this time)."""
    steps = [_timed_step(m, x, input_grad, optimizer) for m in (dense, sparse)]
    times: list[list[float]] = [[step()] for step in steps]  # warm-ups
    if times[1][0] > GIVE_UP * times[0][0]:
        for t, step in zip(times, steps):
            t.append(step())
        return min(times[0]), min(times[1])
    for pairs in range(50):
        if pairs >= reps and sum(times[0][1:]) + sum(times[1][1:]) >= min_seconds:
            break
        for t, step in zip(times, steps):
            t.append(step())
    return min(times[0][1:]), min(times[1][1:])


class _Seed(torch.autograd.Function):
    """A zero scalar whose backward sends the fixed `grad` into `out`: the timed step then
    differentiates a scalar, as training does. Passing `grad` to `torch.autograd.grad` instead
    makes torch import sympy at the first such call (0.6 s on the CPU machine), a cost that
    plain training (`loss.backward()`) never pays."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        ctx.grad = grad
        return out.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        return ctx.grad, None


def _timed_step(layer: nn.Module, x: torch.Tensor, input_grad: bool, optimizer: str = "sgd"):
    """A function timing one training step of `layer`: forward + backward (parameter
    gradients, and the input's when `input_grad`) + the masked `optimizer`'s update (the
    kernel `sparse_lottery.optim` runs: SGD with momentum, or AdamW) of the stored parameters,
    masked like the layer's weight. The update writes copies, so the layer does not change;
    it returns seconds."""
    x = x.detach().requires_grad_(input_grad)
    params = [p for p in layer.parameters() if p.requires_grad]
    wrt = [x, *params] if input_grad else params
    masks = [mask_of(p) for p in params]  # the dense form's weight: its mask; the rest: none
    stored = [p.detach().clone() for p in params]
    copies = 2 if optimizer == "adamw" else 1  # exp_avg and exp_avg_sq, or the momentum
    states = [[torch.zeros_like(p) for p in stored] for _ in range(copies)]
    out = layer(x)
    grad = torch.full_like(out, 0.01)  # values do not change the time; randn would cost more

    def update(grads) -> None:  # lr 1e-3, momentum / beta1 0.9, no weight decay
        if optimizer == "adamw":
            _OPS.masked_adamw_(stored, grads, *states, masks, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, False)
        else:
            _OPS.masked_sgd_(stored, grads, *states, masks, 1e-3, 0.9, 0, 0, False, False, False)

    def timed() -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        grads = torch.autograd.grad(_Seed.apply(layer(x), grad), wrt)
        with torch.no_grad():
            update(list(grads[len(wrt) - len(params) :]))
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


__all__ = ["set_execution", "choose", "MODES", "OPTIMIZERS"]
