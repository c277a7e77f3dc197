"""Masked optimisers: `SGD` and `AdamW` that update only the weights a mask keeps.

They take torch's constructor arguments and state-dict layout (`momentum_buffer`; `step`,
`exp_avg`, `exp_avg_sq`), and each step is torch.optim's step (single-tensor maths) on the
surviving entries: pruned entries of the parameter and of its optimiser state are never
written, whatever weight decay or momentum would do to them. A parameter's mask is the packed
mask of the masked layer whose `weight` it is (`sparse_lottery.nn.mask_of`), read at every step,
so masks may change between steps (between IMP levels); other parameters (biases, plain
layers) are updated as torch updates them. One fused kernel call per device and param group
(`torch.ops.sparse_lottery.masked_sgd_` / `masked_adamw_`, C++ on the CPU, CUDA on the GPU).

Example:
    >>> import torch, sparse_lottery as sl
    >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()))
    >>> model[0].set_mask(torch.rand(4, 6) < 0.5)
    >>> before = model[0].weight.detach().clone()
    >>> opt = sl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    >>> model(torch.randn(8, 6)).sum().backward()
    >>> opt.step()
    >>> pruned = ~model[0].mask
    >>> bool((model[0].weight[pruned] == before[pruned]).all())
    True
"""

import functools
from collections import defaultdict

import torch
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

from . import ops  # noqa: F401  (registers the kernels)
from .execution import RETIRED
from .nn.masked import mask_of

_ops = torch.ops.sparse_lottery


def _check_supported(options: dict) -> None:
    """Options of torch's optimisers these kernels do not implement: only their defaults."""
    for name, (value, allowed) in options.items():
        if value not in allowed:
            raise ValueError(
                f"{name}: sparse_lottery.optim supports only {name} in {list(allowed)} "
                f"(one fused kernel per step), got {value!r}"
            )


def _check_hyper(**values) -> None:
    for name, value in values.items():
        if not value >= 0.0:
            raise ValueError(f"{name}: expected a value >= 0, got {value}")


def _hooked_step(step):
    """`step` wrapped as torch.optim wraps an optimiser's step (its step hooks, its profiler
    label), but through torch's own wrapper only while a hook is registered or a profiler runs:
    that wrapper's fixed cost (~0.1 ms per call on the CPU machine) is half of a small model's
    whole optimiser step."""
    with_hooks = Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
            or getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
            or torch._C._autograd._profiler_enabled()
        ):
            return with_hooks(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    wrapper.hooked = True  # Optimizer.__init__ wraps a step only when it is not marked so
    return wrapper


class _MaskedOptimizer(Optimizer):
    """The step loop shared by the masked optimisers; `_step_group` updates one param group."""

    _supported: dict = {}  # option -> the values these kernels implement
    _load_defaults: dict = {}  # option -> value, for state dicts saved without it (as torch)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._load_defaults.items():
                group.setdefault(key, value)

    def _check_group(self, group: dict) -> None:
        _check_supported({k: (group[k], allowed) for k, allowed in self._supported.items()})

    @_hooked_step
    @torch.no_grad()
    def step(self, closure=None):
        """One step for every parameter with a gradient; returns `closure()` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._check_group(group)
            self._step_group(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's `zero_grad`; the default (gradients set to None) runs without torch's profiler
        label and dynamo guard while no profiler runs: those cost ~20 µs per call on the CPU
        machine, the whole of the work for a small model."""
        if not set_to_none or torch._C._autograd._profiler_enabled():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _step_group(self, group: dict) -> None:
        raise NotImplementedError


def _check_not_retired(p: torch.Tensor) -> None:
    """A parameter without a gradient must not be one `set_execution` replaced."""
    name = getattr(p, RETIRED, None)
    if name is not None:
        raise RuntimeError(
            f"params: {name!r} was replaced by set_execution (its layer changed form and trains "
            f"a new parameter), so this optimiser would never update it; build the optimiser "
            f"after set_execution"
        )


def _grad(p: torch.Tensor) -> torch.Tensor:
    if p.grad.is_sparse:
        raise TypeError("grad: sparse gradients are not supported by sparse_lottery.optim")
    return p.grad


class SGD(_MaskedOptimizer):
    """`torch.optim.SGD` (momentum, dampening, Nesterov, weight decay, maximize) on the surviving
    weights only; same constructor and state (`momentum_buffer`). `foreach`, `fused` and
    `differentiable` are accepted only at their defaults.

    Example:
        >>> layer = sparse_lottery.nn.MaskedLinear(5, 3)
        >>> layer.set_mask(torch.eye(3, 5, dtype=torch.bool))
        >>> opt = sparse_lottery.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
        >>> layer(torch.randn(4, 5)).pow(2).sum().backward()
        >>> opt.step()
        >>> sorted(opt.state[layer.weight])
        ['momentum_buffer']
    """

    _supported = {"foreach": (None, False), "differentiable": (False,), "fused": (None, False)}
    _load_defaults = {"nesterov": False, "maximize": False, "foreach": None}
    _load_defaults |= {"differentiable": False, "fused": False}

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        _check_hyper(lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov: requires momentum > 0 and dampening == 0, got momentum {momentum} "
                f"and dampening {dampening}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _step_group(self, group: dict) -> None:
        momentum = group["momentum"]
        calls = defaultdict(lambda: ([], [], [], []))  # (device, new buffers) -> lists
        for p in group["params"]:
            if p.grad is None:
                _check_not_retired(p)
                continue
            first = False
            if momentum != 0:
                state = self.state[p]
                first = state.get("momentum_buffer") is None
                if first:  # zeros where pruned; the kernel sets buf = grad elsewhere
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            params, grads, bufs, masks = calls[p.device, first]
            params.append(p)
            grads.append(_grad(p))
            masks.append(mask_of(p))
            if momentum != 0:
                bufs.append(self.state[p]["momentum_buffer"])
        for (_, first), (params, grads, bufs, masks) in calls.items():
            _ops.masked_sgd_(
                params,
                grads,
                bufs,
                masks,
                float(group["lr"]),
                float(momentum),
                float(group["dampening"]),
                float(group["weight_decay"]),
                bool(group["nesterov"]),
                bool(group["maximize"]),
                first,
            )


def _scalar_dtype() -> torch.dtype:
    """The dtype of torch's `step` state tensors."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class AdamW(_MaskedOptimizer):
    """`torch.optim.AdamW` (decoupled weight decay, maximize) on the surviving weights only;
    same constructor and state (`step`, `exp_avg`, `exp_avg_sq`). `amsgrad`, `foreach`,
    `capturable`, `differentiable` and `fused` are accepted only at their defaults.

    Example:
        >>> layer = sparse_lottery.nn.MaskedLinear(5, 3)
        >>> layer.set_mask(torch.rand(3, 5) < 0.5)
        >>> opt = sparse_lottery.optim.AdamW(layer.parameters(), lr=1e-2)
        >>> layer(torch.randn(4, 5)).sum().backward()
        >>> opt.step()
        >>> sorted(opt.state[layer.weight]), int(opt.state[layer.weight]["step"])
        (['exp_avg', 'exp_avg_sq', 'step'], 1)
    """

    _supported = {
        "amsgrad": (False,),
        "foreach": (None, False),
        "capturable": (False,),
        "differentiable": (False,),
        "fused": (None, False),
    }
    _load_defaults = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False}
    _load_defaults |= {"differentiable": False, "fused": None, "decoupled_weight_decay": True}

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        _check_hyper(lr=lr, eps=eps, weight_decay=weight_decay)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}]: expected a value in [0, 1), got {beta}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": True,
        }
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _step_group(self, group: dict) -> None:
        live = [p for p in group["params"] if p.grad is not None]
        if len(live) < len(group["params"]):
            for p in group["params"]:
                if p.grad is None:
                    _check_not_retired(p)
        states = [self.state[p] for p in live]
        for p, state in zip(live, states):
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if not live:
            return
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)  # one call for every counter
        calls: dict[tuple, list[int]] = {}  # (device, step) -> indices into live
        for i, (p, step) in enumerate(zip(live, steps)):
            calls.setdefault((p.device, int(step.item())), []).append(i)
        beta1, beta2 = group["betas"]
        hyper = (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                 float(group["weight_decay"]))  # fmt: skip
        for (_, step), index in calls.items():
            params = [live[i] for i in index]
            _ops.masked_adamw_(
                params,
                [_grad(p) for p in params],
                [states[i]["exp_avg"] for i in index],
                [states[i]["exp_avg_sq"] for i in index],
                [mask_of(p) for p in params],
                *hyper,
                step,
                bool(group["maximize"]),
            )


__all__ = ["SGD", "AdamW"]
