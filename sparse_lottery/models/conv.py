"""Conv-2, Conv-4 and Conv-6 of Frankle & Carbin (2019), "The Lottery Ticket Hypothesis",
scaled-down VGG-style networks for CIFAR-10.

Conv-k has k/2 stages of two 3x3 convolutions (padding 1, ReLU) followed by a 2x2 max pool,
with 64, 128 and 256 channels in the first, second and third stage; then `fc1` →256, ReLU,
`fc2` 256→256, ReLU, `fc3` 256→classes. For (3, 32, 32) inputs the flattened features are
16·16·64, 8·8·128 and 4·4·256; other image sizes change `fc1`'s input width accordingly.
Initialisation is torch's default (the paper used Glorot-normal).
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_classes, image_shape

STAGE_CHANNELS = (64, 128, 256)


class ConvNet(nn.Module):
    """Conv-k: `depth` (2, 4 or 6) 3x3 conv layers in pairs with max pools, then three linear
    layers `fc1`, `fc2`, `fc3`. Input images are (in_channels, height, width).

    Example:
        >>> model = ConvNet(2, 10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        ['features.0', 'features.2']
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: tuple[int, int] = (32, 32),
        hidden: int = 256,
    ):
        super().__init__()
        if depth not in (2, 4, 6):
            raise ValueError(f"depth: Conv-k has k in (2, 4, 6), got {depth!r}")
        layers: list[nn.Module] = []
        channels, (height, width) = in_channels, image_size
        for out in STAGE_CHANNELS[: depth // 2]:
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            layers += [nn.Conv2d(out, out, 3, padding=1), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            channels, height, width = out, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * height * width, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def _build(depth: int, num_classes: int, input_shape: tuple[int, ...]) -> ConvNet:
    name = f"conv{depth}"
    num_classes = check_classes(name, num_classes)
    channels, height, width = image_shape(name, input_shape, min_hw=2 ** (depth // 2))
    return ConvNet(depth, num_classes, channels, (height, width))


def conv2(num_classes: int, input_shape: tuple[int, ...]) -> ConvNet:
    """Conv-2 (Frankle & Carbin 2019) for (C, H, W) images.

    Example:
        >>> sum(p.numel() for p in conv2(10, (3, 32, 32)).parameters())
        4301642
    """
    return _build(2, num_classes, input_shape)


def conv4(num_classes: int, input_shape: tuple[int, ...]) -> ConvNet:
    """Conv-4 (Frankle & Carbin 2019) for (C, H, W) images.

    Example:
        >>> sum(p.numel() for p in conv4(10, (3, 32, 32)).parameters())
        2425930
    """
    return _build(4, num_classes, input_shape)


def conv6(num_classes: int, input_shape: tuple[int, ...]) -> ConvNet:
    """Conv-6 (Frankle & Carbin 2019) for (C, H, W) images.

    Example:
        >>> sum(p.numel() for p in conv6(10, (3, 32, 32)).parameters())
        2262602
    """
    return _build(6, num_classes, input_shape)
