"""ImageNet ResNet-18 and ResNet-50 (He et al. 2016) from torchvision, untrained.

The models are torchvision's own `resnet18` / `resnet50` (weights=None) with their
initialisation (kaiming-normal fan_out for the convs, torch's default for `fc`). torchvision
is imported when a model is built, so the rest of `sparse_lottery.models` works without it.
The stem is ImageNet's (7x7 stride-2 conv and a max pool: 32x downsampling); global average
pooling lets any image of at least 32x32 pixels through. The stem conv takes 3 channels.
"""

from __future__ import annotations

from torch import nn

from ._common import check_classes, image_shape


def _torchvision_models(model: str):
    try:
        import torchvision.models
    except ImportError as exc:
        raise ImportError(
            f"{model} needs torchvision (pip install torchvision, or sparse_lottery[data])"
        ) from exc
    return torchvision.models


def _build(depth: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    name = f"resnet{depth}"
    num_classes = check_classes(name, num_classes)
    shape = image_shape(name, input_shape, min_hw=32)
    if shape[0] != 3:
        raise ValueError(
            f"input_shape: {name} (torchvision) takes 3-channel images such as (3, 224, 224); "
            f"got {tuple(input_shape)!r}"
        )
    builder = getattr(_torchvision_models(name), name)
    return builder(weights=None, num_classes=num_classes)


def resnet18(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """torchvision's ResNet-18 (He et al. 2016), untrained, for (3, H, W) images, H, W >= 32.

    Example:
        >>> resnet18(10, (3, 64, 64)).fc
        Linear(in_features=512, out_features=10, bias=True)
    """
    return _build(18, num_classes, input_shape)


def resnet50(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """torchvision's ResNet-50 (He et al. 2016), untrained, for (3, H, W) images, H, W >= 32.

    Example:
        >>> resnet50(10, (3, 64, 64)).fc
        Linear(in_features=2048, out_features=10, bias=True)
    """
    return _build(50, num_classes, input_shape)
