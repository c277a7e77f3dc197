"""sparse_conv2d and its backward (the direct sparse convolution of `SparseConv2d`) against the
pure-PyTorch reference (F.conv2d of the dense masked weight), opcheck, gradcheck, and the errors
of bad input."""

import json

import pytest
import torch
from conftest import DEVICES, assert_close_to_reference, load_benchmark

import sparse_lottery as sl
from sparse_lottery import reference
from sparse_lottery.sparse import SparseLayout

OPS = torch.ops.sparse_lottery
DTYPES = [torch.float32, torch.float64, torch.bfloat16]

# (batch, in, out, H, W, kernel_size, stride, padding, dilation, density): odd shapes, strides,
# paddings and dilations, 1×1 and 5×3 kernels, empty and dense layers.
CASES = [
    (3, 5, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 0.5),
    (3, 5, 7, 9, 6, (3, 3), (1, 1), (0, 0), (1, 1), 0.05),
    (3, 5, 7, 9, 6, (3, 3), (2, 2), (1, 1), (1, 1), 0.5),
    (3, 5, 7, 9, 6, (3, 3), (1, 2), (2, 1), (2, 2), 1.0),
    (2, 5, 7, 9, 6, (3, 3), (1, 1), (2, 2), (1, 1), 0.0),
    (2, 4, 6, 7, 8, (1, 1), (1, 1), (0, 0), (1, 1), 0.5),
    (2, 4, 6, 7, 8, (1, 1), (2, 1), (2, 1), (1, 1), 1.0),
    (2, 3, 4, 11, 7, (5, 3), (1, 1), (2, 1), (1, 1), 0.5),
    (2, 3, 4, 11, 7, (5, 3), (2, 2), (0, 2), (2, 1), 0.05),
    (16, 16, 16, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 0.1),
    (1, 2, 3, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), 1.0),
    (0, 5, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 0.5),
    (2, 5, 0, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 0.5),
]


def _problem(case, dtype, device, seed=0):
    batch, cin, cout, h, w, ks, stride, padding, dilation, density = case
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(cout, cin * ks[0] * ks[1], generator=g) < density
    weight = torch.randn(cout, cin * ks[0] * ks[1], generator=g)
    x = torch.randn(batch, cin, h, w, generator=g)
    bias = torch.randn(cout, generator=g)
    layout = SparseLayout.from_mask(mask.to(device))
    to = dict(device=device, dtype=dtype)
    geometry = [list(ks), list(stride), list(padding), list(dilation)]
    out_hw = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip((h, w), padding, dilation, ks, stride)
    ]
    grad = torch.randn(batch, cout, *out_hw, generator=g)
    return (
        layout,
        layout.values_of(weight.to(**to)),
        x.to(**to),
        bias.to(**to),
        grad.to(**to),
        geometry,
    )


def _as64(args):
    return [
        a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_backward_match_reference(case, dtype, device):
    layout, values, x, bias, grad, geometry = _problem(case, dtype, device)
    for b in (bias, None):
        args = (x, values, *layout, b, *geometry)
        y = OPS.sparse_conv2d(*args)
        ref64 = reference.sparse_conv2d(*_as64(args))
        assert_close_to_reference(y, ref64, reference.sparse_conv2d(*args), f"forward {case}")
    need = [True, True, True]
    args = (grad, x, values, *layout, *geometry, need)
    got = OPS.sparse_conv2d_backward(*args)
    ref64 = reference.sparse_conv2d_backward(*_as64(args))
    same = reference.sparse_conv2d_backward(*args)
    for what, a, r64, rs in zip(("d_input", "d_values", "d_bias"), got, ref64, same):
        assert_close_to_reference(a, r64.to(a.dtype).double(), rs, f"{what} {case} {dtype}")
    for need in ([True, False, False], [False, True, False], [False, False, True]):
        part = OPS.sparse_conv2d_backward(grad, x, values, *layout, *geometry, need)
        for wanted, a, full in zip(need, part, got):
            assert (a is not None) == wanted
            if wanted:
                torch.testing.assert_close(a, full, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=str)
def test_batches_of_several_chunks_match_reference(stride, dtype):
    """The CPU kernel convolves a batch in chunks of ~4 MiB of grids: 8 → 8 channels at 32×32
    take 70 KB per image forward (x and y planes) and 105 KB backward (dy, dx, x), so 130 images
    run as chunks of 60, 60, 10 forward and 40, 40, 40, 10 backward; d_values sums over them."""
    case = (130, 8, 8, 32, 32, (3, 3), stride, (1, 1), (1, 1), 0.2)
    layout, values, x, bias, grad, geometry = _problem(case, dtype, "cpu", seed=1)
    x = x.contiguous(memory_format=torch.channels_last)
    args = (x, values, *layout, bias, *geometry)
    ref64 = reference.sparse_conv2d(*_as64(args))
    assert_close_to_reference(OPS.sparse_conv2d(*args), ref64, reference.sparse_conv2d(*args))
    args = (grad, x, values, *layout, *geometry, [True, True, False])
    got = OPS.sparse_conv2d_backward(*args)
    ref64 = reference.sparse_conv2d_backward(*_as64(args))
    same = reference.sparse_conv2d_backward(*args)
    for what, a, r64, rs in zip(("d_input", "d_values"), got, ref64, same):
        assert_close_to_reference(a, r64.to(a.dtype).double(), rs, f"{what} {stride} {dtype}")


@pytest.mark.parametrize("device", DEVICES)
def test_layer_gradients_flow_to_input_values_and_bias(device):
    torch.manual_seed(0)
    conv = sl.nn.MaskedConv2d(5, 7, 3, padding=1, device=device)
    conv.set_mask(torch.rand(conv.weight.shape, device=device) < 0.3)
    sparse = sl.nn.SparseConv2d.from_masked(conv)
    x = torch.randn(3, 5, 9, 6, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    sparse(x).square().sum().backward()
    conv(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sparse.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-4)
    dense = sparse.layout.dense(sparse.values.grad).reshape(conv.weight.shape)
    torch.testing.assert_close(dense, conv.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    case = (4, 5, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 0.3)
    layout, values, x, bias, grad, geometry = _problem(case, torch.float32, device)
    x_nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels last
    g_nc = grad.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_nc.is_contiguous() and not g_nc.is_contiguous()
    y = OPS.sparse_conv2d(x_nc, values, *layout, bias, *geometry)
    torch.testing.assert_close(y, reference.sparse_conv2d(x, values, *layout, bias, *geometry))
    need = [True, True, True]
    got = OPS.sparse_conv2d_backward(g_nc, x_nc, values, *layout, *geometry, need)
    ref = reference.sparse_conv2d_backward(grad, x, values, *layout, *geometry, need)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_opcheck():
    case = (2, 3, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 0.4)
    layout, values, x, bias, grad, geometry = _problem(case, torch.float32, "cpu")
    for args in (
        (x.requires_grad_(), values.requires_grad_(), *layout, bias.requires_grad_(), *geometry),
        (x.detach(), values.detach(), *layout, None, [3, 3], [2, 2], [0, 0], [1, 1]),
    ):
        torch.library.opcheck(OPS.sparse_conv2d.default, args)
    for need in ([True, True, True], [True, False, False]):
        args = (grad, x.detach(), values.detach(), *layout, *geometry, need)
        torch.library.opcheck(OPS.sparse_conv2d_backward.default, args)


def test_gradcheck_float64():
    case = (2, 3, 4, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 0.4)
    layout, values, x, bias, _, geometry = _problem(case, torch.float64, "cpu")
    for t in (values, x, bias):
        t.requires_grad_()

    def conv(x, v, b):
        return sl.sparse.sparse_conv2d(x, v, layout, b, *geometry)

    assert torch.autograd.gradcheck(conv, (x, values, bias))
    strided = (2, 3, 4, 7, 6, (3, 2), (2, 1), (2, 0), (1, 2), 0.5)
    layout, values, x, bias, _, geometry = _problem(strided, torch.float64, "cpu")
    for t in (values, x, bias):
        t.requires_grad_()
    assert torch.autograd.gradcheck(conv, (x, values, bias))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "case",
    [
        (2, 3, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 0.4),
        (2, 3, 4, 7, 6, (3, 2), (2, 1), (2, 0), (1, 2), 0.5),
    ],
    ids=["same", "strided"],
)
def test_double_backward_matches_reference(case, device):
    """create_graph differentiates through the sparse convolution's gradients: gradient
    penalties (of the input's and of the values' gradient) match the dense masked reference."""
    layout, values, x, bias, _, geometry = _problem(case, torch.float32, device, seed=4)
    for t in (values, x, bias):
        t.requires_grad_()
    weight_shape = (case[2], case[1], *case[5])
    stride, padding, dilation = geometry[1:]

    def sparse(x):
        return sl.sparse.sparse_conv2d(x, values, layout, bias, *geometry)

    def dense(x):
        w = layout.dense(values).view(weight_shape)
        return torch.nn.functional.conv2d(x, w, bias, stride, padding, dilation)

    for wrt in (x, values):
        got, want = [], []
        for f, out in ((sparse, got), (dense, want)):
            (g,) = torch.autograd.grad(torch.tanh(f(x)).sum(), wrt, create_graph=True)
            out.extend(torch.autograd.grad(g.square().sum(), [x, values, bias], allow_unused=True))
        for a, b in zip(got, want):
            if b is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gradgradcheck_float64():
    case = (2, 2, 3, 5, 4, (3, 2), (2, 1), (1, 1), (1, 2), 0.5)
    layout, values, x, bias, grad, geometry = _problem(case, torch.float64, "cpu", seed=5)
    for t in (values, x, bias, grad):
        t.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x, v, b: sl.sparse.sparse_conv2d(x, v, layout, b, *geometry), (x, values, bias)
    )

    def backward(grad, x, v):
        need = [True, True, True]
        return OPS.sparse_conv2d_backward(grad, x, v, *layout, *geometry, need)

    assert torch.autograd.gradcheck(backward, (grad, x, values))
    assert torch.autograd.gradgradcheck(backward, (grad, x, values))


def test_compile_fullgraph():
    case = (2, 3, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 0.4)
    layout, values, x, bias, _, geometry = _problem(case, torch.float32, "cpu")
    x.requires_grad_()

    def conv(x):
        return sl.sparse.sparse_conv2d(x, values, layout, bias, *geometry)

    out = torch.compile(conv, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, conv(x))
    (gx,) = torch.autograd.grad(out.sum(), [x])
    (ex,) = torch.autograd.grad(conv(x).sum(), [x])
    torch.testing.assert_close(gx, ex)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kernel", ["cpp", "fake"])
def test_errors_name_the_argument(kernel):
    case = (2, 3, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 0.4)
    layout, values, x, bias, grad, geometry = _problem(case, torch.float32, "cpu")
    ks, stride, padding, dilation = geometry

    def call(*args):
        if kernel == "fake":
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                return OPS.sparse_conv2d(*args)
        return OPS.sparse_conv2d(*args)

    with pytest.raises(ValueError, match=r"input: expected a 4-D tensor"):
        call(x[0], values, *layout, bias, *geometry)
    with pytest.raises(ValueError, match=r"input: expected channels·kh·kw = in_features=27"):
        call(x[:, :2], values, *layout, bias, *geometry)
    with pytest.raises(RuntimeError, match=r"input: expected dtype torch.float32"):
        call(x.double(), values, *layout, bias, *geometry)
    with pytest.raises(ValueError, match=r"input: expected channels·kh·kw"):
        call(x, values, *layout, bias, [3, 1], stride, padding, dilation)
    with pytest.raises(ValueError, match=r"stride: expected values >= 1"):
        call(x, values, *layout, bias, ks, [0, 1], padding, dilation)
    with pytest.raises(ValueError, match=r"padding: expected values >= 0"):
        call(x, values, *layout, bias, ks, stride, [-1, 0], dilation)
    with pytest.raises(ValueError, match=r"dilation: expected values >= 1"):
        call(x, values, *layout, bias, ks, stride, padding, [1, 0])
    with pytest.raises(ValueError, match=r"input: height and width \[6, 5\]"):
        call(x, values, *layout, bias, ks, stride, [0, 0], [4, 1])
    with pytest.raises(ValueError, match=r"bias: expected shape \[4\] \(out_channels\)"):
        call(x, values, *layout, bias[:3], *geometry)
    with pytest.raises(TypeError, match=r"col_indices: expected dtype torch.int32"):
        call(x, values, layout.row_offsets, layout.col_indices.long(), *layout[2:], bias, *geometry)


def test_backward_errors():
    case = (2, 3, 4, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 0.4)
    layout, values, x, bias, grad, geometry = _problem(case, torch.float32, "cpu")
    need = [True, True, True]
    with pytest.raises(ValueError, match=r"grad_output: expected shape \[2, 4, 6, 5\]"):
        OPS.sparse_conv2d_backward(grad[:, :3], x, values, *layout, *geometry, need)
    with pytest.raises(ValueError, match=r"grad_output: expected shape \[2, 4, 5, 5\]"):
        OPS.sparse_conv2d_backward(grad, x[:, :, :5], values, *layout, *geometry, need)
    with pytest.raises(RuntimeError, match=r"grad_output: expected dtype torch.float32"):
        OPS.sparse_conv2d_backward(grad.double(), x, values, *layout, *geometry, need)


def test_benchmark_quick(tmp_path):
    """The benchmark's smoke run times both methods and writes its JSON and Markdown."""
    out = str(tmp_path / "quick")
    assert load_benchmark("sparse_conv").main(["--quick", "--batch", "2", "--out", out]) == 0
    with open(out + ".json") as f:
        result = json.load(f)
    assert result["rows"] and all(min(r["ms"].values()) > 0 for r in result["rows"])
    assert all(r["speedup"] > 0 for r in result["rows"])
    with open(out + ".md") as f:
        assert "| 64→64 @8×8 | 0.95 |" in f.read()
