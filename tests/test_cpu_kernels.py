"""The C++ CPU kernels (csrc/cpu/) against sparse_lottery.reference, through torch.ops.

Fresh random inputs every case: odd shapes (K = 1 ... 2051, several panels), leading batch
dimensions, empty batches, non-contiguous operands, both mask forms, densities 0 ... 1, and the
four float dtypes with a (dtype, atol, rtol) table.
"""

import itertools

import pytest
import torch

import sparse_lottery  # noqa: F401  (registers the ops)
from sparse_lottery import _registry, reference
from sparse_lottery._extension import LOAD_ERROR, has_cpu_kernels

pytestmark = pytest.mark.skipif(
    not has_cpu_kernels(),
    reason=f"sparse_lottery._C C++ CPU kernels unavailable: {LOAD_ERROR}",
)

ops = torch.ops.sparse_lottery

# (atol, rtol) of a kernel result against the reference computed in the same dtype.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (3e-3, 3e-3),
}
DTYPES = list(TOL)
DENSITIES = [0.0, 0.1, 0.5, 1.0]
# (batch shape, in_features K, out_features N)
LINEAR_SHAPES = [
    ((5,), 1, 1),
    ((3,), 7, 9),
    ((2, 3), 41, 9),
    ((17,), 341, 300),
    ((4,), 1003, 33),
    ((5,), 1000, 300),  # fp32: two row panels (forward, grad_weight), two column panels
    ((3,), 2051, 600),  # several panels in every dtype, K not a multiple of 8
    ((0,), 41, 9),  # empty batch
    ((2, 0), 7, 9),
    # fp32 narrow layers (N <= 16, narrow_gemm.h): an output layer split over both threads,
    # K with a remainder of 5 and of 7, N in groups of at most 6 (16 = 6 + 6 + 4, 11 = 6 + 5)
    ((100,), 500, 10),
    ((300,), 613, 16),
    ((7, 37), 1031, 11),
    ((64,), 9, 1),
]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mask(shape, density, gen):
    return torch.rand(shape, generator=gen) < density


def _forms(mask):
    return {"bool": mask, "packed": reference.pack_mask(mask)}


def _close(out, ref, dtype, what):
    atol, rtol = TOL[dtype]
    assert out.dtype == ref.dtype and out.shape == ref.shape, what
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def test_routes_to_cpp():
    for op in (
        "masked_linear",
        "masked_linear_grad_input",
        "masked_linear_grad_weight",
        "masked_linear_backward",
        "apply_mask",
        "apply_masks_",
        "pack_mask",
        "unpack_mask",
    ):
        assert _registry.selected_backend(op, "cpu") == "cpp", op


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_masked_linear_ops(shape, dtype):
    batch, k, n = shape
    gen = _gen(hash((batch, k, n)) % 2**31)
    x = torch.randn(*batch, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / max(k, 1) ** 0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    g = torch.randn(*batch, n, generator=gen).to(dtype)
    for density in DENSITIES:
        mask = _mask((n, k), density, gen)
        for form, m in _forms(mask).items():
            what = f"{form} density {density}"
            _close(
                ops.masked_linear(x, w, m, b),
                reference.masked_linear(x, w, m, b),
                dtype,
                f"forward {what}",
            )
            _close(
                ops.masked_linear(x, w, m, None),
                reference.masked_linear(x, w, m),
                dtype,
                f"forward no bias {what}",
            )
            _close(
                ops.masked_linear_grad_input(g, w, m),
                reference.masked_linear_grad_input(g, w, m),
                dtype,
                f"grad_input {what}",
            )
            gw = ops.masked_linear_grad_weight(g, x, m)
            _close(gw, reference.masked_linear_grad_weight(g, x, m), dtype, f"grad_weight {what}")
            pruned = gw[~mask]
            assert (pruned == 0).all() and not pruned.signbit().any(), f"grad_weight {what}"
            _check_backward(g, x, w, m, mask, dtype, what)


def _check_backward(g, x, w, m, mask, dtype, what):
    """masked_linear_backward against the reference, for every combination of wanted grads."""
    for output_mask in itertools.product((False, True), repeat=3):
        xs, ws = (x if output_mask[1] else None), (w if output_mask[0] else None)
        got = ops.masked_linear_backward(g, xs, ws, m, list(output_mask))
        want = reference.masked_linear_backward(g, x, w, m, output_mask)
        for name, a, b in zip(("grad_input", "grad_weight", "grad_bias"), got, want):
            label = f"backward {name} {output_mask} {what}"
            assert (a is None) == (b is None), label
            if a is not None:
                _close(a, b, dtype, label)
        if output_mask[1]:
            pruned = got[1][~mask]
            assert (pruned == 0).all() and not pruned.signbit().any(), f"backward {what}"


@pytest.mark.parametrize("k,n,batch", [(341, 300, 13), (341, 10, 130)])  # BLAS; narrow (fp32)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_masked_linear_non_contiguous(dtype, k, n, batch):
    gen = _gen(1)
    x = torch.randn(k, batch, generator=gen).to(dtype).t()  # transposed
    x_sliced = torch.randn(batch, 2 * k, generator=gen).to(dtype)[:, ::2]  # stride 2
    w = (torch.randn(n, 2 * k, generator=gen) / k**0.5).to(dtype)[:, :k]  # row-sliced weight
    b = torch.randn(2 * n, generator=gen).to(dtype)[::2]
    g_bcast = torch.randn(1, n, generator=gen).to(dtype).expand(batch, n)  # stride 0, as y.sum()
    g_t = torch.randn(n, batch, generator=gen).to(dtype).t()
    mask = _mask((n, k), 0.5, gen)
    for m in _forms(mask).values():
        for xi in (x, x_sliced):
            _close(
                ops.masked_linear(xi, w, m, b),
                reference.masked_linear(xi, w, m, b),
                dtype,
                "forward",
            )
        for g in (g_bcast, g_t):
            _check_backward(g, x_sliced, w, m, mask, dtype, "non-contiguous")
            _close(
                ops.masked_linear_grad_input(g, w, m),
                reference.masked_linear_grad_input(g, w, m),
                dtype,
                "grad_input",
            )
            _close(
                ops.masked_linear_grad_weight(g, x_sliced, m),
                reference.masked_linear_grad_weight(g, x_sliced, m),
                dtype,
                "grad_weight",
            )
        m_nc = m.t().contiguous().t()  # a non-contiguous mask of the right shape
        _close(
            ops.masked_linear(x, w, m_nc, b),
            reference.masked_linear(x, w, m_nc, b),
            dtype,
            "non-contiguous mask",
        )


def test_masked_linear_1d_input():
    gen = _gen(8)
    x, w, b = torch.randn(41, generator=gen), torch.randn(9, 41, generator=gen), torch.randn(9)
    g = torch.randn(9, generator=gen)
    mask = _mask((9, 41), 0.5, gen)
    for m in _forms(mask).values():
        y = ops.masked_linear(x, w, m, b)
        assert y.shape == (9,)
        _close(y, reference.masked_linear(x, w, m, b), torch.float32, "1-D forward")
        gi = ops.masked_linear_grad_input(g, w, m)
        _close(gi, reference.masked_linear_grad_input(g, w, m), torch.float32, "1-D grad_input")
        gw = ops.masked_linear_grad_weight(g, x, m)
        _close(gw, reference.masked_linear_grad_weight(g, x, m), torch.float32, "1-D grad_weight")
        _check_backward(g, x, w, m, mask, torch.float32, "1-D")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_masked_linear_backward_large_layer(dtype):
    """A layer above the serial threshold: both products split into panels, all in one region."""
    gen = _gen(9)
    k, n, batch = 2051, 300, 40  # 24.6M multiply-adds
    x = torch.randn(batch, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    g = torch.randn(batch, n, generator=gen).to(dtype)
    mask = _mask((n, k), 0.5, gen)
    for form, m in _forms(mask).items():
        _check_backward(g, x, w, m, mask, dtype, form)


def test_masked_linear_backward_empty_and_errors():
    w, x, g = torch.randn(9, 41), torch.randn(0, 41), torch.randn(0, 9)
    mask = _mask((9, 41), 0.5, _gen(10))
    gi, gw, gb = ops.masked_linear_backward(g, x, w, mask, [True, True, True])
    assert gi.shape == (0, 41) and torch.equal(gw, torch.zeros(9, 41))
    assert torch.equal(gb, torch.zeros(9))
    gi, gw, gb = ops.masked_linear_backward(
        torch.randn(3, 0),
        None,
        torch.randn(0, 5),
        torch.ones(0, 5, dtype=torch.bool),
        [True, False, True],
    )
    assert torch.equal(gi, torch.zeros(3, 5)) and gw is None and gb.shape == (0,)
    with pytest.raises(RuntimeError, match="weight: required for grad_input"):
        ops.masked_linear_backward(g, x, None, mask, [True, False, False])
    with pytest.raises(RuntimeError, match="input: required for grad_weight"):
        ops.masked_linear_backward(g, None, w, mask, [False, True, False])
    with pytest.raises(RuntimeError, match="input: expected last dimension"):
        ops.masked_linear_backward(
            torch.randn(3, 9), torch.randn(3, 42), w, reference.pack_mask(mask), [True, True, False]
        )


def test_grad_weight_exact_zero_next_to_inf_nan():
    gen = _gen(2)
    x = torch.randn(6, 41, generator=gen)
    g = torch.randn(6, 9, generator=gen)
    g[0, 0], g[1, 3] = float("inf"), float("nan")
    mask = _mask((9, 41), 0.5, gen)
    for m in _forms(mask).values():
        gw = ops.masked_linear_grad_weight(g, x, m)
        assert (gw[~mask] == 0).all() and not gw[~mask].signbit().any()
        assert not torch.isfinite(gw[0][mask[0]]).all()  # the inf row really is inf/NaN


def test_autograd_matches_reference():
    gen = _gen(3)
    x = torch.randn(2, 5, 41, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 41, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = _mask((9, 41), 0.5, gen)
    gy = torch.randn(2, 5, 9, generator=gen, dtype=torch.float64)
    for m in _forms(mask).values():
        grads = torch.autograd.grad(sparse_lottery.ops.masked_linear(x, w, m, b), (x, w, b), gy)
        ref = torch.autograd.grad(reference.masked_linear(x, w, m, b), (x, w, b), gy)
        for got, want in zip(grads, ref):
            torch.testing.assert_close(got, want)


APPLY_SHAPES = [(), (0,), (7,), (1000,), (3, 5), (4, 3, 5), (2, 0, 3), (9, 41), (33, 129)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_apply_mask(dtype):
    gen = _gen(4)
    for shape, density in itertools.product(APPLY_SHAPES, DENSITIES):
        t = torch.randn(shape, generator=gen).to(dtype)
        mask = _mask(shape, density, gen)
        for form, m in _forms(mask).items():
            out = ops.apply_mask(t, m)
            assert torch.equal(out, reference.apply_mask(t, m)), (shape, density, form)
            assert not out.signbit()[~mask].any()
    t = torch.randn(41, 9, generator=gen).to(dtype).t()  # non-contiguous tensor
    mask = _mask((9, 41), 0.5, gen)
    for m in _forms(mask).values():
        assert torch.equal(ops.apply_mask(t, m), reference.apply_mask(t, m))
    t = torch.full((3, 17), float("nan")).to(dtype)
    mask = _mask((3, 17), 0.5, gen)
    assert (ops.apply_mask(t, reference.pack_mask(mask))[~mask] == 0).all()


def test_apply_masks_():
    gen = _gen(5)
    base = torch.randn(41, 9, generator=gen)
    tensors = [
        torch.randn(300, 1000, generator=gen),
        torch.randn((), generator=gen, dtype=torch.float64),
        torch.randn(0, 3, generator=gen),
        torch.randn(7, generator=gen).to(torch.bfloat16),
        torch.randn(4, 3, 5, generator=gen).to(torch.float16),
        base.t(),  # non-contiguous view: the base must change
        torch.randn(100000, generator=gen).to(torch.float64),
    ]
    masks = [_mask(t.shape, d, gen) for t, d in zip(tensors, [0.5, 0.0, 0.5, 0.1, 1.0, 0.5, 0.3])]
    masks = [m if i % 2 else reference.pack_mask(m) for i, m in enumerate(masks)]
    expected = [t.clone() for t in tensors]
    reference.apply_masks_(expected, masks)
    ops.apply_masks_(tensors, masks)
    for i, (got, want) in enumerate(zip(tensors, expected)):
        assert torch.equal(got, want), i
    assert torch.equal(base.t(), expected[5])


@pytest.mark.parametrize(
    "shape",
    [
        (),
        (0,),
        (1,),
        (7,),
        (8,),
        (9,),
        (1000,),
        (3, 5),
        (4, 3, 5),
        (2, 0, 3),
        (5, 0),
        (300, 1000),
        (31, 65),
        (2, 3, 37),
    ],
    ids=str,
)
def test_pack_unpack(shape):
    gen = _gen(6)
    for density in DENSITIES:
        mask = _mask(shape, density, gen)
        packed = ops.pack_mask(mask)
        assert packed.dtype == torch.uint8
        assert torch.equal(packed, reference.pack_mask(mask))  # padding bits zero too
        assert torch.equal(ops.unpack_mask(packed, list(shape)), mask)
    mask = _mask(shape, 0.5, gen)
    if mask.dim() == 2:
        assert torch.equal(ops.pack_mask(mask.t().contiguous().t()), reference.pack_mask(mask))
    packed = reference.pack_mask(mask)
    if packed.numel():
        noisy = packed | (~reference.pack_mask(torch.ones(shape, dtype=torch.bool)))
        assert torch.equal(ops.unpack_mask(noisy, list(shape)), mask)  # padding bits ignored


def test_errors_name_the_argument():
    w, x = torch.randn(9, 41), torch.randn(3, 41)
    with pytest.raises(RuntimeError, match="mask"):
        ops.masked_linear(x, w, torch.ones(9, 40, dtype=torch.bool), None)
    with pytest.raises(RuntimeError, match="mask"):
        ops.masked_linear(x, w, torch.ones(9, 5, dtype=torch.uint8), None)
    with pytest.raises(RuntimeError, match="input"):
        ops.masked_linear(torch.randn(3, 42), w, torch.ones(9, 41, dtype=torch.bool), None)
    with pytest.raises(RuntimeError, match="bias"):
        ops.masked_linear(x, w, torch.ones(9, 41, dtype=torch.bool), torch.randn(8))
    with pytest.raises(RuntimeError, match="grad_output"):
        ops.masked_linear_grad_input(torch.randn(3, 8), w, torch.ones(9, 41, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="packed"):
        ops.unpack_mask(torch.zeros(9, 5, dtype=torch.uint8), [9, 41])
    with pytest.raises(RuntimeError, match="mask"):
        ops.pack_mask(torch.ones(3, 3))
    with pytest.raises(RuntimeError, match="tensors"):
        ops.apply_masks_([torch.ones(3, dtype=torch.int32)], [torch.ones(3, dtype=torch.bool)])


_SMALL_PANELS = """
import torch, sparse_lottery
from sparse_lottery import reference
torch.set_num_threads({threads})
ops, gen = torch.ops.sparse_lottery, torch.Generator().manual_seed(7)
for k, n in ((1003, 77), (41, 300)):
    x, w = torch.randn(33, k, generator=gen), torch.randn(n, k, generator=gen)
    b, g = torch.randn(n, generator=gen), torch.randn(33, n, generator=gen)
    mask = torch.rand(n, k, generator=gen) < 0.5
    for m in (mask, reference.pack_mask(mask)):
        for got, want in (
            (ops.masked_linear(x, w, m, b), reference.masked_linear(x, w, m, b)),
            (ops.masked_linear_grad_input(g, w, m), reference.masked_linear_grad_input(g, w, m)),
            (ops.masked_linear_grad_weight(g, x, m), reference.masked_linear_grad_weight(g, x, m)),
            *zip(ops.masked_linear_backward(g, x, w, m, [True, True, True]),
                 reference.masked_linear_backward(g, x, w, m, [True, True, True])),
        ):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_many_small_panels(threads):
    """Tiny panels (SPARSE_LOTTERY_CPU_PANEL_KB=1, read once per process): many full and partial
    panels, serial (1 thread) and dynamically scheduled (2 threads)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, SPARSE_LOTTERY_CPU_PANEL_KB="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _SMALL_PANELS.format(threads=threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_benchmark_quick(tmp_path):
    """The benchmark's smoke run works end to end and writes its JSON and Markdown."""
    import json
    import os

    from conftest import load_benchmark

    out = str(tmp_path / "quick")
    assert load_benchmark("masked_linear").main(["--quick", "--rounds", "2", "--out", out]) == 0
    with open(out + ".json") as f:
        result = json.load(f)
    assert result["rows"] and all(r["ms"]["fused_packed"] > 0 for r in result["rows"])
    assert os.path.getsize(out + ".md") > 0
