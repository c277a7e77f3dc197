"""Argument checks and initialisers shared by the model builders."""

from __future__ import annotations

import math

from torch import nn


def check_classes(model: str, num_classes: int) -> int:
    """`num_classes` as an int, or a ValueError naming the argument and the model.

    Example:
        >>> check_classes("conv2", 10)
        10
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: {model} needs a positive int, got {num_classes!r}")
    return num_classes


def _as_shape(model: str, input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        not shape
        or any(isinstance(d, bool) or not isinstance(d, int) for d in shape)
        or any(d < 1 for d in shape)
    ):
        raise ValueError(
            f"input_shape: {model} needs a non-empty tuple of positive ints (the shape of one "
            f"sample, without the batch dimension), got {input_shape!r}"
        )
    return shape


def flat_features(model: str, input_shape) -> int:
    """Number of input features of an MLP that flattens samples of `input_shape`.

    Example:
        >>> flat_features("lenet_300_100", (1, 28, 28))
        784
    """
    return math.prod(_as_shape(model, input_shape))


def image_shape(model: str, input_shape, min_hw: int) -> tuple[int, int, int]:
    """`input_shape` as (channels, height, width), or a ValueError when it is not an image of
    at least `min_hw` x `min_hw` pixels (what `min_hw`-fold downsampling leaves 1 pixel of).

    Example:
        >>> image_shape("conv2", (3, 32, 32), min_hw=2)
        (3, 32, 32)
    """
    shape = _as_shape(model, input_shape)
    if len(shape) != 3 or shape[1] < min_hw or shape[2] < min_hw:
        raise ValueError(
            f"input_shape: {model} takes (channels, height, width) images of at least "
            f"{min_hw}x{min_hw} pixels, such as (3, 32, 32); got {tuple(input_shape)!r}"
        )
    return shape


def kaiming_normal_init(model: nn.Module, mode: str = "fan_in", linear: bool = True) -> None:
    """Kaiming-normal weights (ReLU gain) for every Conv2d and, if `linear`, every Linear of
    `model`; biases and BatchNorm keep torch's defaults. open_lth's `kaiming_normal`
    initialiser is `mode="fan_in", linear=True`.

    Example:
        >>> layer = torch.nn.Conv2d(16, 16, 3)
        >>> kaiming_normal_init(layer)
        >>> 0.05 < float(layer.weight.detach().std()) < 0.15   # sqrt(2 / (16 * 9)) = 0.118
        True
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d) or (linear and isinstance(module, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
