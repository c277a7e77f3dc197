"""The parts of the lottery-jackpot mask search (RESEARCH.md §4) that need no run folder.

- `magnitude_masks`: the initial masks, from one global magnitude threshold over the pretrained
  weights (or the same density in every layer), with exact kept counts;
- `initial_scores`: one score per prunable weight, `kept_score` where the mask keeps it,
  `pruned_score` elsewhere;
- `ScoredWeight` / `scored_forward`: the forward pass with W_eff = mask ⊙ W through the fused
  masked ops, and the straight-through gradient ∂L/∂s = (∂L/∂W_eff) ⊙ W;
- `short_restriction`: after each optimiser step, swap a fraction r of the (revive, prune)
  candidate pairs of a layer; `swap_fraction`: r over the search.

How the unmasked ∂L/∂W_eff is obtained: a masked op's weight gradient is masked in its epilogue
(pruned entries get exactly 0), which would never let a pruned weight's score move. So the
layer is called (`torch.func.functional_call`) with W_eff = `ops.apply_mask(W, mask)` as its
weight and an all-ones mask: the forward is the masked layer's (pruned entries are +0), and
the op's weight gradient, masked by all ones, is the full ∂L/∂W_eff. `ScoredWeight` makes W_eff
from the scores' point of view: value mask ⊙ W, gradient to the scores ∂L/∂W_eff ⊙ W, none to
W (frozen).

Example:
    >>> import torch, sparse_lottery as sl
    >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
    >>> masks = magnitude_masks(model, 0.5, exclude=["1"])
    >>> {k: int(m.sum()) for k, m in masks.items()}
    {'0.weight': 16}
    >>> scores = initial_scores(masks)
    >>> scored_forward(model, scores, torch.randn(3, 4)).shape
    torch.Size([3, 2])
"""

import fnmatch
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import ops
from ..model import _masked_layers, _param_name

SWAP_SCHEDULES = ("constant", "linear", "cosine")
LAYER_DENSITIES = ("global", "uniform")


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    """`{weight name: masked layer}` of the masked layers whose module name matches no glob of
    `exclude` (e.g. the output layer).

    Example:
        >>> list(prunable_layers(sl.sparsify(torch.nn.Linear(3, 2))))
        ['weight']
    """
    return {
        _param_name(name): layer
        for name, layer in _masked_layers(model)
        if not any(fnmatch.fnmatchcase(name, glob) for glob in exclude)
    }


def magnitude_masks(
    model: nn.Module, density: float, layer_density: str = "global", exclude: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) of the prunable layers keeping the largest |w|: `density` of
    all their weights together under one global threshold ("global"), or `density` of each
    layer ("uniform"); kept counts are round(density × weights), exact (ties by position, as
    `sparse_lottery.ops.magnitude_prune` breaks them).

    Example:
        >>> layer = sl.sparsify(torch.nn.Linear(2, 1))
        >>> layer.weight.data = torch.tensor([[0.3, -0.5]])
        >>> magnitude_masks(layer, 0.5)["weight"].tolist()
        [[False, True]]
    """
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density <= 1:
        raise ValueError(f"density: expected a fraction in (0, 1], got {density!r}")
    if layer_density not in LAYER_DENSITIES:
        raise ValueError(
            f"layer_density: expected one of {list(LAYER_DENSITIES)}, got {layer_density!r}"
        )
    layers = prunable_layers(model, exclude)
    if not layers:
        raise ValueError(f"exclude: leaves no masked layer to prune (excluded {list(exclude)})")
    weights = [layer.weight for layer in layers.values()]
    if layer_density == "global":
        total = sum(w.numel() for w in weights)
        result = ops.magnitude_prune(weights, amount=total - round(density * total))
    else:
        removed = [w.numel() - round(density * w.numel()) for w in weights]
        result = ops.magnitude_prune(weights, amount=removed, scope="layerwise")
    return dict(zip(layers, result.masks))


def initial_scores(
    masks: Mapping[str, torch.Tensor], kept_score: float = 1.0, pruned_score: float = 0.99
) -> dict[str, torch.Tensor]:
    """float32 scores of the masks' shapes: `kept_score` where kept, `pruned_score` elsewhere.

    Example:
        >>> initial_scores({"w": torch.tensor([True, False])})["w"].tolist()
        [1.0, 0.9900000095367432]
    """
    if not kept_score >= pruned_score:
        raise ValueError(
            f"kept_score: expected at least pruned_score ({pruned_score}), got {kept_score}"
        )
    return {
        name: torch.where(m, kept_score, pruned_score).to(torch.float32)
        for name, m in masks.items()
    }


class ScoredWeight(torch.autograd.Function):
    """W_eff = mask ⊙ W (the fused `apply_mask`) with the straight-through gradient
    ∂L/∂scores = ∂L/∂W_eff ⊙ W; W and the mask get none.

    Example:
        >>> s, w = torch.ones(2, requires_grad=True), torch.tensor([2.0, 3.0])
        >>> ScoredWeight.apply(s, w, torch.tensor([True, False])).mul(10).sum().backward()
        >>> s.grad.tolist()
        [20.0, 30.0]
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor):
        ctx.save_for_backward(weight)
        return ops.apply_mask(weight.detach(), mask)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad * weight, None, None


_ALL_ONES: dict[tuple, torch.Tensor] = {}


def _all_ones(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A packed all-ones mask of `shape` (cached: it is read-only)."""
    key = (tuple(shape), str(device))
    if key not in _ALL_ONES:
        _ALL_ONES[key] = ops.pack_mask(torch.ones(shape, dtype=torch.bool, device=device))
    return _ALL_ONES[key]


def scored_forward(
    model: nn.Module, scores: Mapping[str, torch.Tensor], *inputs: torch.Tensor
) -> torch.Tensor:
    """`model(*inputs)` with each layer named in `scores` run on W_eff = mask ⊙ W (its current
    mask) with an all-ones mask, so that backward reaches the scores through `ScoredWeight`
    with the unmasked ∂L/∂W_eff (see the module doc).

    Example:
        >>> model = sl.sparsify(torch.nn.Linear(3, 2))
        >>> s = {"weight": torch.ones(2, 3, requires_grad=True)}
        >>> scored_forward(model, s, torch.randn(4, 3)).sum().backward()
        >>> s["weight"].grad.shape
        torch.Size([2, 3])
    """
    layers = prunable_layers(model)
    overrides = {}
    for name, score in scores.items():
        layer = layers[name]
        overrides[name] = ScoredWeight.apply(score, layer.weight, layer.weight_mask_packed)
        prefix = name[: -len("weight")]
        overrides[prefix + "weight_mask_packed"] = _all_ones(layer.weight.shape, score.device)
    return torch.func.functional_call(model, overrides, inputs)


@torch.no_grad()
def short_restriction(
    scores: torch.Tensor, mask: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, int]:
    """(new mask, pairs swapped) of one layer. With k = the kept count, the weights ranked by
    score (ties: kept first, then by position) split at the k-th: revive candidates are pruned
    weights in the top k, prune candidates kept weights below it (as many). The
    ceil(`fraction` × candidates) highest-scoring revivals swap with as many lowest-scoring
    removals: the kept count never changes; fraction 1 is the top k of the scores, 0 no change.

    Example:
        >>> m = torch.tensor([True, True, False, False])
        >>> new, swapped = short_restriction(torch.tensor([0.9, 0.1, 0.5, 0.8]), m, 1.0)
        >>> new.tolist(), swapped
        ([True, False, False, True], 1)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: expected a fraction in [0, 1], got {fraction!r}")
    if scores.shape != mask.shape:
        raise ValueError(
            f"scores: expected the mask's shape {list(mask.shape)}, got {list(scores.shape)}"
        )
    s, m = scores.reshape(-1), mask.reshape(-1)
    k = int(m.sum())
    if fraction == 0.0 or k in (0, m.numel()):
        return mask, 0
    kept_first = torch.argsort((~m).to(torch.uint8), stable=True)
    order = kept_first[torch.argsort(s[kept_first], descending=True, stable=True)]
    top, rest = order[:k], order[k:]
    revive = top[~m[top]]  # highest score first
    remove = rest[m[rest]].flip(0)  # lowest score first
    swaps = min(math.ceil(fraction * revive.numel()), revive.numel())
    if swaps == 0:
        return mask, 0
    new = m.clone()
    new[revive[:swaps]] = True
    new[remove[:swaps]] = False
    return new.view_as(mask), swaps


def swap_fraction(fraction: float, schedule: str, step: int, total: int) -> float:
    """r after search step `step` (0-based) of `total`: `fraction` held ("constant"), or
    decayed to 0 at the end ("linear", "cosine": half a cosine).

    Example:
        >>> [swap_fraction(1.0, "linear", s, 4) for s in range(4)]
        [1.0, 0.75, 0.5, 0.25]
    """
    t = min(step, total) / max(total, 1)
    if schedule == "constant":
        return fraction
    if schedule == "linear":
        return fraction * (1.0 - t)
    if schedule == "cosine":
        return fraction * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"swap_schedule: expected one of {list(SWAP_SCHEDULES)}, got {schedule!r}")


__all__ = [
    "LAYER_DENSITIES",
    "SWAP_SCHEDULES",
    "ScoredWeight",
    "initial_scores",
    "magnitude_masks",
    "prunable_layers",
    "scored_forward",
    "short_restriction",
    "swap_fraction",
]
