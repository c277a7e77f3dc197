"""Batched, vectorised training augmentations, deterministic given a `torch.Generator`.

- `crop_flip`: random crop of the 4-pixel zero-padded image back to its size, then a
  horizontal flip with probability 1/2, drawn independently per example (the standard CIFAR
  augmentation of He et al. 2016).

The random numbers are drawn on the generator's device (keep it on the CPU so a run's draws
do not depend on the accelerator) and moved to `x`'s device; the crop itself is one
advanced-indexing gather on `x`'s device, no Python loop over examples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random `padding`-pixel shifted crop (zero fill) and horizontal flip (p = 0.5) of each
    image of the batch `x` (N, C, H, W); returns a new tensor of the same shape.

    Each output image is `pad(x[n])[:, dy:dy+H, dx:dx+W]`, flipped left-right when drawn,
    with `dy, dx` uniform in `[0, 2 * padding]`. Zeros are zeros of `x` as given: after
    per-channel normalisation they stand for the channel mean.

    Example:
        >>> x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
        >>> out = crop_flip(x, torch.Generator().manual_seed(0))
        >>> out.shape
        torch.Size([2, 3, 4, 4])
        >>> torch.equal(out, crop_flip(x, torch.Generator().manual_seed(0)))
        True
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding: expected a non-negative number of pixels, got {padding}")
    n, c, h, w = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=generator.device).bool()
    shifts, flips = shifts.to(x.device), flips.to(x.device)

    padded = F.pad(x, (padding, padding, padding, padding))
    rows = shifts[:, :1] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + shifts[:, 1:]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop_flip": crop_flip,
}


def augment(name: str | None, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply the augmentation called `name` (a key of `AUGMENTATIONS`) to the batch `x`;
    `None` returns `x` unchanged.

    Example:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> augment(None, x, torch.Generator()) is x
        True
        >>> augment("crop_flip", x, torch.Generator().manual_seed(1)).shape
        torch.Size([8, 3, 32, 32])
    """
    if name is None:
        return x
    try:
        fn = AUGMENTATIONS[name]
    except KeyError:
        raise ValueError(
            f"name: expected an augmentation in {sorted(AUGMENTATIONS)} or None, got {name!r}"
        ) from None
    return fn(x, generator)


__all__ = ["AUGMENTATIONS", "augment", "crop_flip"]
