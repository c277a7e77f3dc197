"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks")
adapted to 32x32 CIFAR images.

The network is the paper's (width 1.0): a 3x3 stem conv to 32 channels, 17 inverted-residual
blocks (1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection, each with BN; the
residual where stride is 1 and channels match), a 1x1 conv to 1280 channels, global average
pooling and `classifier` 1280→classes (no dropout). CIFAR adaptation, as is common for 32x32
inputs: the stem conv and the first stride-2 stage (24 channels) have stride 1, so the total
downsampling is 8 instead of 32 (32x32 → 4x4 before pooling). Initialisation as torchvision's
MobileNetV2 for the convs: kaiming-normal (fan_out, ReLU gain); BatchNorm and the linear
classifier keep torch's defaults.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_classes, image_shape, kaiming_normal_init

# (expansion t, output channels c, repeats n, stride s of the first block) per stage; the
# paper's strides are 2 in the second stage, 1 here (CIFAR).
CIFAR_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2)]
CIFAR_STAGES += [(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act=True):
    layers = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion by `expansion` (omitted when 1), 3x3 depthwise conv
    with `stride`, 1x1 linear projection; adds the input when stride is 1 and channels match.

    Example:
        >>> block = InvertedResidual(16, 16, stride=1, expansion=6)
        >>> block.use_residual, block(torch.zeros(2, 16, 8, 8)).shape
        (True, torch.Size([2, 16, 8, 8]))
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers = [] if expansion == 1 else [_conv_bn(in_channels, hidden, 1)]
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden))
        layers.append(_conv_bn(hidden, out_channels, 1, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 images (stride-1 stem and second stage); classifier `classifier`.

    Example:
        >>> model = MobileNetV2(10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> model.classifier
        Linear(in_features=1280, out_features=10, bias=True)
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, last_channels: int = 1280):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, stride=1)]
        channels = 32
        for t, c, n, s in CIFAR_STAGES:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(_conv_bn(channels, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)
        kaiming_normal_init(self, mode="fan_out", linear=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenetv2(num_classes: int, input_shape: tuple[int, ...]) -> MobileNetV2:
    """MobileNetV2 for CIFAR (Sandler et al. 2018), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> sum(p.numel() for p in mobilenetv2(10, (3, 32, 32)).parameters())
        2236682
    """
    num_classes = check_classes("mobilenetv2", num_classes)
    channels, _, _ = image_shape("mobilenetv2", input_shape, min_hw=8)
    return MobileNetV2(num_classes, channels)
