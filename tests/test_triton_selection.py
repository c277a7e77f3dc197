"""The Triton selection kernels (magnitude_prune, random_prune) against the sort-based oracle of
`sparse_lottery.reference`: masks, thresholds and removed counts must agree bit for bit.

Without a CUDA GPU the kernels run on CPU tensors under TRITON_INTERPRET=1 (set before triton is
imported), where a block is 512 weights: tensors of a few thousand weights span several blocks,
so tie ranks cross block (and tensor) boundaries.
"""

import importlib
import importlib.util
import inspect
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from sparse_lottery import reference as R  # noqa: E402
from sparse_lottery._library import SCHEMAS  # noqa: E402

K = importlib.import_module("sparse_lottery.kernels")
BLOCK = importlib.import_module("sparse_lottery.kernels._selection_plan").BLOCK * 8  # weights
DEVICE = "cuda" if CUDA else "cpu"
INF = float("inf")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _weights(shape, dtype=torch.float32, seed=0, levels=None):
    """Random weights; `levels` quantises them to that many magnitudes (many exact ties), with
    zeros of both signs among them."""
    g = _gen(seed)
    w = torch.randn(shape, generator=g)
    if levels is not None:
        w = torch.randint(-levels, levels + 1, shape, generator=g).float() / 4
        negzero = (w == 0) & (torch.rand(shape, generator=g) < 0.5)
        w = torch.where(negzero, torch.tensor(-0.0), w)
    return w.to(dtype=dtype, device=DEVICE)


def _mask(shape, density, seed=1, form="bool"):
    """A bool mask, its packed form, or None (every weight survives)."""
    if form == "none":
        return None
    keep = (torch.rand(shape, generator=_gen(seed)) < density).to(DEVICE)
    return R.pack_mask(keep) if form == "packed" else keep


def _check_magnitude(weights, masks, amounts, counts=False, layerwise=False):
    inputs = [w.clone() for w in weights], [None if m is None else m.clone() for m in masks]
    masks_k, thr_k, removed_k = K.magnitude_prune(weights, masks, amounts, counts, layerwise)
    masks_r, thr_r, removed_r = R.magnitude_prune(weights, masks, amounts, counts, layerwise)
    for i, (a, b) in enumerate(zip(masks_k, masks_r, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"mask {i}: {a.dtype}{list(a.shape)}"
        assert torch.equal(a, b), f"mask {i} differs in {int((a != b).sum())} places"
    assert thr_k.dtype == torch.float64 and thr_k.device.type == "cpu"
    assert removed_k.dtype == torch.int64 and removed_k.device.type == "cpu"
    assert torch.equal(thr_k, thr_r), f"thresholds {thr_k.tolist()} != {thr_r.tolist()}"
    assert torch.equal(removed_k, removed_r), (
        f"removed {removed_k.tolist()} != {removed_r.tolist()}"
    )
    for w, w0 in zip(weights, inputs[0]):  # inputs untouched
        assert torch.equal(w.reshape(-1).view(torch.uint8), w0.reshape(-1).view(torch.uint8))
    for m, m0 in zip(masks, inputs[1]):
        assert m is None or torch.equal(m, m0)
    return masks_k, thr_k, removed_k


def _check_random(masks, amounts, counts=False, layerwise=False, seed=0):
    masks_k, removed_k = K.random_prune(masks, amounts, counts, layerwise, seed)
    masks_r, removed_r = R.random_prune(masks, amounts, counts, layerwise, seed)
    for i, (a, b) in enumerate(zip(masks_k, masks_r, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"mask {i}: {a.dtype}{list(a.shape)}"
        assert torch.equal(a, b), f"mask {i} differs in {int((a != b).sum())} places"
    assert torch.equal(removed_k, removed_r) and removed_k.device.type == "cpu"
    return masks_k, removed_k


# (shape, dtype, mask form, density): odd sizes, every dtype and mask form, empty, scalar,
# fully pruned, a packed mask with padding bits, a 4-D conv weight.
POOL = [
    ((37, 41), torch.float32, "bool", 0.7),
    ((300,), torch.bfloat16, "packed", 0.5),
    ((5, 3, 7), torch.float16, "none", 1.0),
    ((0, 5), torch.float32, "bool", 0.5),
    ((), torch.float16, "none", 1.0),
    ((9, 13), torch.bfloat16, "bool", 0.0),
    ((23, 11), torch.float16, "packed", 0.8),
    ((1,), torch.float32, "packed", 1.0),
    ((4, 3, 3, 3), torch.float32, "none", 1.0),
    ((2, 700), torch.float32, "bool", 0.9),
]


def _pool(seed, levels=None):
    weights = [_weights(s, d, seed=seed + i, levels=levels) for i, (s, d, _, _) in enumerate(POOL)]
    masks = [_mask(s, p, seed=seed + 50 + i, form=f) for i, (s, _, f, p) in enumerate(POOL)]
    return weights, masks


@pytest.mark.parametrize("levels", [None, 6], ids=["distinct", "ties"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_magnitude_pool_fractions(layerwise, levels):
    weights, masks = _pool(seed=3, levels=levels)
    amounts = [0.37] if not layerwise else [(i % 5) / 4 for i in range(len(weights))]
    _check_magnitude(weights, masks, amounts, False, layerwise)


@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_magnitude_pool_counts(layerwise):
    weights, masks = _pool(seed=7, levels=3)
    if layerwise:
        survivors = [int(R.as_bool(m, w.shape).sum()) if m is not None else w.numel()
                     for w, m in zip(weights, masks)]  # fmt: skip
        amounts = [float(s // (i + 1)) for i, s in enumerate(survivors)]  # k = S, S/2, ... 0
    else:
        amounts = [1234.0]
    _check_magnitude(weights, masks, amounts, True, layerwise)


@pytest.mark.parametrize("form", ["bool", "packed", "none"])
def test_magnitude_partial_ties_across_blocks(form):
    """Thousands of equal magnitudes over several blocks and two tensors; k removes part of them,
    so the tie ranks must run in position order across blocks and tensors."""
    a = torch.full((6 * BLOCK // 53 + 1, 53), 0.5, device=DEVICE)  # 6 blocks and a bit
    a[::7] = -0.5
    a[3, 5] = 0.25
    b = torch.full((4 * BLOCK - 48,), -0.5, device=DEVICE).to(torch.bfloat16)
    b[17] = 1.0
    masks = [_mask(a.shape, 0.9, seed=1, form=form), _mask(b.shape, 0.8, seed=2, form=form)]
    s = sum(int(R.as_bool(m, w.shape).sum()) if m is not None else w.numel()
            for w, m in zip([a, b], masks))  # fmt: skip
    for k in (1800.0, float(s - 700)):  # ties end in tensor 0 / in tensor 1
        _, thr, _ = _check_magnitude([a, b], masks, [k], True, False)
        assert thr.tolist() == [0.5]
    _check_magnitude([a, b], masks, [2345.0, 987.0], True, True)


def _special(dtype):
    """Zeros of both signs, subnormals, tiny and huge normals, ±inf, shuffled, as `dtype`."""
    if dtype == torch.float16:  # every subnormal bit pattern, both signs (and ±0)
        bits = torch.arange(0, 1024, dtype=torch.int16)
        sub = torch.cat([bits, bits | -0x8000]).view(torch.float16).float()
        extra = [6.1e-5, 65504.0, -65504.0, 1.0, -1.0, INF, -INF, 2.0**-14]
    else:
        tiny = torch.finfo(dtype).tiny
        sub = torch.tensor([tiny / 2, -tiny / 2, tiny / 4, tiny / 1024, 1e-45, -1e-45, 1e-40])
        sub = sub.repeat(40)
        extra = [tiny, -tiny, torch.finfo(dtype).max, -3e38, INF, -INF, 1.0, 0.0, -0.0]
    x = torch.cat([sub, torch.tensor(extra * 3), torch.tensor([0.0, -0.0] * 30)])
    x = x[torch.randperm(x.numel(), generator=_gen(0))]
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_magnitude_special_values(dtype):
    """Exact keys (fp16 subnormals widened bit for bit, -0.0 == 0.0, inf largest): one layerwise
    call with many k over copies of the same tensor checks many thresholds."""
    x = _special(dtype)
    n = x.numel()
    ks = [0, 1, 2, 30, 61, n // 3, n // 2, n - 30, n - 3, n - 1, n]
    _check_magnitude([x] * len(ks), [None] * len(ks), [float(k) for k in ks], True, True)


@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_magnitude_edges(layerwise):
    """k = 0 and k = S, fractions 0 and 1, fully pruned and empty tensors, single weights."""
    weights = [_weights((6, 9), seed=1, levels=2), _weights((), seed=2), _weights((0,), seed=3),
               _weights((1, 1), torch.float16, seed=4), _weights((3, 17), seed=5)]  # fmt: skip
    masks = [_mask((6, 9), 0.6, form="packed"), None, None, _mask((1, 1), 1.0),
             _mask((3, 17), 0.0, form="packed")]  # fmt: skip
    n = len(weights)
    for amount in (0.0, 1.0):
        _check_magnitude(weights, masks, [amount] * (n if layerwise else 1), False, layerwise)
    _check_magnitude(weights, masks, [0.0] * (n if layerwise else 1), True, layerwise)


def test_magnitude_round_half_even():
    """k = round(amount * S) with Python's rounding: 2.5 -> 2, 3.5 -> 4, 0.5 -> 0."""
    w = [_weights((10,), seed=1), _weights((14,), seed=2), _weights((2,), seed=3)]
    _, _, removed = _check_magnitude(w, [None] * 3, [0.25, 0.25, 0.25], False, True)
    assert removed.tolist() == [2, 4, 0]


def test_magnitude_strided_inputs():
    w = _weights((41, 33), seed=2, levels=4).t()
    keep = _mask((41, 33), 0.6).t()
    wide = torch.cat([R.pack_mask(keep), R.pack_mask(keep)], dim=1)[:, :6]
    assert not (w.is_contiguous() or keep.is_contiguous() or wide.is_contiguous())
    _check_magnitude([w, w], [keep, wide], [0.5], False, False)


def test_magnitude_errors():
    w = [_weights((5, 7), seed=1), _weights((20,), torch.float16, seed=2)]
    bad = w[1].clone()
    bad[3] = float("nan")
    pruned = torch.ones(20, dtype=torch.bool, device=DEVICE)
    pruned[3] = False  # a NaN is an error even where the mask has pruned it
    with pytest.raises(ValueError, match=r"weights\[1\]: contains NaN"):
        K.magnitude_prune([w[0], bad], [None, pruned], [0.5], False, False)
    with pytest.raises(ValueError, match="35 surviving weights of the pool"):
        K.magnitude_prune(w[:1], [None], [36.0], True, False)
    with pytest.raises(
        ValueError, match="21 to remove exceeds the 20 surviving weights of tensor 1"
    ):
        K.magnitude_prune(w, [None, None], [1.0, 21.0], True, True)
    with pytest.raises(ValueError, match="amounts"):
        K.magnitude_prune(w, [None, None], [0.5], False, True)  # checks come from CHECKS


@pytest.mark.parametrize("counts", [False, True], ids=["fraction", "count"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_random_prune(layerwise, counts):
    shapes = [
        ((37, 41), "bool", 0.7), ((300,), "packed", 0.5), ((23, 11), "packed", 1.0),
        ((0, 4), "bool", 0.5), ((4, 3, 3, 3), "bool", 0.0), ((2, 700), "bool", 1.0),
    ]  # fmt: skip
    masks = [_mask(s, p, seed=i, form=f) for i, (s, f, p) in enumerate(shapes)]
    if counts:
        amounts = [5.0, 100.0, 3.0, 0.0, 0.0, 1400.0] if layerwise else [777.0]
    else:
        amounts = [0.3, 0.5, 1.0, 0.5, 0.2, 0.65] if layerwise else [0.41]
    for seed in (0, 2**62 - 1):
        _check_random(masks, amounts, counts, layerwise, seed)


def test_random_prune_same_for_bool_and_packed():
    keep = _mask((29, 21), 0.8, seed=4)
    (from_bool,), _ = K.random_prune([keep], [0.5], False, False, 123)
    (from_packed,), _ = K.random_prune([R.pack_mask(keep)], [0.5], False, False, 123)
    assert torch.equal(R.pack_mask(from_bool), from_packed)


def test_random_prune_errors():
    with pytest.raises(ValueError, match="exceeds the 0 surviving weights of tensor 0"):
        K.random_prune([_mask((4, 4), 0.0)], [1.0], True, True, 0)


@pytest.mark.parametrize("op", ["magnitude_prune", "random_prune"])
def test_signature_is_the_schema(op):
    """The registry calls sparse_lottery.kernels.<op> with the schema's arguments."""
    names = [a.split()[-1].split("=")[0] for a in SCHEMAS[op].split(")")[0][1:].split(", ")]
    assert list(inspect.signature(getattr(K, op)).parameters) == names
