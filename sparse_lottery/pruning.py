"""`prune`: one pruning step on a model's masked layers, as every IMP level takes it.

Example:
    >>> import torch, sparse_lottery as sl
    >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.Linear(100, 10)))
    >>> sum(sl.prune(model, 0.9).removed.values())
    4500
    >>> round(sl.density(model), 3)
    0.1
"""

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import ops
from ._mask_format import check_amount, count_kept
from .model import Selector, _masked_layers, _matches, check_globs

METHODS = {
    "global_magnitude": ("magnitude", "global"),
    "layerwise_magnitude": ("magnitude", "layerwise"),
    "random_global": ("random", "global"),
    "random_layerwise": ("random", "layerwise"),
}


@dataclass
class PruneReport:
    """What one `prune` call did, per masked layer (by module name): the weights removed and,
    for magnitude methods, the threshold magnitude that applied (the largest |w| removed in
    that layer's group; 0.0 when none). Excluded layers are absent."""

    removed: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def _check_amount(name: str, amount) -> None:
    """A fraction in [0, 1] (float) or a count ≥ 0 (int)."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise TypeError(f"{name}: expected a float fraction or an int count, got {amount!r}")
    check_amount(name, amount, counts=isinstance(amount, int))


def prune(
    model: nn.Module,
    amount: float | int,
    method: str = "global_magnitude",
    exclude: Selector = None,
    rates: Mapping[str, float | int] | None = None,
    generator: torch.Generator | None = None,
) -> PruneReport:
    """Remove `amount` of the surviving weights of `model`'s masked layers and update their
    masks in place (pruned weights stay pruned).

    Args:
        model: a model with masked layers (see `sparse_lottery.sparsify`).
        amount: fraction of the surviving weights (float in [0, 1]; exactly
            round(amount × survivors) are removed) or an exact count (int).
        method: "global_magnitude" (smallest |w| over all layers together),
            "layerwise_magnitude" (each layer by itself), "random_global" or "random_layerwise"
            (uniformly random survivors: the random-pruning baseline).
        exclude: masked layers never pruned: a glob on the module name, a list of globs, or a
            callable `(name, module) -> bool` (as in `sparsify`).
        rates: per-layer overrides, module-name glob → amount: those layers are pruned
            each by itself at their own amount, with `method`'s criterion; the rest by `method`.
            The lottery-ticket papers prune the output layer at half the rate, e.g.
            `rates={"fc3": 0.1}` with `amount=0.2`.
        generator: the random source of the random methods (default: torch's global one).

    Ties are broken deterministically (the earlier layer in `named_modules` order, then the
    earlier row-major index, is pruned first); see `sparse_lottery.ops.magnitude_prune`.

    Example:
        >>> layers = torch.nn.Linear(10, 10), torch.nn.Linear(10, 2)
        >>> report = sl.prune(sl.sparsify(torch.nn.Sequential(*layers)), 0.2, rates={"1": 0.1})
        >>> report.removed
        {'0': 20, '1': 2}
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    _check_amount("amount", amount)
    for pattern, rate in (rates or {}).items():
        _check_amount(f"rates[{pattern!r}]", rate)
    criterion, scope = METHODS[method]
    layers = dict(_masked_layers(model))
    if not layers:
        raise ValueError(
            "model: has no masked layers (sparse_lottery.sparsify converts its nn.Linear, "
            "nn.Conv1d and nn.Conv2d modules: call it first, and check its include/exclude)"
        )
    check_globs("exclude", exclude, list(layers))
    excluded = {n for n, layer in layers.items() if _matches(exclude, n, layer, False)}
    overrides: dict[str, float | int] = {}
    for pattern, rate in (rates or {}).items():
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(
                f"rates: {pattern!r} matches no masked layer; the masked layers are {list(layers)}"
            )
        for name in hits:
            if name in overrides:
                raise ValueError(f"rates: layer {name!r} is matched by more than one pattern")
            overrides[name] = rate
    main = [n for n in layers if n not in excluded and n not in overrides]
    others = [n for n in overrides if n not in excluded]
    report = PruneReport()
    if main:
        _prune_group(layers, main, amount, scope, criterion, generator, report)
    if others:
        amounts = [overrides[n] for n in others]
        _prune_group(layers, others, amounts, "layerwise", criterion, generator, report)
    return report


def _prune_group(layers, names, amount, scope, criterion, generator, report) -> None:
    masks = [layers[n].weight_mask_packed for n in names]
    if criterion == "magnitude":
        weights = [layers[n].weight for n in names]
        result = ops.magnitude_prune(weights, masks, amount, scope)
    else:
        result = ops.random_prune(masks, amount, scope, generator)
    for i, (name, new) in enumerate(zip(names, result.masks)):
        group = i if scope == "layerwise" else 0
        before = count_kept(masks[i]) if scope == "global" else None
        layers[name].weight_mask_packed.copy_(new)
        if before is not None:
            report.removed[name] = before - count_kept(new)
        else:
            report.removed[name] = int(result.removed[i])
        if result.thresholds.numel():
            report.thresholds[name] = float(result.thresholds[group])


__all__ = ["METHODS", "PruneReport", "prune"]
