"""The model zoo of the IMP driver: plain `torch.nn` models for `sparse_lottery.sparsify`.

Names (`model_names()`), with the shape of one input sample they are meant for:

- `lenet_300_100`: LeNet-300-100 MLP, MNIST (1, 28, 28) (any shape, flattened)
- `mnist1d_mlp`: 40-500-500-10 residual MLP, MNIST-1D (40,) (any shape, flattened)
- `conv2`, `conv4`, `conv6`: Frankle & Carbin's Conv-2/4/6, CIFAR (3, 32, 32)
- `resnet20`, `resnet32`, `resnet56`: He et al.'s CIFAR ResNets, (3, 32, 32)
- `vgg11`, `vgg16`, `vgg19`: open_lth's CIFAR VGGs with BN, (3, 32, 32)
- `mobilenetv2`: MobileNetV2 with CIFAR strides, (3, 32, 32)
- `resnet18`, `resnet50`: torchvision's ImageNet ResNets, (3, 224, 224) (needs torchvision)

Every model's layers are `nn.Linear` / `nn.Conv2d` / `nn.BatchNorm2d` ..., so
`sparse_lottery.sparsify(model)` turns them into masked layers; the final classifier is an
`nn.Linear` named by `MODELS[name].output_layer`. Models are built with torch's RNG only, so
`torch.manual_seed` makes them deterministic.

Example:
    >>> from sparse_lottery.models import MODELS, get_model
    >>> model = sl.sparsify(get_model("lenet_300_100", 10, (1, 28, 28)))
    >>> MODELS["lenet_300_100"].output_layer, type(model.fc3).__name__
    ('fc3', 'MaskedLinear')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import cifar_resnet, conv, mlp, mobilenetv2, torchvision_resnet, vgg


@dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo: `build(num_classes, input_shape)` makes a fresh, randomly initialised
    model for samples of `input_shape` (without the batch dimension); `output_layer` is the
    name (as in `model.named_modules()`) of its final `nn.Linear` classifier; `description` is
    one line naming the architecture and its paper.

    Example:
        >>> spec = MODELS["resnet20"]
        >>> spec.output_layer, spec.build(10, (3, 32, 32)).fc.out_features
        ('fc', 10)
    """

    name: str
    build: Callable[[int, tuple[int, ...]], nn.Module]
    output_layer: str
    description: str


_SPECS = [
    ModelSpec(
        "lenet_300_100",
        mlp.lenet_300_100,
        "fc3",
        "LeNet-300-100 MLP (LeCun et al. 1998; Frankle & Carbin 2019), flattened input",
    ),
    ModelSpec(
        "mnist1d_mlp",
        mlp.mnist1d_mlp,
        "fc3",
        "40-500-500-10 MLP with a residual second layer for MNIST-1D (Greydanus 2020)",
    ),
    ModelSpec("conv2", conv.conv2, "fc3", "Conv-2 for CIFAR-10 (Frankle & Carbin 2019)"),
    ModelSpec("conv4", conv.conv4, "fc3", "Conv-4 for CIFAR-10 (Frankle & Carbin 2019)"),
    ModelSpec("conv6", conv.conv6, "fc3", "Conv-6 for CIFAR-10 (Frankle & Carbin 2019)"),
    ModelSpec(
        "resnet20", cifar_resnet.resnet20, "fc", "ResNet-20 for CIFAR (He et al. 2016), open_lth"
    ),
    ModelSpec(
        "resnet32", cifar_resnet.resnet32, "fc", "ResNet-32 for CIFAR (He et al. 2016), open_lth"
    ),
    ModelSpec(
        "resnet56", cifar_resnet.resnet56, "fc", "ResNet-56 for CIFAR (He et al. 2016), open_lth"
    ),
    ModelSpec(
        "vgg11", vgg.vgg11, "fc", "VGG-11 with BN for CIFAR (Simonyan & Zisserman 2015), open_lth"
    ),
    ModelSpec(
        "vgg16", vgg.vgg16, "fc", "VGG-16 with BN for CIFAR (Simonyan & Zisserman 2015), open_lth"
    ),
    ModelSpec(
        "vgg19", vgg.vgg19, "fc", "VGG-19 with BN for CIFAR (Simonyan & Zisserman 2015), open_lth"
    ),
    ModelSpec(
        "mobilenetv2",
        mobilenetv2.mobilenetv2,
        "classifier",
        "MobileNetV2 with a stride-1 stem for 32x32 CIFAR (Sandler et al. 2018)",
    ),
    ModelSpec(
        "resnet18",
        torchvision_resnet.resnet18,
        "fc",
        "torchvision's ImageNet ResNet-18 (He et al. 2016), untrained",
    ),
    ModelSpec(
        "resnet50",
        torchvision_resnet.resnet50,
        "fc",
        "torchvision's ImageNet ResNet-50 (He et al. 2016), untrained",
    ),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
"""Model name -> `ModelSpec`, in the order of the module docstring."""


def model_names() -> list[str]:
    """The names `get_model` accepts, in registry order (MLPs, Conv-k, ResNets, VGGs, ...).

    Example:
        >>> model_names()[:3]
        ['lenet_300_100', 'mnist1d_mlp', 'conv2']
    """
    return list(MODELS)


def get_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A fresh, randomly initialised model `name` with `num_classes` outputs for samples of
    `input_shape` (without the batch dimension). Raises ValueError for an unknown name, a bad
    `num_classes`, or an input shape the model cannot take.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = get_model("conv2", 10, (3, 32, 32))
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> get_model("resnet21", 10, (3, 32, 32))
        Traceback (most recent call last):
        ...
        ValueError: model: unknown 'resnet21'; choose one of ['lenet_300_100', ...]
    """
    spec = MODELS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"model: unknown {name!r}; choose one of {model_names()}")
    return spec.build(num_classes, input_shape)


__all__ = ["MODELS", "ModelSpec", "get_model", "model_names"]
