"""sparse_lottery.data: every dataset loads from tiny files in its real on-disk format (no
network, ever), batches come back float32/int64 on the requested device, missing data says
where it looked, and crop_flip is a per-example shifted/flipped copy, deterministic per seed."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparse_lottery.data import (
    AUGMENTATIONS,
    DATASETS,
    ArrayData,
    Data,
    DatasetNotFoundError,
    augment,
    crop_flip,
    load_dataset,
    read_norb_matrix,
)


def _check_batch(data, index, device):
    x, y = data.batch(torch.as_tensor(index), device)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device.type == torch.device(device).type and y.device == x.device
    assert tuple(x.shape) == (len(index), *data.input_shape) and tuple(y.shape) == (len(index),)
    return x.cpu(), y.cpu()


# --------------------------------------------------------------------------- mnist1d
@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory):
    pytest.importorskip("mnist1d")
    path = tmp_path_factory.mktemp("mnist1d")
    load_dataset("mnist1d", path)  # generates (a few seconds) and caches
    return path


def test_mnist1d_shapes_and_batch(mnist1d_dir, device):
    train, test = load_dataset("mnist1d", mnist1d_dir)
    assert isinstance(train, Data) and isinstance(test, Data)
    assert (len(train), len(test)) == (4000, 1000)
    assert train.input_shape == test.input_shape == (40,) and train.num_classes == 10
    x, y = _check_batch(train, [0, 5, 3999], device)
    assert torch.equal(x, train.x[[0, 5, 3999]]) and torch.equal(y, train.y[[0, 5, 3999]])
    assert int(y.min()) >= 0 and int(y.max()) < 10


def test_mnist1d_reuses_cache(mnist1d_dir, monkeypatch):
    import mnist1d.data

    cached = mnist1d_dir / "mnist1d.npz"
    assert cached.is_file()
    assert not [p for p in mnist1d_dir.iterdir() if p.name != "mnist1d.npz"], "temp file left"
    before = cached.stat().st_mtime_ns
    first = load_dataset("mnist1d", mnist1d_dir)[0]

    def fail(*args, **kwargs):
        raise AssertionError("regenerated MNIST-1D although it was cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    again = load_dataset("mnist1d", mnist1d_dir)[0]
    assert torch.equal(first.x, again.x) and cached.stat().st_mtime_ns == before
    from sparse_lottery.quickstart import load_mnist1d  # the quick start's loader still works

    assert torch.equal(load_mnist1d(mnist1d_dir)["x"], first.x)


# --------------------------------------------------------------------------- digits
def test_digits_split_is_fixed():
    pytest.importorskip("sklearn")
    train, test = load_dataset("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert train.input_shape == (1, 8, 8) and train.num_classes == 10
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert torch.bincount(test.y, minlength=10).min() >= 35  # stratified: ~36 per class
    train2, test2 = load_dataset("digits")
    assert torch.equal(train.x, train2.x) and torch.equal(test.y, test2.y)
    x, _ = _check_batch(test, [0, 1], "cpu")
    assert torch.equal(x, test.x[:2])


# --------------------------------------------------------------------------- torchvision
def _write_idx(path, array):
    """MNIST's IDX format: big-endian magic (0, 0, 0x08 = uint8, ndim), dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_like_round_trip(tmp_path, name, folder, device):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(tmp_path / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        _write_idx(tmp_path / folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = images, labels
    train, test = load_dataset(name, tmp_path)
    assert (len(train), len(test)) == (5, 3) and train.input_shape == (1, 28, 28)
    spec_mean, spec_std = float(train.mean[0]), float(train.std[0])
    for data, (images, labels) in ((train, arrays["train"]), (test, arrays["t10k"])):
        x, y = _check_batch(data, range(len(labels)), device)
        expected = (torch.from_numpy(images).float()[:, None] / 255 - spec_mean) / spec_std
        torch.testing.assert_close(x, expected)
        assert y.tolist() == labels.tolist()


def _write_cifar10(root, rng):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)  # rows are CHW
        labels = rng.integers(0, 10, 2).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches[name] = data, labels
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


def test_cifar10_round_trip(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    batches = _write_cifar10(tmp_path, np.random.default_rng(1))
    # torchvision checks the real files' md5 sums; accept our fake files when they exist.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    train, test = load_dataset("cifar10", tmp_path)
    assert (len(train), len(test)) == (10, 2) and train.input_shape == (3, 32, 32)
    assert DATASETS["cifar10"].augmentation == "crop_flip"
    raw = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(train.x, torch.from_numpy(raw).reshape(10, 3, 32, 32))  # back to CHW
    assert train.y.tolist() == labels and test.y.tolist() == batches["test_batch"][1]
    x, _ = _check_batch(test, [1], "cpu")
    expected = torch.from_numpy(batches["test_batch"][0][1]).reshape(3, 32, 32) / 255.0
    expected = (expected - train.mean[:, None, None]) / train.std[:, None, None]
    torch.testing.assert_close(x[0], expected)


@pytest.mark.parametrize(
    "name,expected_file",
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashionmnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
    ],
)
def test_torchvision_missing_data_says_where_and_how(tmp_path, name, expected_file):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path / "empty")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert name in message and str(tmp_path / "empty" / expected_file) in message
    assert "--download" in message
    assert not (tmp_path / "empty").exists()  # nothing was downloaded or created


# --------------------------------------------------------------------------- smallnorb
def _norb_bytes(array, magic):
    dims = list(array.shape) + [1] * (3 - array.ndim)
    header = np.array([magic, array.ndim, *dims], "<i4").tobytes()
    return header + array.tobytes()


def test_norb_matrix_reader():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    assert np.array_equal(read_norb_matrix(_norb_bytes(a, 0x1E3D4C55)), a)
    b = np.array([4, 0, 2], "<i4")
    assert np.array_equal(read_norb_matrix(_norb_bytes(b, 0x1E3D4C54)), b)
    with pytest.raises(ValueError, match="magic"):
        read_norb_matrix(_norb_bytes(b, 0x12345678))
    with pytest.raises(ValueError, match="bytes after the header"):
        read_norb_matrix(_norb_bytes(b, 0x1E3D4C54)[:-4])


def test_smallnorb_round_trip(tmp_path, device):
    root = tmp_path / "smallnorb"
    root.mkdir()
    rng = np.random.default_rng(2)
    stems = {
        "train": "smallnorb-5x46789x9x18x6x2x96x96-training",
        "test": "smallnorb-5x01235x9x18x6x2x96x96-testing",
    }
    raw = {}
    for split, n in (("train", 4), ("test", 3)):
        dat = rng.integers(0, 256, (n, 2, 96, 96), dtype=np.uint8)
        cat = rng.integers(0, 5, n).astype("<i4")
        files = {"dat": _norb_bytes(dat, 0x1E3D4C55), "cat": _norb_bytes(cat, 0x1E3D4C54)}
        for kind, content in files.items():
            if split == "test":  # the test set gzipped, as distributed
                (root / f"{stems[split]}-{kind}.mat.gz").write_bytes(gzip.compress(content))
            else:
                (root / f"{stems[split]}-{kind}.mat").write_bytes(content)
        raw[split] = dat, cat
    train, test = load_dataset("smallnorb", tmp_path)
    assert (len(train), len(test)) == (4, 3)
    assert train.input_shape == (1, 32, 32) and train.num_classes == 5
    for data, (dat, cat) in ((train, raw["train"]), (test, raw["test"])):
        assert data.y.tolist() == cat.tolist()
        left = torch.from_numpy(dat[:, :1]).float()  # the left image, 3x3 block means
        assert torch.equal(data.x, F.avg_pool2d(left, 3).round().to(torch.uint8))
        x, _ = _check_batch(data, [0], device)
        assert abs(float(x.mean())) < 0.5  # normalised with the training pixels' mean/std


def test_smallnorb_and_imagenet_missing_say_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("smallnorb", tmp_path)
    message = str(info.value)
    norb = tmp_path / "smallnorb" / "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat"
    assert str(norb) in message and "cs.nyu.edu" in message
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenet", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "imagenet" / "train") in message
    assert str(tmp_path / "imagenet" / "val") in message and "image-net.org" in message


def test_imagenet_folder_batches(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / "imagenet" / split / cls).mkdir(parents=True)
            pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imagenet" / split / cls / "a.png")
    train, val = load_dataset("imagenet", tmp_path)
    assert (len(train), len(val), train.num_classes) == (2, 2, 2)
    _, y = _check_batch(val, [1, 0], "cpu")
    assert y.tolist() == [1, 0]


# --------------------------------------------------------------------------- synthetic, registry
def test_synthetic_cifar_is_seeded():
    train, test = load_dataset("synthetic_cifar", "/nonexistent")  # reads no files
    assert (len(train), len(test), train.input_shape) == (5000, 1000, (3, 32, 32))
    assert torch.equal(train.x, load_dataset("synthetic_cifar")[0].x)
    _check_batch(train, [0, 4999], "cpu")


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="name") as info:
        load_dataset("cifar-10")
    assert "'cifar-10'" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


def test_registry_is_consistent():
    assert set(DATASETS) == {
        "mnist1d",
        "mnist1d_shifted",
        "digits",
        "mnist",
        "fashionmnist",
        "cifar10",
        "cifar100",
        "smallnorb",
        "imagenet",
        "synthetic_cifar",
    }
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.description
        assert spec.augmentation is None or spec.augmentation in AUGMENTATIONS


def test_array_data_checks_its_arguments():
    with pytest.raises(ValueError, match="y: expected shape"):
        ArrayData(torch.zeros(3, 2), torch.zeros(2), 2)
    with pytest.raises(TypeError, match="x: expected"):
        ArrayData(torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3), 2)


# --------------------------------------------------------------------------- crop_flip
def _candidates(image, padding=4):
    """Every shifted crop of the zero-padded image, and its mirror (the slow reference)."""
    _, h, w = image.shape
    padded = F.pad(image, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


def test_crop_flip_matches_per_example_reference():
    x = torch.randn(64, 3, 8, 10)  # non-square, so rows and columns cannot be confused
    out = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    draws = []
    for n in range(len(x)):
        matches = [key for key, crop in _candidates(x[n]) if torch.equal(crop, out[n])]
        assert len(matches) == 1, f"example {n} is no shifted/flipped copy of its input"
        draws.append(matches[0])
    assert {d[2] for d in draws} == {False, True}  # some flipped, some not
    assert len({d[:2] for d in draws}) > 10  # many different shifts


def test_crop_flip_is_deterministic_per_seed(device):
    x = torch.randn(32, 3, 32, 32)
    a = augment("crop_flip", x.to(device), torch.Generator().manual_seed(7))
    b = augment("crop_flip", x.to(device), torch.Generator().manual_seed(7))
    c = augment("crop_flip", x.to(device), torch.Generator().manual_seed(8))
    assert a.device == x.to(device).device and torch.equal(a, b) and not torch.equal(a, c)
    cpu = crop_flip(x, torch.Generator().manual_seed(7))  # same draws on every device
    assert torch.equal(a.cpu(), cpu)


def test_augment_names():
    x = torch.randn(2, 1, 4, 4)
    assert augment(None, x, torch.Generator()) is x
    with pytest.raises(ValueError, match="crop_flip"):
        augment("cutout", x, torch.Generator())
    with pytest.raises(ValueError, match=r"x: expected a batch of images \(N, C, H, W\)"):
        crop_flip(torch.randn(4, 4), torch.Generator())
