"""SmallNORB (LeCun et al. 2004): 96x96 grey stereo photographs of 50 toys in 5 classes
(animal, human, airplane, truck, car), 24300 training and 24300 test pairs.

Read from its standard files under `data_dir/smallnorb/` (plain `.mat` or gzipped `.mat.gz`):
`smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat}.mat` and
`smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat}.mat`. Only the first (left) image of each
stereo pair is used, downsampled to 32x32 by area interpolation (the mean of each 3x3 block,
rounded back to uint8): 9x fewer pixels, the size the CIFAR-style networks take. The
normalisation mean/std are those of the (downsampled) training pixels, computed on load.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import ArrayData, DatasetNotFoundError

URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
FILES = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
}
SIZE = 32
NUM_CLASSES = 5

# Magic number (first int32 of the file) -> element type of the NORB binary matrix format.
MAGIC = {
    0x1E3D4C51: np.dtype("<f4"),  # single precision
    0x1E3D4C53: np.dtype("<f8"),  # double precision
    0x1E3D4C54: np.dtype("<i4"),  # integer
    0x1E3D4C55: np.dtype("u1"),  # byte
    0x1E3D4C56: np.dtype("<i2"),  # short
}


def read_norb_matrix(data: bytes) -> np.ndarray:
    """Parse one file of the NORB "binary matrix" format into an array.

    Layout (every int is a little-endian int32): `magic` (the element type, see `MAGIC`),
    `ndim`, then `max(ndim, 3)` dimension sizes (a matrix of fewer than 3 dimensions still
    stores 3, padded with 1s), then the elements in C order (last index fastest).

    Example:
        >>> header = np.array([0x1E3D4C54, 1, 2, 1, 1], "<i4").tobytes()
        >>> read_norb_matrix(header + np.array([3, 4], "<i4").tobytes())
        array([3, 4], dtype=int32)
    """
    magic, ndim = (int(v) for v in np.frombuffer(data, "<i4", count=2))
    if magic not in MAGIC:
        known = ", ".join(f"{m:#x}" for m in MAGIC)
        raise ValueError(f"data: expected a NORB magic number ({known}), got {magic:#x}")
    if not 0 < ndim <= 16:
        raise ValueError(f"data: expected 1 to 16 dimensions in the header, got {ndim}")
    stored = max(ndim, 3)
    dims = [int(v) for v in np.frombuffer(data, "<i4", count=stored, offset=8)][:ndim]
    dtype = MAGIC[magic]
    count = int(np.prod(dims))
    offset = 8 + 4 * stored
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(
            f"data: header says {dims} elements of {dtype} ({count * dtype.itemsize} bytes), "
            f"got {len(data) - offset} bytes after the header"
        )
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(dims)


def _find(root: Path, name: str) -> Path | None:
    for path in (root / f"{name}.mat", root / f"{name}.mat.gz"):
        if path.is_file():
            return path
    return None


def _read(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return read_norb_matrix(f.read())


def _left_images_32(dat: np.ndarray, chunk: int = 2048) -> torch.Tensor:
    """(N, 2, H, W) uint8 stereo pairs -> (N, 1, 32, 32) uint8 left images, area-downsampled."""
    if dat.ndim != 4 or dat.shape[1] != 2:
        raise ValueError(f"dat: expected stereo pairs (N, 2, H, W), got shape {dat.shape}")
    left = torch.from_numpy(np.ascontiguousarray(dat[:, 0]))
    out = torch.empty(len(left), 1, SIZE, SIZE, dtype=torch.uint8)
    for i in range(0, len(left), chunk):
        part = left[i : i + chunk, None].float()
        out[i : i + chunk] = F.interpolate(part, size=(SIZE, SIZE), mode="area").round_().byte()
    return out


def smallnorb(data_dir: Path, download: bool = False) -> tuple[ArrayData, ArrayData]:
    """SmallNORB as (train, test) `ArrayData`: left images at 32x32, input_shape (1, 32, 32),
    5 classes, read from `data_dir/smallnorb/`. Never downloads (the error says how to get it).

    Example:
        >>> train, test = smallnorb(Path("data"))  # doctest: +SKIP
        >>> len(train), train.input_shape, train.num_classes  # doctest: +SKIP
        (24300, (1, 32, 32), 5)
    """
    root = Path(data_dir) / "smallnorb"
    paths = {}
    for split, stem in FILES.items():
        for kind in ("dat", "cat"):
            name = f"{stem}-{kind}"
            found = _find(root, name)
            if found is None:
                looked = [
                    str(root / f"{s}-{k}.mat{z}")
                    for s in FILES.values()
                    for k in ("dat", "cat")
                    for z in ("", ".gz")
                ]
                raise DatasetNotFoundError(
                    f"dataset 'smallnorb': {name}.mat(.gz) not found; looked for "
                    f"{', '.join(looked)}. It is not downloaded automatically"
                    f"{' (--download does not apply)' if download else ''}: fetch the four "
                    f"*-dat.mat.gz and *-cat.mat.gz files of the training and testing sets "
                    f"from {URL} into {root} (gzipped or gunzipped, both are read)."
                )
            paths[split, kind] = found
    dats = {s: _left_images_32(_read(paths[s, "dat"])) for s in FILES}
    cats = {s: torch.as_tensor(_read(paths[s, "cat"]).astype(np.int64)) for s in FILES}
    for s in FILES:
        if len(cats[s]) != len(dats[s]):
            raise ValueError(
                f"smallnorb {s}: expected as many labels as images ({len(dats[s])}), "
                f"got {len(cats[s])} in {paths[s, 'cat']}"
            )
    pixels = dats["train"].float().div_(255.0)
    mean, std = pixels.mean().item(), max(pixels.std().item(), 1e-6)
    return tuple(ArrayData(dats[s], cats[s], NUM_CLASSES, mean, std) for s in FILES)


__all__ = ["read_norb_matrix", "smallnorb"]
