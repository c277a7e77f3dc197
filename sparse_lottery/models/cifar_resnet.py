"""CIFAR ResNet-20/32/56 of He et al. (2016), "Deep Residual Learning for Image Recognition"
(section 4.2), in the form open_lth uses for lottery-ticket experiments.

A 3x3 stem conv (16 channels) + BN + ReLU, three stages of n basic blocks (16, 32, 64
channels; the first block of stages 2 and 3 has stride 2), global average pooling and `fc`
64→classes; depth = 6n + 2. Shortcuts where the shape changes are a 1x1 strided conv + BN
(open_lth's choice, He et al.'s option B) rather than the paper's parameter-free option A.
Convs carry no bias. Initialisation as open_lth's `kaiming_normal`: kaiming-normal (fan_in,
ReLU gain) for the conv and linear weights; biases and BatchNorm keep torch's defaults
(open_lth additionally draws BN weights uniformly at random; this module does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_classes, image_shape, kaiming_normal_init


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection: relu(bn2(conv2(relu(bn1(conv1(x)))))
    + shortcut(x)), where the shortcut is the identity or, when the shape changes, a 1x1 conv + BN.

    Example:
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers and base `width` (16).

    Example:
        >>> model = CIFARResNet(20, 10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> len(model.blocks)
        9
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth: a CIFAR ResNet has 6n + 2 layers (n >= 1), got {depth!r}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, channels = [], width
        for stage in range(3):
            out = width * 2**stage
            for i in range(n):
                blocks.append(BasicBlock(channels, out, stride=2 if stage and not i else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _build(depth: int, num_classes: int, input_shape: tuple[int, ...]) -> CIFARResNet:
    name = f"resnet{depth}"
    num_classes = check_classes(name, num_classes)
    channels, _, _ = image_shape(name, input_shape, min_hw=4)
    return CIFARResNet(depth, num_classes, channels)


def resnet20(num_classes: int, input_shape: tuple[int, ...]) -> CIFARResNet:
    """ResNet-20 for CIFAR (He et al. 2016), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> sum(p.numel() for p in resnet20(10, (3, 32, 32)).parameters())
        272474
    """
    return _build(20, num_classes, input_shape)


def resnet32(num_classes: int, input_shape: tuple[int, ...]) -> CIFARResNet:
    """ResNet-32 for CIFAR (He et al. 2016), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> resnet32(10, (3, 32, 32)).fc
        Linear(in_features=64, out_features=10, bias=True)
    """
    return _build(32, num_classes, input_shape)


def resnet56(num_classes: int, input_shape: tuple[int, ...]) -> CIFARResNet:
    """ResNet-56 for CIFAR (He et al. 2016), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> len(resnet56(10, (3, 32, 32)).blocks)
        27
    """
    return _build(56, num_classes, input_shape)
