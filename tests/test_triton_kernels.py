"""The Triton kernels (`sparse_lottery.kernels`) against `sparse_lottery.reference`.

Without a CUDA GPU the kernels run on CPU tensors under TRITON_INTERPRET=1 (set here, before
triton is imported), so sizes are small and odd on purpose: partial tiles everywhere.
"""

import importlib
import importlib.util
import os
import pathlib
import sys

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


def _load_kernels():
    """`sparse_lottery.kernels` when installed, else the source folder `kernels/` by that name."""
    try:
        return importlib.import_module("sparse_lottery.kernels")
    except ModuleNotFoundError:
        folder = pathlib.Path(__file__).resolve().parents[1] / "kernels"
        spec = importlib.util.spec_from_file_location(
            "sparse_lottery.kernels", folder / "__init__.py",
            submodule_search_locations=[str(folder)],
        )  # fmt: skip
        module = importlib.util.module_from_spec(spec)
        sys.modules["sparse_lottery.kernels"] = module
        spec.loader.exec_module(module)
        return module


K = _load_kernels()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (atol, rtol) against an fp64 reference computed from the same (rounded) inputs: the kernels
# accumulate in fp32, so the error is the output's rounding (fp32: the accumulation order).
TOL = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 GEMMs in IEEE precision (TF32 would need a looser tolerance)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype=dtype, device=DEVICE)


def _mask(shape, density, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).to(DEVICE)


def _form(mask, packed):
    return R.pack_mask(mask) if packed else mask


def _close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def _check_linear(x, w, keep, packed, bias, g):
    """All three kernels on one problem; keep: the bool mask, packed: which form to pass."""
    dtype = w.dtype
    mask = _form(keep, packed)
    b64 = None if bias is None else bias.double()
    y = K.masked_linear(x, w, mask, bias)
    assert y.shape == (*x.shape[:-1], w.shape[0])
    _close(y, R.masked_linear(x.double(), w.double(), keep, b64), dtype)

    dx = K.masked_linear_grad_input(g, w, mask)
    assert dx.shape == x.shape
    _close(dx, R.masked_linear_grad_input(g.double(), w.double(), keep), dtype)

    dw = K.masked_linear_grad_weight(g, x, mask)
    assert dw.shape == w.shape
    _close(dw, R.masked_linear_grad_weight(g.double(), x.double(), keep), dtype)
    assert bool((dw[~keep] == 0).all()), "dW must be exactly zero where pruned"

    gi, gw, gb = K.masked_linear_backward(g, x, w, mask, [True, True, True])
    assert torch.equal(gi, dx) and torch.equal(gw, dw)
    torch.testing.assert_close(gb, g.reshape(-1, w.shape[0]).sum(0))
    assert K.masked_linear_backward(g, None, w, mask, [True, False, False])[1:] == (None, None)


# batch shape, in_features K, out_features N
LINEAR_SHAPES = [((1,), 1, 1), ((5,), 7, 9), ((37,), 41, 33), ((2, 3), 100, 9), ((), 41, 1)]


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,k,n", LINEAR_SHAPES)
def test_masked_linear(batch, k, n, dtype, packed):
    x = _rand(*batch, k, dtype=dtype, seed=2)
    w = _rand(n, k, dtype=dtype, seed=3)
    bias = _rand(n, dtype=dtype, seed=4)
    g = _rand(*batch, n, dtype=dtype, seed=5)
    _check_linear(x, w, _mask((n, k), 0.5), packed, bias, g)


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_masked_linear_density(density, packed):
    x, w, g = _rand(5, 41, seed=2), _rand(9, 41, seed=3), _rand(5, 9, seed=5)
    _check_linear(x, w, _mask((9, 41), density), packed, None, g)


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_masked_linear_strided(dtype, packed):
    """Transposed weight and mask, sliced input and grad_output: read through strides."""
    w = _rand(41, 33, dtype=dtype, seed=3).t()  # (33, 41), stride (1, 33)
    x = _rand(5, 2, 82, dtype=dtype, seed=2)[:, 1, ::2]  # (5, 41), non-contiguous
    g = _rand(5, 66, dtype=dtype, seed=5)[:, ::2]  # (5, 33)
    keep = _mask((41, 33), 0.5).t()
    assert not (w.is_contiguous() or x.is_contiguous() or g.is_contiguous())
    bias = _rand(66, dtype=dtype, seed=4)[::2]
    mask = keep
    if packed:  # a strided packed mask: a column slice of a wider one
        mask = torch.cat([R.pack_mask(keep), torch.zeros(33, 3, dtype=torch.uint8, device=DEVICE)],
                         dim=1)[:, :6]  # fmt: skip
        assert not mask.is_contiguous()
    y = K.masked_linear(x, w, mask, bias)
    _close(y, R.masked_linear(x.double(), w.double(), keep, bias.double()), dtype)
    _close(K.masked_linear_grad_input(g, w, mask),
           R.masked_linear_grad_input(g.double(), w.double(), keep), dtype)  # fmt: skip
    dw = K.masked_linear_grad_weight(g, x, mask)
    _close(dw, R.masked_linear_grad_weight(g.double(), x.double(), keep), dtype)
    assert bool((dw[~keep] == 0).all())


def test_masked_linear_tf32_flag():
    """fp32 follows torch.backends.cuda.matmul.allow_tf32 (TF32 on tensor cores when set)."""
    x, w, g = _rand(37, 100, seed=2), _rand(33, 100, seed=3), _rand(37, 33, seed=5)
    keep = _mask((33, 100), 0.5)
    torch.backends.cuda.matmul.allow_tf32 = True  # restored by the autouse fixture
    y = K.masked_linear(x, w, R.pack_mask(keep))
    expected = R.masked_linear(x.double(), w.double(), keep)
    torch.testing.assert_close(y.double(), expected, atol=5e-2, rtol=1e-2)  # TF32: 10-bit mantissa
    dw = K.masked_linear_grad_weight(g, x, keep)
    assert bool((dw[~keep] == 0).all())


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
def test_masked_linear_empty(packed):
    """Empty batches and zero-width layers: right shapes, zeros (or bias), no launch needed."""
    w, keep = _rand(9, 7, seed=3), _mask((9, 7), 0.5)
    mask = _form(keep, packed)
    x, g = _rand(0, 3, 7), _rand(0, 3, 9)
    assert K.masked_linear(x, w, mask).shape == (0, 3, 9)
    assert K.masked_linear_grad_input(g, w, mask).shape == (0, 3, 7)
    dw = K.masked_linear_grad_weight(g, x, mask)
    assert dw.shape == (9, 7) and bool((dw == 0).all())
    # in_features = 0: y = bias
    w0, b = _rand(9, 0), _rand(9, seed=4)
    keep0 = _mask((9, 0), 0.5)
    y = K.masked_linear(_rand(4, 0), w0, _form(keep0, packed), b)
    torch.testing.assert_close(y, b.expand(4, 9))


def test_masked_linear_rejects_bad_mask():
    w = _rand(9, 7)
    with pytest.raises(RuntimeError, match="mask"):
        K.masked_linear(_rand(5, 7), w, _mask((7, 9), 0.5))
    with pytest.raises(RuntimeError, match="packed"):
        K.masked_linear(_rand(5, 7), w, torch.zeros(9, 2, dtype=torch.uint8, device=DEVICE))


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1,), (37,), (5, 9), (3, 4, 5), (33, 17)], ids=str)
def test_apply_mask(shape, dtype, packed):
    t = _rand(*shape, dtype=dtype)
    t[(0,) * len(shape)] = float("nan")  # a pruned NaN must become 0 like the reference
    keep = _mask(shape, 0.5)
    out = K.apply_mask(t, _form(keep, packed))
    expected = R.apply_mask(t, keep)
    assert out.shape == t.shape and out.dtype == dtype
    assert torch.equal(out.nan_to_num(7.0), expected.nan_to_num(7.0))


def test_apply_mask_strided():
    t = _rand(9, 14).t()  # (14, 9)
    keep = _mask((9, 14), 0.5).t()
    assert torch.equal(K.apply_mask(t, keep), R.apply_mask(t, keep))
    assert torch.equal(K.apply_mask(t, R.pack_mask(keep)), R.apply_mask(t, keep))
    assert K.apply_mask(_rand(0, 5), _mask((0, 5), 0.5)).shape == (0, 5)


@pytest.mark.parametrize(
    "shape", [(), (1,), (9,), (5, 7), (3, 8), (2, 3, 5), (0, 4), (4, 0), (37, 41)], ids=str
)
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_pack_unpack(shape, density):
    keep = _mask(shape, density)
    packed = K.pack_mask(keep)
    assert torch.equal(packed, R.pack_mask(keep))
    assert torch.equal(K.unpack_mask(packed, shape), keep)


def test_pack_unpack_strided():
    keep = _mask((13, 6), 0.5).t()  # non-contiguous bool mask
    packed = K.pack_mask(keep)
    assert torch.equal(packed, R.pack_mask(keep))
    wide = torch.cat([packed, packed], dim=1)[:, :2]  # non-contiguous packed mask
    assert torch.equal(K.unpack_mask(wide, (6, 13)), keep)
    with pytest.raises(RuntimeError, match="packed"):
        K.unpack_mask(packed, (6, 17))
