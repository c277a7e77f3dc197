"""Pruning strategies that update the masks of a model's masked layers.

Example:
    >>> import torch, sparse_lottery as sl
    >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.Linear(100, 10)))
    >>> sl.prune_global_magnitude(model, 0.9)
    4500
    >>> round(sl.density(model), 3)
    0.1
"""

import torch
from torch import nn

from .model import _masked_layers


@torch.no_grad()
def prune_global_magnitude(model: nn.Module, amount: float) -> int:
    """Remove the fraction `amount` of the *surviving* masked weights with the smallest |w|,
    ranked over all masked layers together (one global threshold); returns how many were
    removed.

    Exactly k = round(amount × surviving) weights are removed. Ties at the threshold are broken
    deterministically: among equal magnitudes, the weight that comes first (layers in
    `named_modules` order, then row-major index) is pruned first. Calling it n times with p
    gives density (1 − p)^n, as in iterative magnitude pruning.

    Example:
        >>> model = sl.sparsify(torch.nn.Linear(10, 10))
        >>> sl.prune_global_magnitude(model, 0.25), sl.density(model)
        (25, 0.75)
    """
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount: expected a fraction in [0, 1], got {amount}")
    layers = [layer for _, layer in _masked_layers(model)]
    if not layers:
        raise ValueError("model: has no masked layers (call sparse_lottery.sparsify first)")
    masks = [layer.mask for layer in layers]
    device = layers[0].weight.device
    # |w| of the surviving weights, in layer then row-major order.
    scores = torch.cat(
        [layer.weight.detach()[m].abs().float().to(device) for layer, m in zip(layers, masks)]
    )
    k = round(float(amount) * scores.numel())
    if k == 0:
        return 0
    threshold = torch.kthvalue(scores, k).values
    remove = scores < threshold
    ties = (scores == threshold).nonzero().squeeze(1)
    remove[ties[: k - int(remove.sum())]] = True
    start = 0
    for layer, mask in zip(layers, masks):
        n = int(mask.sum())
        new = mask.clone()
        new[mask] = ~remove[start : start + n].to(mask.device)
        layer.set_mask(new)
        start += n
    return k


__all__ = ["prune_global_magnitude"]
