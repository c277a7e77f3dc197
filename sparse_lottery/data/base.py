"""The `Data` protocol the IMP driver trains on, and its two implementations.

The driver picks minibatches itself by index (the order is a pure function of seed and epoch,
so a killed run resumes exactly); a dataset only answers `batch(index, device)`.

- `ArrayData`: tensors in memory (uint8 images normalised per channel in `batch`, or float
  features used as they are).
- `ImageFolderData`: a `torchvision.datasets.ImageFolder`, decoded and resized per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Data(Protocol):
    """What the driver needs of a dataset: sizes and `batch(index, device) -> (x, y)`.

    `x` is float32 and normalised, shaped `(len(index), *input_shape)`; `y` is int64 class
    indices in `[0, num_classes)`.

    Example:
        >>> isinstance(ArrayData(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 2), Data)
        True
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]: ...


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing (or corrupt); the message says where it looked and how to
    get them.

    Example:
        >>> issubclass(DatasetNotFoundError, FileNotFoundError)
        True
    """


def _channel_stats(values: Sequence[float] | float | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if name == "std" and bool((t <= 0).any()):
        raise ValueError(f"std: expected positive values, got {t.tolist()}")
    return t


class ArrayData:
    """A dataset held as tensors: `x` (N, *input_shape), uint8 or float, and `y` (N,) labels.

    `batch` gathers the rows, moves them to `device` and converts them to float32: uint8 is
    divided by 255 first; then, when `mean`/`std` are given (one value, or one per channel =
    dim 0 of an example), `(x - mean) / std`. Float features without `mean`/`std` are returned
    as they are. `to(device)` keeps the whole dataset on a GPU so batches need no copy.

    Example:
        >>> x = torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8)  # (2, 1, 1, 2)
        >>> data = ArrayData(x, torch.tensor([1, 0]), num_classes=2, mean=0.5, std=0.5)
        >>> len(data), data.input_shape
        (2, (1, 1, 2))
        >>> xb, yb = data.batch(torch.tensor([1, 0]), "cpu")
        >>> [round(v, 4) for v in xb.flatten().tolist()], yb.tolist()
        ([-0.6, -0.2, -1.0, 1.0], [0, 1])
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
    ):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise TypeError(f"x: expected a uint8 or floating-point tensor, got {x.dtype}")
        if y.dim() != 1 or len(y) != len(x):
            raise ValueError(
                f"y: expected shape ({len(x)},) to match x of shape {tuple(x.shape)}, "
                f"got {tuple(y.shape)}"
            )
        if (mean is None) != (std is None):
            raise ValueError(f"mean/std: expected both or neither, got mean={mean}, std={std}")
        self.x = x
        self.y = y.to(device=x.device, dtype=torch.long)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(x.shape[1:])
        self.mean = _channel_stats(mean, "mean")
        self.std = _channel_stats(std, "std")

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        return (
            f"ArrayData(n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, dtype={self.x.dtype}, device={self.x.device})"
        )

    def to(self, device) -> ArrayData:
        """A copy of this dataset with its tensors on `device` (unchanged if already there).

        Example:
            >>> ArrayData(torch.zeros(3, 2), torch.zeros(3), 1).to("cpu").x.device.type
            'cpu'
        """
        out = ArrayData.__new__(ArrayData)
        out.__dict__.update(self.__dict__)
        out.x, out.y = self.x.to(device), self.y.to(device)
        if self.mean is not None:
            out.mean, out.std = self.mean.to(device), self.std.to(device)
        return out

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at `index` (1-D integer tensor, any device) as float32 `x` and int64
        `y` on `device`.

        Example:
            >>> data = ArrayData(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 1]), 2)
            >>> data.batch(torch.tensor([2]), "cpu")
            (tensor([[4., 5.]]), tensor([1]))
        """
        index = torch.as_tensor(index, dtype=torch.long).to(self.x.device)
        x = self.x[index].to(device, non_blocking=True)
        y = self.y[index].to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        else:
            x = x.float()
        if self.mean is not None:
            view = (-1,) + (1,) * (x.dim() - 2)
            x = (x - self.mean.to(x.device).view(view)) / self.std.to(x.device).view(view)
        return x, y


class ImageFolderData:
    """A `torchvision.datasets.ImageFolder` (one sub-folder per class) read per batch.

    `batch` decodes the requested files, resizes the shorter side to `resize` (256), takes the
    center `size` x `size` crop (224) and normalises with `mean`/`std` (ImageNet's by
    default). Training uses the same deterministic center crop: ImageNet's usual
    RandomResizedCrop + flip is not applied here (the driver's batched `augment` works on
    equal-sized tensors; pass `augmentation="crop_flip"` there for a light augmentation).

    Example:
        >>> data = ImageFolderData("data/imagenet/train")  # doctest: +SKIP
        >>> data.batch(torch.tensor([0, 1]), "cpu")[0].shape  # doctest: +SKIP
        torch.Size([2, 3, 224, 224])
    """

    IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet models' constants
    IMAGENET_STD = (0.229, 0.224, 0.225)

    def __init__(
        self,
        root,
        size: int = 224,
        resize: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        from torchvision import datasets, transforms

        self.folder = datasets.ImageFolder(str(root))
        self.num_classes = len(self.folder.classes)
        self.input_shape = (3, size, size)
        self.transform = transforms.Compose(
            [
                transforms.Resize(resize),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.folder)

    def __repr__(self) -> str:
        return (
            f"ImageFolderData(root={self.folder.root!r}, n={len(self)}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape})"
        )

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, resize, crop and normalise the images at `index`; float32 x, int64 y.

        Example:
            >>> val = ImageFolderData("data/imagenet/val")  # doctest: +SKIP
            >>> x, y = val.batch(torch.arange(4), "cpu")  # doctest: +SKIP
        """
        samples = [self.folder.samples[i] for i in torch.as_tensor(index).tolist()]
        x = torch.stack([self.transform(self.folder.loader(path)) for path, _ in samples])
        y = torch.tensor([target for _, target in samples], dtype=torch.long)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


__all__ = ["ArrayData", "Data", "DatasetNotFoundError", "ImageFolderData"]
