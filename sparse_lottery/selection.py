"""Exact magnitude and random selection: which surviving weights to remove.

`magnitude_prune` removes exactly k of the surviving weights, those with the smallest |w|;
`random_prune` exactly k chosen at random. `amount` is a fraction of the *surviving* weights
(float in [0, 1]; k = round(amount × survivors), as `torch.nn.utils.prune` rounds) or an exact
count (int). `scope="global"` pools every tensor; `scope="layerwise"` applies the amount (or
one amount per tensor) to each tensor. Already-pruned weights stay pruned; inputs are never
modified.

Ties are broken by position: among equal magnitudes (or equal random keys), the weight that comes
first — lower tensor index, then row-major index — is removed first. Magnitudes compare as
float32 (bfloat16 and float16 widen exactly), -0.0 equals 0.0, ±inf are ordinary (largest)
magnitudes, and a NaN weight is an error naming its tensor. Random keys are 31-bit hashes of
(seed, tensor index, position), so a seed selects the same weights on the CPU and the GPU,
whether the masks are bool or packed.

The kernels are a radix select over the magnitudes' float bits: histogram passes over all
tensors at once, no concatenated copy, no sort (see csrc/selection.h).

Example:
    >>> import torch, sparse_lottery as sl
    >>> w = [torch.tensor([0.5, -0.1, 0.3]), torch.tensor([[0.2, -0.4]])]
    >>> result = sl.ops.magnitude_prune(w, amount=2)
    >>> [m.tolist() for m in result.masks], result.thresholds, result.removed
    ([[True, False, True], [[False, True]]], tensor([0.2000], dtype=torch.float64), tensor([2]))
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch

from . import _registry  # noqa: F401  (registers the CPU and CUDA kernels)
from ._mask_format import check_magnitude_prune, check_random_prune

_ops = torch.ops.sparse_lottery
SCOPES = ("global", "layerwise")


class PruneResult(NamedTuple):
    """New masks (packed where the given mask was packed, else bool), and per group (one for
    the global scope, one per tensor for layerwise), as CPU tensors: the threshold magnitude —
    the largest |w| removed, 0.0 when none (float64; empty for random pruning) — and the number
    of weights removed (int64)."""

    masks: list[torch.Tensor]
    thresholds: torch.Tensor
    removed: torch.Tensor


def magnitude_prune(
    weights: Sequence[torch.Tensor] | torch.Tensor,
    masks: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
    amount: float | int | Sequence[float | int] = 0.2,
    scope: str = "global",
) -> PruneResult:
    """Remove exactly k surviving weights with the smallest |w|; see the module docstring.

    Args:
        weights: tensors (float32, bfloat16, float16) on one device; a single tensor is a list
            of one.
        masks: their current masks (bool of the weight's shape, or packed by `pack_mask`), None
            for a tensor (or all) with every weight surviving.
        amount: fraction of survivors (float) or count (int); a list gives one per tensor
            (layerwise scope only).
        scope: "global" (one ranking over all tensors) or "layerwise" (each tensor alone).

    Example:
        >>> w = torch.randn(100, 50)
        >>> m = sl.ops.magnitude_prune(w, amount=0.8).masks[0]
        >>> int(m.sum())
        1000
    """
    weights = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    if masks is None or isinstance(masks, torch.Tensor):
        masks = [masks] * len(weights) if masks is None else [masks]
    weights = [w.detach() for w in weights]
    amounts, counts, layerwise = _amounts(amount, scope, len(weights))
    if not weights:  # the dispatcher needs a tensor to pick a device
        return _nothing_to_prune(amounts, counts, thresholds=1)
    masks = list(masks)
    new, thresholds, removed = _ops.magnitude_prune(weights, masks, amounts, counts, layerwise)
    return PruneResult(list(new), thresholds, removed)


def random_prune(
    masks: Sequence[torch.Tensor] | torch.Tensor,
    amount: float | int | Sequence[float | int] = 0.2,
    scope: str = "global",
    generator: torch.Generator | None = None,
) -> PruneResult:
    """Remove exactly k surviving weights chosen uniformly at random (the random-pruning
    baseline); `generator` (default: torch's global one) draws the seed.

    Example:
        >>> m = torch.ones(10, 10, dtype=torch.bool)
        >>> g = torch.Generator().manual_seed(0)
        >>> int(sl.ops.random_prune(m, 0.3, generator=g).masks[0].sum())
        70
    """
    masks = [masks] if isinstance(masks, torch.Tensor) else list(masks)
    amounts, counts, layerwise = _amounts(amount, scope, len(masks))
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=device))
    if not masks:
        return _nothing_to_prune(amounts, counts, thresholds=0)
    new, removed = _ops.random_prune(masks, amounts, counts, layerwise, seed)
    return PruneResult(list(new), torch.zeros(0, dtype=torch.float64), removed)


def _nothing_to_prune(amounts, counts: bool, thresholds: int) -> PruneResult:
    """The result for an empty list of tensors (global scope: an empty pool)."""
    if counts and amounts[0] > 0:
        raise ValueError(f"amounts: {int(amounts[0])} to remove exceeds the 0 surviving weights")
    zeros = torch.zeros(thresholds, dtype=torch.float64)
    return PruneResult([], zeros, torch.zeros(1, dtype=torch.int64))


def _amounts(amount, scope: str, tensors: int) -> tuple[list[float], bool, bool]:
    """(amounts as floats, whether they are counts, layerwise) from the user's arguments."""
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {list(SCOPES)}, got {scope!r}")
    layerwise = scope == "layerwise"
    many = isinstance(amount, Sequence) and not isinstance(amount, str)
    values = list(amount) if many else [amount]
    if many and not layerwise:
        raise ValueError(
            f"amount: a list of amounts needs scope='layerwise'; got {len(values)} amounts "
            "for the global scope"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"amount: expected a float fraction or an int count, got {v!r}")
    kinds = {isinstance(v, int) for v in values}
    if len(kinds) > 1:
        raise TypeError(f"amount: expected all fractions (float) or all counts (int), got {values}")
    if layerwise and not many:
        values = values * tensors
    return [float(v) for v in values], kinds == {True}, layerwise


# --------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("sparse_lottery::magnitude_prune")
def _(weights, masks, amounts, counts, layerwise):
    check_magnitude_prune(weights, masks, amounts, counts, layerwise)
    out = [
        torch.empty_like(m) if m is not None else torch.empty_like(w, dtype=torch.bool)
        for w, m in zip(weights, masks)
    ]
    groups = len(weights) if layerwise else 1
    return out, torch.empty(groups, dtype=torch.float64), torch.empty(groups, dtype=torch.int64)


@torch.library.register_fake("sparse_lottery::random_prune")
def _(masks, amounts, counts, layerwise, seed):
    check_random_prune(masks, amounts, counts, layerwise, seed)
    groups = len(masks) if layerwise else 1
    return [torch.empty_like(m) for m in masks], torch.empty(groups, dtype=torch.int64)


__all__ = ["PruneResult", "magnitude_prune", "random_prune"]
