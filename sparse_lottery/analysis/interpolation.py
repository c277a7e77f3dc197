"""The pure parts of the instability analysis: linear interpolation of two state dicts, the
error barrier of a path, BatchNorm statistics recomputation, and the masked L2 distance
(see `stability` for how they are used).

Example:
    >>> from sparse_lottery.analysis.interpolation import barrier, interpolate
    >>> w1, w2 = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([2.0, 0.0])}
    >>> interpolate(w1, w2, 0.5)["w"], barrier([0.1, 0.25, 0.1])
    (tensor([1., 2.]), 0.15)
"""

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


def interpolate(
    state1: Mapping[str, torch.Tensor], state2: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """The state dict α·state1 + (1−α)·state2 (floating tensors); other tensors (packed masks,
    counters) must be equal in both and are copied. α = 1 returns state1's values and α = 0
    state2's, exactly.

    Example:
        >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
        >>> interpolate(a, b, 0.25)["w"]
        tensor([2.5000, 5.0000])
        >>> torch.equal(interpolate(a, b, 1.0)["w"], a["w"])
        True
    """
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if set(state1) != set(state2):
        raise KeyError(
            f"state2: expected the keys of state1, got {len(set(state2) ^ set(state1))} different "
            f"(missing {sorted(set(state1) - set(state2))[:5]}, "
            f"extra {sorted(set(state2) - set(state1))[:5]})"
        )
    out = {}
    for key, a in state1.items():
        b = state2[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"state2[{key!r}]: expected {a.dtype} of shape {list(a.shape)} as in state1, "
                f"got {b.dtype} of shape {list(b.shape)}"
            )
        if not a.is_floating_point():
            if not torch.equal(a, b.to(a.device)):
                raise ValueError(
                    f"state2[{key!r}]: a {a.dtype} tensor (mask or counter) that differs from "
                    f"state1's; only networks with the same masks can be interpolated"
                )
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = a.clone()
        elif alpha == 0.0:
            out[key] = b.clone()
        else:
            out[key] = alpha * a + (1.0 - alpha) * b.to(a.device)
    return out


def barrier(errors: Sequence[float]) -> float:
    """Error barrier of a linear path: max_α E_α − ½(E_0 + E_1), where `errors` runs from one
    endpoint to the other (rounded to 12 decimals, so a flat path gives exactly 0).

    Example:
        >>> barrier([0.10, 0.30, 0.12])
        0.19
        >>> barrier([0.1, 0.1, 0.1])
        0.0
    """
    values = [float(e) for e in errors]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"errors: expected at least 2 finite values, got {list(errors)!r:.120}")
    return round(max(values) - 0.5 * (values[0] + values[-1]), 12)


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recompute_norm_stats(model: nn.Module, batches: Iterable[torch.Tensor], autocast=None) -> bool:
    """Reset the running statistics of `model`'s BatchNorm layers and recompute them as the
    plain average over `batches` (inputs only; train mode, `momentum=None`, no gradients).
    Returns False, changing nothing, for a model without such layers. The model's mode and the
    layers' momenta are restored.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
        >>> recompute_norm_stats(model, [torch.zeros(4, 2), 2 * torch.ones(4, 2)])
        True
        >>> model[0].running_mean
        tensor([1., 1.])
    """
    norms = _norm_layers(model)
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for x in batches:
            with (autocast or contextlib.nullcontext)():
                model(x)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if not seen:
        raise ValueError("batches: expected at least one batch to recompute norm statistics")
    return True


def masked_distance(
    state1: Mapping[str, torch.Tensor],
    state2: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    keys: Iterable[str],
) -> float:
    """L2 distance between two weight sets over `keys` (the parameters), masked weights counted
    only where their mask keeps them.

    Example:
        >>> a, b = {"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}
        >>> masked_distance(a, b, {}, ["w"]), masked_distance(a, b, {"w": torch.tensor([1, 0]).bool()}, ["w"])
        (5.0, 3.0)
    """  # noqa: E501
    total = 0.0
    for key in keys:
        diff = state1[key].double() - state2[key].double().to(state1[key].device)
        if key in masks:
            diff = diff * masks[key].to(diff.device)
        total += float((diff * diff).sum())
    return math.sqrt(total)


__all__ = ["interpolate", "barrier", "recompute_norm_stats", "masked_distance"]
