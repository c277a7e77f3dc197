"""VGG-11/16/19 for CIFAR (Simonyan & Zisserman 2015), in the form open_lth uses for
lottery-ticket experiments (Frankle et al. 2019/2020).

Each conv is a 3x3 conv (padding 1, with bias) + BN + ReLU; "M" is a 2x2 max pool. After the
four pools a 32x32 input is 2x2x512; a 2x2 average pool (here: global average pooling, the
same for 32x32 inputs) gives 512 features for the single classifier `fc` 512→classes.
Initialisation as open_lth's `kaiming_normal`: kaiming-normal (fan_in, ReLU gain) for the
conv and linear weights; biases and BatchNorm keep torch's defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_classes, image_shape, kaiming_normal_init

PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    """CIFAR VGG-`depth` (11, 16 or 19): conv+BN+ReLU layers and max pools from `PLANS`,
    global average pooling and one linear layer `fc` 512→classes.

    Example:
        >>> model = VGG(11, 10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        8
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth not in PLANS:
            raise ValueError(f"depth: CIFAR VGG has depth in {sorted(PLANS)}, got {depth!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in PLANS[depth]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, spec, 3, padding=1), nn.BatchNorm2d(spec)]
                layers.append(nn.ReLU())
                channels = spec
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(x)


def _build(depth: int, num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    name = f"vgg{depth}"
    num_classes = check_classes(name, num_classes)
    channels, _, _ = image_shape(name, input_shape, min_hw=16)
    return VGG(depth, num_classes, channels)


def vgg11(num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    """VGG-11 for CIFAR (open_lth's `cifar_vgg_11`), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> vgg11(10, (3, 32, 32)).fc
        Linear(in_features=512, out_features=10, bias=True)
    """
    return _build(11, num_classes, input_shape)


def vgg16(num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    """VGG-16 for CIFAR (open_lth's `cifar_vgg_16`), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> sum(p.numel() for p in vgg16(10, (3, 32, 32)).parameters())
        14728266
    """
    return _build(16, num_classes, input_shape)


def vgg19(num_classes: int, input_shape: tuple[int, ...]) -> VGG:
    """VGG-19 for CIFAR (open_lth's `cifar_vgg_19`), (C, H, W) inputs such as (3, 32, 32).

    Example:
        >>> sum(isinstance(m, torch.nn.Conv2d) for m in vgg19(10, (3, 32, 32)).modules())
        16
    """
    return _build(19, num_classes, input_shape)
