"""Datasets read (and, on request, downloaded) by torchvision: MNIST, FashionMNIST, CIFAR-10,
CIFAR-100 and ImageNet (an ImageFolder).

The small ones go through `torchvision.datasets.<Name>(root=data_dir, train=...,
download=download)`; their `.data`/`.targets` become uint8 `ArrayData` (CIFAR's HWC images
transposed to CHW), normalised per channel in `batch` with the constants below. ImageNet is
`ImageFolderData` over `data_dir/imagenet/{train,val}` (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import ArrayData, DatasetNotFoundError, ImageFolderData

# Per-channel mean/std of each training set's pixels in [0, 1]:
# MNIST (0.1307, 0.3081): PyTorch's examples/mnist; FashionMNIST (0.2860, 0.3530): computed the
# same way over its 60000 training images; CIFAR-10/100: the per-channel mean and standard
# deviation over all training pixels (as in e.g. kuangliu/pytorch-cifar's mean; the often quoted
# CIFAR-10 std (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the pixel std).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHIONMNIST_MEAN, FASHIONMNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# name -> (torchvision class name, files torchvision reads under data_dir, classes, mean, std)
def _idx_files(folder: str) -> list[str]:
    """The four IDX files torchvision's MNIST-style datasets read from `<folder>/raw/`."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")  # fmt: skip
    return [f"{folder}/raw/{name}" for name in names]


_SETS = {
    "mnist": (
        "MNIST",
        _idx_files("MNIST"),
        10,
        MNIST_MEAN,
        MNIST_STD,
    ),
    "fashionmnist": (
        "FashionMNIST",
        _idx_files("FashionMNIST"),
        10,
        FASHIONMNIST_MEAN,
        FASHIONMNIST_STD,
    ),
    "cifar10": (
        "CIFAR10",
        [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
        + ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"],
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": (
        "CIFAR100",
        ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}


def _not_found(name: str, data_dir: Path, cause: Exception) -> DatasetNotFoundError:
    cls_name, files = _SETS[name][0], _SETS[name][1]
    paths = [str(data_dir / f) for f in files]
    missing = [p for p in paths if not Path(p).is_file()]
    if len(missing) == len(paths):
        state = "none of them exists"
    elif missing:
        state = f"missing: {', '.join(missing)}"
    else:
        state = "all exist, but a file is corrupt or fails its checksum"
    return DatasetNotFoundError(
        f"dataset {name!r}: torchvision.datasets.{cls_name} found no usable files in "
        f"{data_dir} ({cause}). It looked for {', '.join(paths)} ({state}). Pass --download "
        f"(load_dataset({name!r}, {str(data_dir)!r}, download=True)) to fetch it with "
        f"torchvision into {data_dir}."
    )


def torchvision_arrays(
    name: str, data_dir: Path, download: bool = False
) -> tuple[ArrayData, ArrayData]:
    """(train, test) `ArrayData` of the torchvision dataset `name` (mnist, fashionmnist,
    cifar10, cifar100) under `data_dir`; `download=True` lets torchvision fetch it.

    Raises `DatasetNotFoundError` (a FileNotFoundError) naming the paths it looked in when the
    files are missing or corrupt and `download` is False.

    Example:
        >>> train, test = torchvision_arrays("cifar10", Path("data"))  # doctest: +SKIP
        >>> train.input_shape, len(test)  # doctest: +SKIP
        ((3, 32, 32), 10000)
    """
    if name not in _SETS:
        raise ValueError(f"name: expected one of {sorted(_SETS)}, got {name!r}")
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError(
            f"dataset {name!r} is read by torchvision, which is not installed ({e}); "
            f"pip install torchvision"
        ) from e
    cls_name, _, num_classes, mean, std = _SETS[name]
    cls = getattr(tvd, cls_name)
    data_dir = Path(data_dir)
    out = []
    for train in (True, False):
        try:
            ds = cls(root=str(data_dir), train=train, download=download)
        except RuntimeError as e:
            if download:
                raise
            raise _not_found(name, data_dir, e) from e
        x = torch.as_tensor(ds.data, dtype=torch.uint8)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()  # HWC->CHW
        y = torch.as_tensor(ds.targets, dtype=torch.long)
        out.append(ArrayData(x, y, num_classes, mean, std))
    return out[0], out[1]


IMAGENET_HELP = (
    "Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
    "https://image-net.org/download-images (registration required) and lay them out as one "
    "folder per class (WordNet id): {root}/train/n01440764/*.JPEG, ... and "
    "{root}/val/n01440764/*.JPEG, ... (the validation images sorted into class folders, e.g. "
    "with the valprep.sh script of PyTorch's examples/imagenet)."
)


def imagenet(data_dir: Path, download: bool = False) -> tuple[ImageFolderData, ImageFolderData]:
    """ImageNet (ILSVRC 2012) as (train, val) `ImageFolderData` over
    `data_dir/imagenet/{train,val}`: resize 256, center crop 224, ImageNet mean/std.
    Never downloads (`download` only changes nothing; the error says how to get it).

    Example:
        >>> train, val = imagenet(Path("data"))  # doctest: +SKIP
        >>> train.num_classes, train.input_shape  # doctest: +SKIP
        (1000, (3, 224, 224))
    """
    root = Path(data_dir) / "imagenet"
    splits = [root / "train", root / "val"]
    for split in splits:
        has_class_dirs = split.is_dir() and any(p.is_dir() for p in split.iterdir())
        if not has_class_dirs:
            raise DatasetNotFoundError(
                f"dataset 'imagenet': no class folders in {split} (looked in "
                f"{', '.join(map(str, splits))}); it is not downloaded automatically"
                f"{' (--download does not apply)' if download else ''}. "
                + IMAGENET_HELP.format(root=root)
            )
    return ImageFolderData(splits[0]), ImageFolderData(splits[1])


__all__ = ["imagenet", "torchvision_arrays"]
