"""Weight-correlation indicator R_p of Liu et al. (2021), `../RESEARCH.md` §3.

R_p(θ_a, θ_b) = Σ_l |T_p(θ_a^l) ∩ T_p(θ_b^l)| / Σ_l k_l, where T_p(θ^l) is the set of the k_l
largest-magnitude weights of layer l and k_l = round(p · N_l), N_l being the number of weights
of layer l (of its *surviving* weights when masks are given: for a sparse network p is relative
to the survivors, and pruned positions never count).

Conventions (RESEARCH.md leaves them open):

- Rounding: k_l = floor(p · N_l + 0.5) (round half up, not Python's round half to even).
- Denominator: Σ_l k_l, which is p · Σ_l N_l whenever every p · N_l is an integer, and makes
  R_p exactly 1 for identical weights whatever the rounding. For independent weights the
  expected overlap of layer l is k_l² / N_l, so R_p ≈ p ("no correlation").
- Ties: a deterministic top-k. Weights are ranked by |w| (descending) and equal magnitudes by
  their row-major index (the earlier one first), so T_p is a function of the values only.
- Non-finite weights raise ValueError.

Example:
    >>> import torch
    >>> a = {"fc.weight": torch.tensor([[4.0, -3.0], [2.0, 1.0]])}
    >>> b = {"fc.weight": torch.tensor([[0.1, -3.0], [9.0, 1.0]])}
    >>> r_p(a, b, 0.5)  # top-2 sets {0, 1} and {2, 1} share one weight of 2
    0.5
    >>> r_p(a, a, 0.5)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

DEFAULT_PS = (0.1, 0.2, 0.5)
"""The p values Liu et al. report (RESEARCH.md §3)."""


def top_k_count(p: float, n: int) -> int:
    """k = round(p · n), rounding halves up: the size of T_p for n (surviving) weights.

    Example:
        >>> top_k_count(0.5, 5), top_k_count(0.1, 14), top_k_count(0.2, 0)
        (3, 1, 0)
    """
    return int(math.floor(p * n + 0.5))


def top_p_indices(weight: torch.Tensor, p: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Row-major flat indices of T_p(weight): the k = round(p · N) largest |w| among the N
    surviving weights (`mask`: bool, True = kept; None: all), ties to the earlier index; sorted.

    Example:
        >>> w = torch.tensor([1.0, -5.0, 5.0, 0.5])
        >>> top_p_indices(w, 0.5).tolist()  # |−5| = |5|: the earlier index ranks first
        [1, 2]
        >>> top_p_indices(w, 0.25).tolist()
        [1]
        >>> top_p_indices(w, 0.5, mask=torch.tensor([True, False, True, True])).tolist()
        [0, 2]
    """
    _check_p(p)
    flat = weight.detach().reshape(-1)
    if not torch.isfinite(flat).all():
        raise ValueError("weight: expected finite values, got NaN or infinity")
    index = torch.arange(flat.numel(), device=flat.device)
    if mask is not None:
        keep = mask.detach().reshape(-1).to(flat.device)
        flat, index = flat[keep], index[keep]
    k = top_k_count(p, flat.numel())
    if k == 0:
        return index[:0]
    # A stable descending sort keeps equal magnitudes in index order: a deterministic top-k.
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    return torch.sort(index[order]).values


def overlap_counts(
    weights_a: Mapping[str, torch.Tensor],
    weights_b: Mapping[str, torch.Tensor],
    p: float,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, tuple[int, int, int]]:
    """Per layer (key of `weights_a`): (|T_p(a) ∩ T_p(b)|, k_l, N_l); see `r_p`.

    Example:
        >>> a = {"w": torch.tensor([3.0, 2.0, 1.0, 0.0])}
        >>> b = {"w": torch.tensor([0.0, 2.0, 1.0, 3.0])}
        >>> overlap_counts(a, b, 0.5)
        {'w': (1, 2, 4)}
    """
    _check_inputs(weights_a, weights_b, masks)
    out = {}
    for name, wa in weights_a.items():
        mask = None if masks is None else masks[name]
        ia = top_p_indices(wa, p, mask)
        ib = top_p_indices(weights_b[name].to(wa.device), p, mask)
        n = wa.numel() if mask is None else int(mask.sum())
        common = int(torch.isin(ia, ib).sum())
        out[name] = (common, int(ia.numel()), n)
    return out


def r_p(
    weights_a: Mapping[str, torch.Tensor],
    weights_b: Mapping[str, torch.Tensor],
    p: float,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """The weight-correlation indicator R_p between two networks (see the module docstring).

    Args:
        weights_a, weights_b: layer name → weight tensor, the same keys and shapes in both;
            pass only the prunable weights (e.g. `prunable_weights(state, masks)`).
        p: fraction in (0, 1] of each layer's (surviving) weights in T_p.
        masks: layer name → bool tensor (True = kept), the same keys: only survivors count,
            N_l is the survivor count. None: every weight counts.

    Returns a float in [0, 1]: 1 when the top sets agree in every layer, ≈ p for independent
    weights. Symmetric in a and b. Raises ValueError when no layer has k_l ≥ 1.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = {"w": torch.randn(100_000, generator=g)}
        >>> b = {"w": torch.randn(100_000, generator=g)}
        >>> round(r_p(a, b, 0.2), 2), r_p(a, {"w": 3 * a["w"]}, 0.2)
        (0.2, 1.0)
    """
    counts = overlap_counts(weights_a, weights_b, p, masks)
    selected = sum(k for _, k, _ in counts.values())
    if selected == 0:
        total = sum(n for _, _, n in counts.values())
        raise ValueError(
            f"p: round(p · N_l) is 0 in every layer ({total} surviving weights in all), "
            f"expected a larger p, got {p}"
        )
    return sum(c for c, _, _ in counts.values()) / selected


def r_p_table(
    weights_a: Mapping[str, torch.Tensor],
    weights_b: Mapping[str, torch.Tensor],
    ps: Iterable[float] = DEFAULT_PS,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[float, float]:
    """{p: R_p} for each p of `ps` (default: 0.1, 0.2, 0.5, as Liu et al. report).

    Example:
        >>> w = {"w": torch.arange(10.0)}
        >>> r_p_table(w, w)
        {0.1: 1.0, 0.2: 1.0, 0.5: 1.0}
    """
    return {float(p): r_p(weights_a, weights_b, p, masks) for p in ps}


def prunable_weights(
    state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The entries of a state dict that `masks` names (the masked layers' ".weight" tensors).

    Example:
        >>> state = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2)}
        >>> list(prunable_weights(state, {"fc.weight": torch.ones(2, 2, dtype=torch.bool)}))
        ['fc.weight']
    """
    missing = [k for k in masks if k not in state]
    if missing:
        raise KeyError(f"state: expected the masked weights {sorted(masks)}, missing {missing}")
    return {k: state[k] for k in masks}


def level_correlation(
    run, level: int, ps: Iterable[float] = DEFAULT_PS, reference: str = "init"
) -> dict[float, float]:
    """R_p between the trained weights of level `level` of a `sparse_lottery.lottery.Run` and
    `reference`, over the level's surviving weights (the level is trained first if needed):

    - "init": θ0, the replicate's initial weights (Liu et al.'s R_p(θ0, θT));
    - "previous": the trained weights of level `level` − 1, i.e. the pretrained network the
      level was pruned from (with `--rewind none` the level fine-tunes them: R_p between
      fine-tuned and pretrained weights).

    Example:
        >>> from sparse_lottery.lottery import Experiment, Run, Runtime
        >>> run = Run(Experiment(), Runtime(root="/tmp/runs"))  # doctest: +SKIP
        >>> level_correlation(run, 1)  # doctest: +SKIP
        {0.1: 0.43, 0.2: 0.51, 0.5: 0.74}
    """
    from ..lottery import checkpoint

    if reference not in ("init", "previous"):
        raise ValueError(f"reference: expected 'init' or 'previous', got {reference!r}")
    if reference == "previous" and level < 1:
        raise ValueError(f"level: reference 'previous' needs a level ≥ 1, got {level}")
    run.level(level)
    model = run.build(0)
    level_masks = run.level_masks(level, model)
    if reference == "init":
        before = run.init_weights(model)
    else:
        before = checkpoint.load(run.level_dir(level - 1) / "final.ckpt", run.tag, "final")
    final = checkpoint.load(run.level_dir(level) / "final.ckpt", run.tag, "final")
    return r_p_table(
        prunable_weights(before, level_masks),
        prunable_weights(final, level_masks),
        ps,
        level_masks,
    )


def _check_p(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"p: expected a fraction in (0, 1], got {p!r}")


def _check_inputs(weights_a, weights_b, masks) -> None:
    for what, weights in (("weights_a", weights_a), ("weights_b", weights_b)):
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"{what}: expected a non-empty dict name → tensor, got {weights!r}")
        bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"{what}: expected tensors, got other values for {bad}")
    if set(weights_a) != set(weights_b):
        raise ValueError(
            f"weights_b: expected the keys of weights_a {sorted(weights_a)}, "
            f"got {sorted(weights_b)}"
        )
    for name, wa in weights_a.items():
        if wa.shape != weights_b[name].shape:
            raise ValueError(
                f"weights_b[{name!r}]: expected shape {list(wa.shape)} (as in weights_a), "
                f"got {list(weights_b[name].shape)}"
            )
    if masks is None:
        return
    if set(masks) != set(weights_a):
        raise ValueError(
            f"masks: expected the keys of the weights {sorted(weights_a)}, got {sorted(masks)}"
        )
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"masks[{name!r}]: expected a torch.bool tensor, got {got}")
        if mask.shape != weights_a[name].shape:
            raise ValueError(
                f"masks[{name!r}]: expected shape {list(weights_a[name].shape)}, "
                f"got {list(mask.shape)}"
            )


__all__ = [
    "DEFAULT_PS",
    "level_correlation",
    "overlap_counts",
    "prunable_weights",
    "r_p",
    "r_p_table",
    "top_k_count",
    "top_p_indices",
]
