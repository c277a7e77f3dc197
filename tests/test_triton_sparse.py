"""The Triton sparse-execution kernels (`sparse_lottery.kernels.sparse_linear*`) against the
pure-PyTorch reference; on the CPU under TRITON_INTERPRET=1 (set before triton is imported),
so sizes are small and odd: partial chunks and batch blocks everywhere."""

import importlib
import importlib.util
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
from sparse_lottery.sparse import SparseLayout  # noqa: E402

K = importlib.import_module("sparse_lottery.kernels")
DEVICE = "cuda" if CUDA else "cpu"
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}

# (batch shape, in_features, out_features, density)
CASES = [((5,), 9, 7, 0.3), ((2, 3), 40, 19, 0.5), ((0,), 6, 4, 0.5), ((17,), 33, 8, 0.0),
         ((3,), 20, 21, 1.0), ((1,), 1, 1, 1.0)]  # fmt: skip


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_sparse_linear_against_reference(case, dtype):
    batch, k, n, density = case
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(n, k, generator=g) < density).to(DEVICE)
    layout = SparseLayout.from_mask(mask)
    to = dict(device=DEVICE, dtype=dtype)
    values = layout.values_of(torch.randn(n, k, generator=g).to(**to))
    x, bias = torch.randn(*batch, k, generator=g).to(**to), torch.randn(n, generator=g).to(**to)
    grad = torch.randn(*batch, n, generator=g).to(**to)
    tol = TOL[dtype]

    def close(got, want):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want.double(), atol=tol * 10, rtol=tol * 10)

    for b in (bias, None):
        want = R.sparse_linear(
            x.double(), values.double(), *layout, None if b is None else b.double()
        )
        close(K.sparse_linear(x, values, *layout, b), want.to(dtype))
    need = [True, True, True]
    got = K.sparse_linear_backward(grad, x, values, *layout, need)
    want = R.sparse_linear_backward(grad.double(), x.double(), values.double(), *layout, need)
    for a, w in zip(got, want):
        close(a, w.to(dtype))
    only_input = K.sparse_linear_backward(grad, None, values, *layout, [True, False, False])
    assert only_input[1] is None and only_input[2] is None
    close(only_input[0], got[0])


def test_errors_are_checked():
    layout = SparseLayout.from_mask(torch.rand(4, 6, device=DEVICE) < 0.5)
    values = torch.randn(layout.nnz, device=DEVICE)
    with pytest.raises(ValueError, match="input: expected last dimension in_features=6"):
        K.sparse_linear(torch.randn(3, 5, device=DEVICE), values, *layout)
