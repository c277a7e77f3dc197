"""Every op × device × backend × dtype against the pure-PyTorch reference, plus opcheck,
gradcheck, torch.compile and the errors bad input must raise."""

import contextlib

import pytest
import torch
from conftest import DEVICES, assert_close_to_reference

import sparse_lottery as sl
from sparse_lottery import _registry, reference
from sparse_lottery.ops import packed_shape

OPS = torch.ops.sparse_lottery


def _targets():
    """(device, backend) pairs to test: the CPU's selected backend and every CUDA backend,
    the CUDA ones skipped with the reason where they cannot run."""
    cpu = _registry.selected_backend("masked_linear", "cpu")
    pairs = [pytest.param(("cpu", cpu), id=f"cpu-{cpu}")]
    for backend in ("cpp", "triton"):
        usable = "cuda" in DEVICES and _registry.provides(backend, "masked_linear", "cuda")
        why = "no CUDA GPU visible" if "cuda" not in DEVICES else f"{backend} not available"
        pairs.append(
            pytest.param(
                ("cuda", backend),
                id=f"cuda-{backend}",
                marks=pytest.mark.skipif(not usable, reason=why),
            )
        )
    return pairs


TARGETS = _targets()


@contextlib.contextmanager
def using(device, backend):
    if device == "cuda":
        sl.set_backend(backend)
    try:
        yield
    finally:
        if device == "cuda":
            sl.set_backend("cpp", "triton", "reference")


@pytest.fixture(params=TARGETS)
def target(request):
    device, backend = request.param
    with using(device, backend):
        yield device


# (batch shape, in_features K, out_features N): odd sizes on purpose, empty batches included.
SHAPES = [
    ((9,), 41, 33),
    ((1,), 1, 1),
    ((2, 3), 17, 5),
    ((0,), 13, 7),
    ((4, 0), 8, 3),
    ((37,), 341, 19),
    ((5,), 1000, 9),
    ((129,), 70, 130),
]


def make_mask(shape, density, device, packed, gen=None):
    keep = torch.rand(shape, generator=gen, device="cpu") < density
    keep = keep.to(device)
    return sl.pack_mask(keep) if packed else keep, keep


def sample_inputs(device, dtype, requires_grad=False, bias=True):
    """Fresh random masked-linear inputs: odd shapes, both mask forms, non-contiguous variants."""
    for i, (batch, k, n) in enumerate(SHAPES):
        for packed in (True, False):
            density = (0.0, 0.3, 1.0, 0.7)[i % 4] if packed else 0.5
            x = torch.randn(*batch, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype)
            if i % 3 == 1:  # non-contiguous input and weight
                x = torch.randn(*batch, 2 * k, device=device, dtype=dtype)[..., ::2]
                w = torch.randn(k, n, device=device, dtype=dtype).t()
            b = torch.randn(n, device=device, dtype=dtype) if bias and i % 2 == 0 else None
            mask, keep = make_mask((n, k), density, device, packed)
            for t in (x, w, b):
                if t is not None:
                    t.requires_grad_(requires_grad)
            yield x, w, mask, b, keep


def _ref(fn, *args, dtype):
    return fn(*[a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args])


# --------------------------------------------------------------------------- correctness
def test_masked_linear_matches_reference(target, dtype):
    for x, w, mask, b, keep in sample_inputs(target, dtype):
        out = sl.ops.masked_linear(x, w, mask, b)
        ref64 = _ref(reference.masked_linear, x, w, keep, b, dtype=torch.float64)
        ref = _ref(reference.masked_linear, x, w, keep, b, dtype=dtype)
        assert_close_to_reference(
            out, ref64, ref, f"masked_linear {tuple(x.shape)}x{tuple(w.shape)}"
        )


def test_masked_linear_gradients_match_reference(target, dtype):
    for x, w, mask, b, keep in sample_inputs(target, dtype, requires_grad=True):
        grad = torch.randn(*x.shape[:-1], w.shape[0], device=target, dtype=dtype)
        gx, gw, *gb = torch.autograd.grad(
            sl.ops.masked_linear(x, w, mask, b), [x, w] + ([b] if b is not None else []), grad
        )
        for name, got, fn, args in (
            ("grad_input", gx, reference.masked_linear_grad_input, (grad, w, keep)),
            ("grad_weight", gw, reference.masked_linear_grad_weight, (grad, x, keep)),
        ):
            ref64 = _ref(fn, *args, dtype=torch.float64)
            assert_close_to_reference(got, ref64, _ref(fn, *args, dtype=dtype), name)
        assert torch.all(gw[~keep] == 0), "grad_weight must be exactly zero where pruned"
        if gb:
            torch.testing.assert_close(gb[0], grad.reshape(-1, w.shape[0]).sum(0))


def test_masked_linear_backward_matches_reference(target, dtype):
    """The one-call backward, for every combination of wanted gradients."""
    masks = [(True, True, True), (True, False, False), (False, True, True), (False, False, True)]
    for x, w, mask, _, keep in sample_inputs(target, dtype):
        grad = torch.randn(*x.shape[:-1], w.shape[0], device=target, dtype=dtype)
        for output_mask in masks:
            xs = x if output_mask[1] else None
            ws = w if output_mask[0] else None
            got = OPS.masked_linear_backward(grad, xs, ws, mask, list(output_mask))
            for i, (name, fn, args) in enumerate(
                (
                    ("grad_input", reference.masked_linear_grad_input, (grad, w, keep)),
                    ("grad_weight", reference.masked_linear_grad_weight, (grad, x, keep)),
                )
            ):
                if not output_mask[i]:
                    assert got[i] is None, name
                    continue
                ref64 = _ref(fn, *args, dtype=torch.float64)
                assert_close_to_reference(got[i], ref64, _ref(fn, *args, dtype=dtype), name)
            if output_mask[1]:
                assert torch.all(got[1][~keep] == 0), (
                    "grad_weight must be exactly zero where pruned"
                )
            if output_mask[2]:
                torch.testing.assert_close(got[2], grad.reshape(-1, w.shape[0]).sum(0))
            else:
                assert got[2] is None


def test_output_ignores_pruned_weights(target):
    x, w = torch.randn(6, 30, device=target), torch.randn(20, 30, device=target)
    mask, keep = make_mask((20, 30), 0.4, target, packed=True)
    garbage = torch.where(keep, w, torch.full_like(w, 1e30))
    torch.testing.assert_close(
        sl.ops.masked_linear(x, w, mask), sl.ops.masked_linear(x, garbage, mask)
    )


def test_pack_unpack_round_trip(target):
    for shape in [(), (1,), (7,), (3, 9), (5, 8), (4, 3, 3, 3), (0, 5), (6, 0)]:
        keep = torch.rand(shape, device=target) < 0.5
        packed = sl.pack_mask(keep)
        assert packed.dtype == torch.uint8 and tuple(packed.shape) == packed_shape(shape)
        assert torch.equal(packed, reference.pack_mask(keep)), f"pack {shape}"
        assert torch.equal(sl.unpack_mask(packed, shape), keep), f"unpack {shape}"


def test_pack_mask_padding_bits_are_zero(target):
    packed = sl.pack_mask(torch.ones(3, 13, dtype=torch.bool, device=target))
    assert packed[:, 1].tolist() == [0b11111] * 3


def test_apply_mask_matches_reference(target, dtype):
    for shape in [(5, 7), (3, 4, 3, 3), (11,), (0, 4)]:
        t = torch.randn(shape, device=target, dtype=dtype)
        for packed in (True, False):
            mask, keep = make_mask(shape, 0.5, target, packed)
            out = sl.apply_mask(t, mask)
            assert torch.equal(out, torch.where(keep, t, torch.zeros_like(t)))


def test_apply_masks_in_place_many_tensors(target):
    shapes = [(300, 100), (7,), (4, 3, 5, 5), (2, 2), (0, 3), (1000, 3)]
    dtypes = [
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float32,
        torch.float32,
        torch.float16,
    ]
    tensors = [torch.randn(s, device=target, dtype=d) for s, d in zip(shapes, dtypes)]
    tensors.append(torch.randn(9, 6, device=target)[:, ::2])  # non-contiguous view
    expected, masks = [], []
    for i, t in enumerate(tensors):
        mask, keep = make_mask(t.shape, 0.5, target, packed=i % 2 == 0)
        masks.append(mask)
        expected.append(torch.where(keep, t, torch.zeros_like(t)))
    base = tensors[-1]._base
    sl.apply_masks_(tensors, masks)
    for t, e in zip(tensors, expected):
        assert torch.equal(t, e)
    assert tensors[-1]._base is base, "the view must be updated in place"


def test_masked_conv_matches_reference(target, dtype):
    cases = [
        (
            sl.ops.masked_conv2d,
            reference.masked_conv2d,
            (2, 6, 9, 11),
            (8, 3, 3, 3),
            dict(stride=2, padding=1, dilation=1, groups=2),
        ),
        (sl.ops.masked_conv2d, reference.masked_conv2d, (0, 3, 5, 5), (4, 3, 1, 1), {}),
        (
            sl.ops.masked_conv1d,
            reference.masked_conv1d,
            (3, 4, 17),
            (5, 4, 5),
            dict(padding=2, dilation=2),
        ),
    ]
    for op, ref_fn, xs, ws, kw in cases:
        x = torch.randn(xs, device=target, dtype=dtype, requires_grad=True)
        w = torch.randn(ws, device=target, dtype=dtype, requires_grad=True)
        b = torch.randn(ws[0], device=target, dtype=dtype, requires_grad=True)
        mask, keep = make_mask(ws, 0.5, target, packed=True)
        out = op(x, w, mask, b, **kw)
        xd, wd, bd = x.detach(), w.detach(), b.detach()
        ref64 = ref_fn(xd.double(), wd.double(), keep, bd.double(), **kw)
        ref = ref_fn(xd, wd, keep, bd, **kw)
        assert_close_to_reference(out, ref64, ref, "masked_conv")
        out.backward(torch.randn_like(out))
        assert torch.all(w.grad[~keep] == 0)


# Output maps of at most 4 positions: on the CPU these take the im2col form (masked GEMM panels;
# csrc/cpu/conv_gemm.h). (input shape, weight shape, stride, padding, dilation)
TINY_MAPS = [
    ((3, 5, 2, 2), (7, 5, 3, 3), 1, 1, 1),  # VGG's last block: 2×2 maps, padding 1
    ((2, 4, 3, 3), (6, 4, 3, 3), 2, 1, 1),  # stride 2 → 2×2
    ((4, 3, 1, 1), (5, 3, 3, 3), 1, 1, 1),  # 1×1 map
    ((2, 3, 5, 4), (4, 3, 3, 2), 2, 0, 1),  # non-square kernel and map → 2×2
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1, 3),  # dilation 3 → 1×1
]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
@pytest.mark.parametrize("xs, ws, stride, padding, dilation", TINY_MAPS)
def test_masked_conv2d_tiny_maps(xs, ws, stride, padding, dilation, packed, dtype):
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(xs[0], xs[2], xs[3], xs[1], dtype=dtype).permute(0, 3, 1, 2)  # not contiguous
    x.requires_grad_()
    w = torch.randn(ws, dtype=dtype, requires_grad=True)
    b = torch.randn(ws[0], dtype=dtype, requires_grad=True)
    mask, keep = make_mask(ws, 0.5, "cpu", packed=packed)
    out = sl.ops.masked_conv2d(x, w, mask, b, **kw)
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    ref64 = reference.masked_conv2d(xd.double(), wd.double(), keep, bd.double(), **kw)
    assert_close_to_reference(out, ref64, reference.masked_conv2d(xd, wd, keep, bd, **kw), "out")
    assert out.stride() == torch.nn.functional.conv2d(xd, wd, bd, **kw).stride()  # same layout
    with torch.no_grad():
        assert_close_to_reference(sl.ops.masked_conv2d(x, w, mask, b, **kw), ref64, out, "no_grad")
    gy = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), gy)
    x64, w64, b64 = (t.double().requires_grad_() for t in (xd, wd, bd))
    refs = torch.autograd.grad(
        reference.masked_conv2d(x64, w64, keep, b64, **kw), (x64, w64, b64), gy.double()
    )
    for name, g, r in zip(("d_input", "d_weight", "d_bias"), grads, refs):
        assert_close_to_reference(g, r, g, name)
    assert torch.all(grads[1][~keep] == 0)


def test_masked_conv2d_kernel_larger_than_input_is_the_framework_error():
    """A stride-2 kernel larger than its padded input has no output positions (the im2col
    form's plan must not take it: truncating division once said 1): torch's own error."""
    x, w = torch.randn(1, 2, 2, 2), torch.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input"):
        sl.ops.masked_conv2d(x, w, torch.ones(3, 2, 3, 3, dtype=torch.bool), stride=2)


def test_masked_conv2d_tiny_maps_gradcheck():
    for xs, ws, stride, padding, dilation in TINY_MAPS:
        x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
        w = torch.randn(ws, dtype=torch.float64, requires_grad=True)
        b = torch.randn(ws[0], dtype=torch.float64, requires_grad=True)
        mask = sl.pack_mask(torch.rand(ws) < 0.5)
        geometry = dict(mask=mask, stride=stride, padding=padding, dilation=dilation)
        assert torch.autograd.gradcheck(
            lambda x, w, b, kw=geometry: sl.ops.masked_conv2d(x, w, bias=b, **kw), (x, w, b)
        )


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
def test_masked_linear_double_backward(packed):
    """Second derivatives (create_graph) reach input and weight through the mask."""
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    mask, _ = make_mask((5, 6), 0.6, "cpu", packed=packed)
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: sl.ops.masked_linear(x, w, mask, b), (x, w, b)
    )


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
@pytest.mark.parametrize(
    "op, xs, ws",
    [
        (sl.ops.masked_conv2d, (2, 3, 6, 5), (4, 3, 3, 3)),  # the framework convolution
        (sl.ops.masked_conv2d, (2, 3, 2, 2), (4, 3, 3, 3)),  # CPU: the im2col form
        (sl.ops.masked_conv1d, (2, 3, 7), (4, 3, 3)),
    ],
    ids=["conv2d", "conv2d-tiny", "conv1d"],
)
def test_masked_conv_double_backward(op, xs, ws, packed):
    """Second derivatives (create_graph) reach the weight through the mask."""
    x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ws, dtype=torch.float64, requires_grad=True)
    b = torch.randn(ws[0], dtype=torch.float64, requires_grad=True)
    mask, _ = make_mask(ws, 0.6, "cpu", packed=packed)
    assert torch.autograd.gradgradcheck(lambda x, w, b: op(x, w, mask, b, padding=1), (x, w, b))


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
def test_apply_mask_is_differentiable(packed):
    """d(tensor ⊙ mask) = grad ⊙ mask, to any order (it was once silently non-differentiable)."""
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    mask, keep = make_mask((5, 7), 0.5, "cpu", packed=packed)
    g = torch.randn(5, 7, dtype=torch.float64)
    (grad,) = torch.autograd.grad(sl.apply_mask(w, mask), w, g)
    assert torch.equal(grad, g * keep)
    assert torch.autograd.gradcheck(lambda w: sl.apply_mask(w, mask), (w,))
    assert torch.autograd.gradgradcheck(lambda w: sl.apply_mask(w, mask), (w,))


def _masked_gradient_ops(mask):
    """(name, function of (grad_output, input, weight)) for masked_linear's gradient ops."""
    return [
        ("grad_input", lambda g, x, w: OPS.masked_linear_grad_input(g, w, mask)),
        ("grad_weight", lambda g, x, w: OPS.masked_linear_grad_weight(g, x, mask)),
        ("backward", lambda g, x, w: OPS.masked_linear_backward(g, x, w, mask, [True] * 3)),
        (
            "backward-weight",
            lambda g, x, w: OPS.masked_linear_backward(g, x, None, mask, [False, True, True])[1:],
        ),
    ]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bool"])
def test_masked_gradient_ops_are_differentiable(packed):
    """masked_linear's gradient ops differentiate (twice) in grad_output, input and weight, so
    create_graph works whichever of them a caller uses."""
    mask, _ = make_mask((4, 6), 0.5, "cpu", packed=packed)
    g = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    for name, op in _masked_gradient_ops(mask):
        assert torch.autograd.gradcheck(op, (g, x, w)), name
        assert torch.autograd.gradgradcheck(op, (g, x, w)), name


def _in_place_call(op, param, mask):
    """(call, written tensors, read-only tensors) of one in-place op on `param`."""
    grad, state, state2 = (torch.randn_like(param.detach()) for _ in range(3))
    state2.abs_()
    if op == "apply_masks_":
        return lambda: OPS.apply_masks_([param], [mask]), [param], [mask]
    if op == "masked_sgd_":
        args = ([param], [grad], [state], [mask], 0.1, 0.9, 0.0, 0.0, False, False, False)
        return lambda: OPS.masked_sgd_(*args), [param, state], [grad, mask]
    args = ([param], [grad], [state], [state2], [mask], 0.1, 0.9, 0.999, 1e-8, 0.0, 1, False)
    return lambda: OPS.masked_adamw_(*args), [param, state, state2], [grad, mask]


@pytest.mark.parametrize("op", ["apply_masks_", "masked_sgd_", "masked_adamw_"])
def test_in_place_ops_count_versions_and_refuse_tensors_that_require_grad(op):
    """As torch's in-place ops: each tensor written gets a new version (so autograd refuses a
    backward through a value the op changed), and a tensor requiring grad is refused while grad
    mode is on (the op is not differentiable) instead of being changed behind autograd's back."""
    mask = torch.rand(5, 7) < 0.5
    w = torch.randn(5, 7, requires_grad=True)
    call, written, read = _in_place_call(op, w, mask)
    with pytest.raises(RuntimeError, match=rf"{op}: \w+\[0\] requires grad.*torch.no_grad"):
        call()
    before = [t._version for t in written + read]
    with torch.no_grad():
        call()
    assert [t._version for t in written + read] == [
        v + (i < len(written)) for i, v in enumerate(before)
    ]
    y = w.sin().sum()  # saves w for its backward
    with torch.no_grad():
        call()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# --------------------------------------------------------------------------- opcheck / gradcheck
def _opcheck_cases(device):
    x = torch.randn(5, 3, 12, device=device, requires_grad=True)
    w = torch.randn(7, 12, device=device, requires_grad=True)
    b = torch.randn(7, device=device, requires_grad=True)
    keep = torch.rand(7, 12, device=device) < 0.5
    packed = reference.pack_mask(keep)
    g = torch.randn(5, 3, 7, device=device)
    xc = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    wc = torch.randn(6, 2, 3, 3, device=device, requires_grad=True)
    mc = reference.pack_mask(torch.rand(6, 2, 3, 3, device=device) < 0.5)
    mt = reference.pack_mask(torch.rand(6, 4, 3, 3, device=device) < 0.5)  # 2×2 maps (im2col form)
    x1 = torch.randn(2, 4, 9, device=device, requires_grad=True)
    w1 = torch.randn(3, 4, 3, device=device, requires_grad=True)
    m1 = torch.rand(3, 4, 3, device=device) < 0.5
    layout = sl.sparse.SparseLayout.from_mask(keep)
    conv_layout = sl.sparse.SparseLayout.from_mask(torch.rand(6, 36, device=device) < 0.5)
    conv_values = torch.randn(conv_layout.nnz, device=device)  # xc: 4 channels, 3×3
    geometry = ([3, 3], [1, 1], [1, 1], [1, 1])
    return [
        (OPS.masked_linear.default, (x, w, packed, b)),
        (OPS.masked_linear.default, (x, w, keep, None)),
        (OPS.masked_linear_grad_input.default, (g, w.detach(), packed)),
        (OPS.masked_linear_grad_weight.default, (g, x.detach(), keep)),
        (
            OPS.masked_linear_backward.default,
            (g, x.detach(), w.detach(), packed, [True, True, True]),
        ),
        (OPS.masked_linear_backward.default, (g, x.detach(), None, keep, [False, True, False])),
        (OPS.masked_conv2d.default, (xc, wc, mc, None, [1, 1], [1, 1], [1, 1], 2)),
        (
            OPS.masked_conv2d.default,
            (xc[:, :, :2, :2], wc.repeat(1, 2, 1, 1), mt, b[:6], [1, 1], [1, 1], [1, 1], 1),
        ),
        (OPS.masked_conv1d.default, (x1, w1, m1, None, [2], [0], [1], 1)),
        (OPS.apply_mask.default, (w.detach(), packed)),
        (
            OPS.apply_masks_.default,
            (
                [w.detach().clone(), b.detach().clone()],
                [keep, torch.ones(7, dtype=torch.bool, device=device)],
            ),
        ),
        (OPS.pack_mask.default, (keep,)),
        (OPS.unpack_mask.default, (packed, [7, 12])),
        (
            OPS.magnitude_prune.default,
            ([w.detach(), b.detach().bfloat16()], [packed, None], [0.3], False, False),
        ),
        (OPS.magnitude_prune.default, ([w.detach(), b.detach()], [keep, None], [3, 2], True, True)),
        (OPS.random_prune.default, ([packed, keep], [0.5], False, False, 1234)),
        (
            OPS.masked_sgd_.default,
            (
                [w.detach().clone(), b.detach().clone()],
                [torch.randn_like(w), torch.randn_like(b)],
                [torch.randn_like(w), torch.randn_like(b)],
                [packed, None],
                *(0.1, 0.9, 0.0, 0.01, True, False, False),
            ),
        ),
        (
            OPS.masked_adamw_.default,
            (
                [w.detach().clone(), b.detach().clone()],
                [torch.randn_like(w), torch.randn_like(b)],
                [torch.randn_like(w), torch.randn_like(b)],
                [torch.rand_like(w), torch.rand_like(b)],
                [keep, None],
                *(0.01, 0.9, 0.999, 1e-8, 0.01, 2, False),
            ),
        ),
        (OPS.sparse_linear.default, (x, layout.values_of(w).requires_grad_(), *layout, b)),
        (OPS.sparse_linear.default, (x, layout.values_of(w), *layout, None)),
        (
            OPS.sparse_linear_backward.default,
            (g, x.detach(), layout.values_of(w), *layout, [True, True, True]),
        ),
        (
            OPS.sparse_linear_backward.default,
            (g, None, layout.values_of(w), *layout, [True, False, False]),
        ),
        (
            OPS.sparse_conv2d.default,
            (xc, conv_values, *conv_layout, None, *geometry),
        ),
        (
            OPS.sparse_conv2d_backward.default,
            (
                torch.randn(2, 6, 6, 6, device=device),
                xc.detach(),
                conv_values,
                *conv_layout,
                *geometry,
                [True, True, True],
            ),
        ),
    ]


def test_opcheck_every_op(target):
    covered = set()
    for op, args in _opcheck_cases(target):
        torch.library.opcheck(op, args)
        covered.add(op.name().split("::")[1])
    assert covered == set(sl._library.SCHEMAS), "opcheck must cover every op"


def test_gradcheck_float64():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    mask = sl.pack_mask(torch.rand(5, 6) < 0.5)
    assert torch.autograd.gradcheck(lambda x, w, b: sl.ops.masked_linear(x, w, mask, b), (x, w, b))
    xc = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    wc = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    mc = torch.rand(3, 2, 3, 3) < 0.5
    assert torch.autograd.gradcheck(
        lambda x, w: sl.ops.masked_conv2d(x, w, mc, None, stride=2, padding=1), (xc, wc)
    )
    x1 = torch.randn(2, 2, 7, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    m1 = sl.pack_mask(torch.rand(3, 2, 3) < 0.5)
    assert torch.autograd.gradcheck(lambda x, w: sl.ops.masked_conv1d(x, w, m1), (x1, w1))


# --------------------------------------------------------------------------- torch.compile
def _compile_case(name, d):
    """(function, args) exercising one op under torch.compile."""
    rand, keep = lambda *s: torch.randn(*s, device=d), lambda *s: torch.rand(*s, device=d) < 0.5
    layout = sl.sparse.SparseLayout.from_mask(keep(5, 9))
    return {
        "masked_linear": (sl.ops.masked_linear, (rand(6, 10), rand(4, 10), keep(4, 10))),
        "masked_linear_grad_input": (
            OPS.masked_linear_grad_input,
            (rand(6, 4), rand(4, 10), keep(4, 10)),
        ),
        "masked_linear_grad_weight": (
            OPS.masked_linear_grad_weight,
            (rand(6, 4), rand(6, 10), keep(4, 10)),
        ),
        "masked_linear_backward": (
            lambda g, x, w, m: OPS.masked_linear_backward(g, x, w, m, [True, True, True]),
            (rand(6, 4), rand(6, 10), rand(4, 10), keep(4, 10)),
        ),
        "masked_conv1d": (sl.ops.masked_conv1d, (rand(2, 3, 9), rand(4, 3, 3), keep(4, 3, 3))),
        "masked_conv2d": (
            sl.ops.masked_conv2d,
            (rand(2, 3, 6, 6), rand(4, 3, 3, 3), keep(4, 3, 3, 3)),
        ),
        "apply_mask": (sl.apply_mask, (rand(5, 9), keep(5, 9))),
        "pack_mask": (sl.pack_mask, (keep(5, 9),)),
        "unpack_mask": (lambda p: sl.unpack_mask(p, (5, 9)), (reference.pack_mask(keep(5, 9)),)),
        "magnitude_prune": (
            lambda w, m: sl.ops.magnitude_prune([w], [m], 0.5).masks[0],
            (rand(5, 9), keep(5, 9)),
        ),
        "random_prune": (
            lambda m: OPS.random_prune([m], [0.5], False, False, 7)[0][0],
            (reference.pack_mask(keep(5, 9)),),
        ),
        "sparse_linear": (
            lambda x, v: sl.sparse.sparse_linear(x, v, layout),
            (rand(6, 9), rand(layout.nnz)),
        ),
        "sparse_linear_backward": (
            lambda g, x, v: OPS.sparse_linear_backward(g, x, v, *layout, [True, True, True]),
            (rand(6, 5), rand(6, 9), rand(layout.nnz)),
        ),
    }[name]


COMPILE_CASES = [
    "masked_linear",
    "masked_linear_grad_input",
    "masked_linear_grad_weight",
    "masked_linear_backward",
    "masked_conv1d",
    "masked_conv2d",
    "apply_mask",
    "pack_mask",
    "unpack_mask",
    "magnitude_prune",
    "random_prune",
    "sparse_linear",
    "sparse_linear_backward",
]


@pytest.mark.parametrize("name", ["masked_sgd_", "masked_adamw_"])
def test_compile_fullgraph_optimiser_ops(name, target):
    """The in-place optimiser ops under torch.compile: same updates as eager."""
    torch.manual_seed(0)
    p = [torch.randn(5, 9, device=target), torch.randn(7, device=target)]
    g = [torch.randn_like(t) for t in p]
    m = [torch.rand(5, 9, device=target) < 0.5, None]
    states = [[torch.zeros_like(t) for t in p] for _ in range(2)]

    def step(params, states):
        if name == "masked_sgd_":
            OPS.masked_sgd_(params, g, states[0], m, 0.1, 0.9, 0.0, 1e-4, True, False, False)
        else:
            OPS.masked_adamw_(
                params, g, states[0], states[1], m, 0.1, 0.9, 0.99, 1e-8, 1e-2, 3, False
            )

    eager_p, eager_s = [t.clone() for t in p], [[t.clone() for t in s] for s in states]
    step(eager_p, eager_s)
    torch.compile(step, fullgraph=True, backend="aot_eager")(p, states)
    for got, want in zip(p + states[0] + states[1], eager_p + eager_s[0] + eager_s[1]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", COMPILE_CASES + ["apply_masks_"])
def test_compile_fullgraph(name, target):
    if name == "apply_masks_":
        t = [torch.randn(5, 9, device=target), torch.randn(3, device=target)]
        m = [torch.rand(5, 9, device=target) < 0.5, torch.rand(3, device=target) < 0.5]
        expected = [torch.where(k, x, 0) for x, k in zip(t, m)]
        torch.compile(sl.apply_masks_, fullgraph=True, backend="aot_eager")(t, m)
        for got, e in zip(t, expected):
            assert torch.equal(got, e)
        return
    fn, args = _compile_case(name, target)
    # Inductor for the main op (real code generation), aot_eager (fake kernels + autograd) else.
    backend = "inductor" if name == "masked_linear" else "aot_eager"
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(*args), fn(*args))


def test_compile_backward_of_masked_linear(target):
    x = torch.randn(8, 12, device=target, requires_grad=True)
    w = torch.randn(6, 12, device=target, requires_grad=True)
    mask = sl.pack_mask(torch.rand(6, 12, device=target) < 0.5)
    fn = torch.compile(
        lambda x, w: sl.ops.masked_linear(x, w, mask).square().sum(),
        fullgraph=True,
        backend="aot_eager",
    )
    gx, gw = torch.autograd.grad(fn(x, w), [x, w])
    ex, ew = torch.autograd.grad(sl.ops.masked_linear(x, w, mask).square().sum(), [x, w])
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)


# --------------------------------------------------------------------------- bad input
def _linear_args(**over):
    args = dict(
        input=torch.randn(4, 6),
        weight=torch.randn(5, 6),
        mask=torch.rand(5, 6) < 0.5,
        bias=torch.randn(5),
    )
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, pattern",
    [
        (
            dict(mask=torch.ones(6, 5, dtype=torch.bool)),
            r"mask: expected a bool mask of weight's "
            r"shape \[5, 6\], got shape \[6, 5\]",
        ),
        (
            dict(mask=torch.ones(5, 2, dtype=torch.uint8)),
            r"mask: expected a packed uint8 mask of "
            r"shape \[5, 1\].*got shape \[5, 2\]",
        ),
        (dict(mask=torch.ones(5, 6)), r"mask: expected dtype torch.bool .* got torch.float32"),
        (
            dict(input=torch.randn(4, 7)),
            r"input: expected last dimension in_features=6.*"
            r"\[4, 7\]",
        ),
        (
            dict(input=torch.randn(4, 6, dtype=torch.float64)),
            r"input: expected dtype "
            r"(torch\.)?[Ff]loat.*\(the dtype of weight\), got (torch\.)?[Dd]ouble|float64",
        ),
        (dict(bias=torch.randn(4)), r"bias: expected shape \[5\].*got \[4\]"),
        (
            dict(input=torch.randn(4, 6, device="meta")),
            r"input: expected device cpu \(the "
            r"device of weight\), got meta",
        ),
        (dict(weight=torch.randn(5, 6, 1)), r"weight: expected a 2-D tensor"),
    ],
    ids=[
        "mask-shape",
        "packed-shape",
        "mask-dtype",
        "input-width",
        "dtype-mismatch",
        "bias-shape",
        "mixed-devices",
        "weight-rank",
    ],
)
def test_masked_linear_bad_input_names_the_argument(over, pattern):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=pattern):
        sl.ops.masked_linear(**_linear_args(**over))


def test_bad_masks_for_apply_masks_():
    with pytest.raises((RuntimeError, ValueError), match=r"masks: expected 2 masks.*got 1"):
        sl.apply_masks_([torch.randn(3), torch.randn(2)], [torch.ones(3, dtype=torch.bool)])
    with pytest.raises((RuntimeError, ValueError), match=r"masks\[1\]: expected a bool mask"):
        sl.apply_masks_(
            [torch.randn(3), torch.randn(2)],
            [torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)],
        )


def test_unpack_rejects_wrong_packed_shape():
    with pytest.raises(RuntimeError, match=r"packed: expected shape \[3, 2\]|expected a packed"):
        sl.unpack_mask(torch.zeros(3, 1, dtype=torch.uint8), (3, 9))
