"""Datasets of the IMP driver, each a (train, test) pair of `Data` objects read by index.

The driver picks minibatches itself (`data.batch(index, device)`), so the data order is a pure
function of (seed, epoch) and a killed run resumes exactly. `load_dataset(name, data_dir,
download)` returns the pair; `DATASETS[name].augmentation` names its default training
augmentation, applied by `augment(name, x, generator)` to a batch.

Datasets (name: what, input_shape, classes, default augmentation):

- `mnist1d`: MNIST-1D, generated locally by the `mnist1d` package and cached as
  `data_dir/mnist1d.npz`; (40,), 10, none.
- `mnist1d_shifted`: MNIST-1D generated with another seed, sequences rolled by 20 positions
  (a transfer target), cached as `data_dir/mnist1d_shifted.npz`; (40,), 10, none.
- `digits`: scikit-learn's bundled 8x8 digits, seeded 80/20 split; (1, 8, 8), 10, none.
- `mnist`, `fashionmnist`: torchvision; (1, 28, 28), 10, none.
- `cifar10`, `cifar100`: torchvision; (3, 32, 32), 10 / 100, `crop_flip`.
- `smallnorb`: the standard NORB files in `data_dir/smallnorb/`, left image at 32x32;
  (1, 32, 32), 5, none.
- `imagenet`: ImageFolder at `data_dir/imagenet/{train,val}`, resize 256 + center crop 224;
  (3, 224, 224), 1000, none.
- `synthetic_cifar`: random CIFAR-shaped data in memory, for benchmarks; (3, 32, 32), 10,
  `crop_flip`.

Only torchvision's datasets download, and only with `download=True` (`--download`); missing
files raise `DatasetNotFoundError` (a `FileNotFoundError`) saying where it looked and how to
get them.

Example:
    >>> from sparse_lottery.data import DATASETS, augment, load_dataset
    >>> train, test = load_dataset("synthetic_cifar")
    >>> x, y = train.batch(torch.arange(4), "cpu")
    >>> x.shape, x.dtype, y.dtype
    (torch.Size([4, 3, 32, 32]), torch.float32, torch.int64)
    >>> augment(DATASETS["synthetic_cifar"].augmentation, x, torch.Generator()).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .augmentation import AUGMENTATIONS, augment, crop_flip
from .base import ArrayData, Data, DatasetNotFoundError, ImageFolderData
from .local import digits, load_mnist1d, mnist1d, mnist1d_shifted, synthetic_cifar
from .norb import read_norb_matrix, smallnorb
from .torchvision_sets import imagenet, torchvision_arrays


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the registry: its `name`, a one-line `description`, the name of its default
    training `augmentation` (a key of `AUGMENTATIONS`, or None) and `load(data_dir, download)
    -> (train, test)`.

    Example:
        >>> spec = DATASETS["cifar10"]
        >>> spec.name, spec.augmentation
        ('cifar10', 'crop_flip')
    """

    name: str
    description: str
    augmentation: str | None
    load: Callable[[Path, bool], tuple[Data, Data]]


_SPECS = [
    DatasetSpec(
        "mnist1d",
        "MNIST-1D: 4000/1000 sequences of length 40, 10 classes, generated locally",
        None,
        mnist1d,
    ),
    DatasetSpec(
        "mnist1d_shifted",
        "MNIST-1D variant: another seed, sequences rolled by 20; 4000/1000, 10 classes, local",
        None,
        mnist1d_shifted,
    ),
    DatasetSpec(
        "digits",
        "scikit-learn's 8x8 digits: 1437/360 (seed-0 stratified split), 10 classes",
        None,
        digits,
    ),
    DatasetSpec(
        "mnist",
        "MNIST: 60000/10000 28x28 grey digits, 10 classes (torchvision)",
        None,
        partial(torchvision_arrays, "mnist"),
    ),
    DatasetSpec(
        "fashionmnist",
        "Fashion-MNIST: 60000/10000 28x28 grey clothes, 10 classes (torchvision)",
        None,
        partial(torchvision_arrays, "fashionmnist"),
    ),
    DatasetSpec(
        "cifar10",
        "CIFAR-10: 50000/10000 32x32 colour images, 10 classes (torchvision)",
        "crop_flip",
        partial(torchvision_arrays, "cifar10"),
    ),
    DatasetSpec(
        "cifar100",
        "CIFAR-100: 50000/10000 32x32 colour images, 100 classes (torchvision)",
        "crop_flip",
        partial(torchvision_arrays, "cifar100"),
    ),
    DatasetSpec(
        "smallnorb",
        "SmallNORB: 24300/24300 toys, left image at 32x32 grey, 5 classes (local files)",
        None,
        smallnorb,
    ),
    DatasetSpec(
        "imagenet",
        "ImageNet ILSVRC 2012: ImageFolder, center crop 224, 1000 classes (local files)",
        None,
        imagenet,
    ),
    DatasetSpec(
        "synthetic_cifar",
        "random CIFAR-shaped data for benchmarks: 5000/1000, 10 classes (in memory)",
        "crop_flip",
        synthetic_cifar,
    ),
]
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def load_dataset(
    name: str, data_dir: str | Path = "data", download: bool = False
) -> tuple[Data, Data]:
    """(train, test) of the dataset `name` (a key of `DATASETS`), read from or cached in
    `data_dir`; `download=True` lets torchvision fetch its datasets (the others ignore it).

    Example:
        >>> train, test = load_dataset("synthetic_cifar")  # or "cifar10", data_dir="data"
        >>> len(train), len(test), train.input_shape, train.num_classes
        (5000, 1000, (3, 32, 32), 10)
        >>> load_dataset("cifar11")
        Traceback (most recent call last):
        ...
        ValueError: name: expected a dataset in [...], got 'cifar11'
    """
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"name: expected a dataset in {sorted(DATASETS)}, got {name!r}")
    return spec.load(Path(data_dir), download)


__all__ = [
    "AUGMENTATIONS",
    "ArrayData",
    "DATASETS",
    "Data",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ImageFolderData",
    "augment",
    "crop_flip",
    "digits",
    "imagenet",
    "load_dataset",
    "load_mnist1d",
    "mnist1d",
    "mnist1d_shifted",
    "read_norb_matrix",
    "smallnorb",
    "synthetic_cifar",
    "torchvision_arrays",
]
