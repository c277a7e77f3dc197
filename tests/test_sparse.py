"""Sparse execution: the sparse_linear kernels against the pure-PyTorch reference and the
dense-fused path, the layout, `SparseLinear`, `set_execution`, and the errors of bad input."""

import copy
import pickle
import subprocess
import sys
import types

import pytest
import torch
from conftest import ATOL, DEVICES, assert_close_to_reference

import sparse_lottery as sl
from sparse_lottery import reference
from sparse_lottery.sparse import SparseLayout

OPS = torch.ops.sparse_lottery
ALL_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (batch shape, in_features K, out_features N, density): odd sizes, empty batches and layers,
# fully pruned and dense layers, wide and tall layers, batches the CPU SpMM splits into strips
# (105: two of 7 vectors; 300: 13, 13 and 12), and products the CPU kernels take in column
# blocks (sparse_kernels.h's column_block: batch 100 -> blocks of 64, batch 300 -> 64 for the
# SpMM and 21 for the SDDMM, whose groups of 8 then reach across blocks).
CASES = [
    ((9,), 41, 33, 0.3),
    ((105,), 23, 19, 0.4),
    ((300,), 31, 17, 0.3),
    ((1,), 1, 1, 1.0),
    ((2, 3), 17, 5, 0.5),
    ((0,), 8, 6, 0.5),
    ((4,), 8, 6, 0.0),
    ((70,), 65, 33, 1.0),
    ((37,), 2500, 40, 0.02),
    ((13,), 30, 2100, 0.05),
    ((3, 7), 1100, 1030, 0.01),
    ((100,), 200, 70, 0.5),
    ((300,), 150, 40, 0.6),
]


def _problem(batch, k, n, density, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.rand(n, k, generator=g) < density
    w = torch.randn(n, k, generator=g)
    x = torch.randn(*batch, k, generator=g)
    bias = torch.randn(n, generator=g)
    grad = torch.randn(*batch, n, generator=g)
    layout = SparseLayout.from_mask(mask.to(device))
    to = dict(device=device, dtype=dtype)
    return layout, layout.values_of(w.to(**to)), x.to(**to), bias.to(**to), grad.to(**to)


def _refs(fn, *args):
    """The reference in float64 and in the tensors' own precision."""
    as64 = [
        a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    ]
    return fn(*as64), fn(*args)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_backward_match_reference(case, dtype, device):
    layout, values, x, bias, grad = _problem(*case, dtype, device)
    for b in (bias, None):
        y = OPS.sparse_linear(x, values, *layout, b)
        y64, y_same = _refs(reference.sparse_linear, x, values, *layout, b)
        assert_close_to_reference(y, y64, y_same, f"forward {case} {dtype}")
    need = [True, True, True]
    got = OPS.sparse_linear_backward(grad, x, values, *layout, need)
    ref64 = reference.sparse_linear_backward(
        grad.double(), x.double(), values.double(), *layout, need
    )
    same = reference.sparse_linear_backward(grad, x, values, *layout, need)
    for what, a, r64, rs in zip(("d_input", "d_values", "d_bias"), got, ref64, same):
        assert_close_to_reference(a, r64.to(a.dtype).double(), rs, f"{what} {case} {dtype}")
    grad_input, grad_values, grad_bias = OPS.sparse_linear_backward(
        grad, None, values, *layout, [True, False, False]
    )
    assert grad_values is None and grad_bias is None
    torch.testing.assert_close(grad_input, got[0], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_indices_in_any_order_within_rows_and_columns(device):
    """The kernels take a layout whose rows (CSR) and columns (CSC) list their entries in any
    order, in column blocks too (batch 100, K = 200: blocks of 64)."""
    layout, values, x, bias, grad = _problem((100,), 200, 70, 0.5, torch.float32, device)
    g = torch.Generator().manual_seed(1)

    def shuffled_within(offsets):  # a permutation of the entries that keeps each run's entries
        perm = torch.arange(int(offsets[-1]))
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            perm[a:b] = a + torch.randperm(b - a, generator=g)
        return perm.to(device)

    csr = shuffled_within(layout.row_offsets.cpu())
    csc = shuffled_within(layout.col_offsets.cpu())
    moved = torch.empty_like(csr)
    moved[csr] = torch.arange(csr.numel(), device=device, dtype=csr.dtype)
    shuffled = SparseLayout(layout.row_offsets, layout.col_indices[csr], layout.col_offsets,
                            layout.row_indices[csc],
                            moved[layout.csr_positions.long()[csc]].to(torch.int32))  # fmt: skip
    assert not torch.equal(shuffled.col_indices, layout.col_indices)
    v = values[csr]
    y = OPS.sparse_linear(x, v, *shuffled, bias)
    torch.testing.assert_close(y, reference.sparse_linear(x, v, *shuffled, bias))
    torch.testing.assert_close(y, OPS.sparse_linear(x, values, *layout, bias))
    got = OPS.sparse_linear_backward(grad, x, v, *shuffled, [True, True, True])
    ref = reference.sparse_linear_backward(grad, x, v, *shuffled, [True, True, True])
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    layout, values, x, bias, grad = _problem((6,), 50, 20, 0.2, torch.float32, device)
    x_t = torch.randn(50, 6, device=device).t()  # strides (1, 6)
    y = OPS.sparse_linear(x_t, values, *layout, bias)
    torch.testing.assert_close(y, reference.sparse_linear(x_t, values, *layout, bias))
    g_t = torch.randn(20, 6, device=device).t()
    got = OPS.sparse_linear_backward(g_t, x_t, values, *layout, [True, True, True])
    ref = reference.sparse_linear_backward(g_t, x_t, values, *layout, [True, True, True])
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_the_dense_fused_path(device):
    """Same weights, same mask: SparseLinear and MaskedLinear agree in output and gradients."""
    torch.manual_seed(0)
    masked = sl.nn.MaskedLinear(300, 100, device=device)
    masked.set_mask(torch.rand(100, 300, device=device) < 0.05)
    sparse = sl.nn.SparseLinear.from_masked(masked)
    x = torch.randn(16, 300, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch.testing.assert_close(sparse(x), masked(x2), rtol=1e-5, atol=1e-5)
    sparse(x).square().sum().backward()
    masked(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.bias.grad, masked.bias.grad)
    mask = masked.mask
    dense_grad = sparse.layout.dense(sparse.values.grad)
    torch.testing.assert_close(dense_grad, masked.weight.grad * mask, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    layout, values, x, bias, _ = _problem((4,), 7, 5, 0.4, torch.float64, "cpu")
    for t in (values, x, bias):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, v, b: sl.sparse.sparse_linear(x, v, layout, b), (x, values, bias)
    )


def _penalty_gradients(forward, x, params):
    """Gradients (w.r.t. x and params) of two penalties built with create_graph: the squared
    norm of the input gradient and of the first parameter's gradient of Σ tanh(forward(x))."""
    out = []
    for wrt in (x, params[0]):
        (g,) = torch.autograd.grad(torch.tanh(forward(x)).sum(), wrt, create_graph=True)
        out.extend(torch.autograd.grad(g.square().sum(), [x, *params], allow_unused=True))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, with_bias", [((6,), True), ((2, 3), False)], ids=["2d", "3d"])
def test_double_backward_matches_reference(batch, with_bias, device):
    """create_graph differentiates through the sparse gradients (sparse_linear_backward's own
    autograd): gradient penalties match those of the dense masked reference."""
    layout, values, x, bias, _ = _problem(batch, 9, 7, 0.4, torch.float32, device, seed=3)
    params = [values.requires_grad_()] + ([bias.requires_grad_()] if with_bias else [])
    b = bias if with_bias else None
    x.requires_grad_()
    got = _penalty_gradients(lambda x: sl.sparse.sparse_linear(x, values, layout, b), x, params)
    want = _penalty_gradients(lambda x: x @ layout.dense(values).t() + (b if with_bias else 0),
                              x, params)  # fmt: skip
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("need", [[True, True, True], [True, False, False], [False, True, True]])
def test_backward_op_gradgradcheck_float64(need):
    """sparse_linear_backward is differentiable in grad_output, input and values, twice."""
    layout, values, x, _, grad = _problem((4,), 7, 5, 0.5, torch.float64, "cpu", seed=2)
    for t in (values, x, grad):
        t.requires_grad_()

    def backward(grad, x, v):
        return [t for t in OPS.sparse_linear_backward(grad, x, v, *layout, need) if t is not None]

    assert torch.autograd.gradcheck(backward, (grad, x, values))
    assert torch.autograd.gradgradcheck(backward, (grad, x, values))
    assert torch.autograd.gradgradcheck(
        lambda x, v, b: sl.sparse.sparse_linear(x, v, layout, b),
        (x, values, torch.randn(5, dtype=torch.float64, requires_grad=True)),
    )


def test_training_matches_masked_training():
    """torch.optim.SGD on the stored values is SGD on the masked problem, step for step."""
    torch.manual_seed(1)
    masked = sl.nn.MaskedLinear(40, 30)
    masked.set_mask(torch.rand(30, 40) < 0.2)
    with torch.no_grad():
        masked.weight.mul_(masked.mask)
    sparse = sl.nn.SparseLinear.from_masked(copy.deepcopy(masked))
    opt_m = torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        x, target = torch.randn(8, 40), torch.randn(8, 30)
        for layer, opt in ((masked, opt_m), (sparse, opt_s)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(layer(x), target).backward()
            opt.step()
    torch.testing.assert_close(sparse.weight, masked.weight * masked.mask, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- layout
def test_layout_round_trip_and_order():
    mask = torch.rand(37, 53) < 0.3
    layout = SparseLayout.from_mask(mask)
    assert torch.equal(layout.mask(), mask)
    assert layout.shape == (37, 53) and layout.nnz == int(mask.sum())
    w = torch.randn(37, 53)
    values = layout.values_of(w)
    torch.testing.assert_close(values, w[mask])  # CSR order is row-major order
    assert torch.equal(layout.dense(values), w * mask)
    # The CSC index walks the same entries column by column.
    csc = values[layout.csr_positions.long()]
    torch.testing.assert_close(csc, w.t()[mask.t()])
    cols = torch.repeat_interleave(torch.arange(53), layout.col_offsets.diff())
    assert torch.equal(
        mask[layout.row_indices.long(), cols], torch.ones(layout.nnz, dtype=torch.bool)
    )


def test_layout_errors():
    with pytest.raises(TypeError, match="mask: expected a 2-D bool tensor"):
        SparseLayout.from_mask(torch.ones(3, 4))
    with pytest.raises(TypeError, match="mask: expected a 2-D bool tensor"):
        SparseLayout.from_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"weight: expected shape \[3, 4\]"):
        SparseLayout.from_mask(torch.ones(3, 4, dtype=torch.bool)).values_of(torch.ones(4, 3))


# --------------------------------------------------------------------------- bad input
def _good():
    layout, values, x, bias, grad = _problem((5,), 12, 7, 0.5, torch.float32, "cpu")
    return layout, values, x, bias, grad


@pytest.mark.parametrize("kernel", ["cpp", "fake"])
def test_errors_name_the_argument(kernel):
    layout, values, x, bias, grad = _good()

    def call(*args):
        if kernel == "fake":
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                return OPS.sparse_linear(*args)
        return OPS.sparse_linear(*args)

    with pytest.raises(ValueError, match=r"input: expected last dimension in_features=12"):
        call(x[:, :5], values, *layout, bias)
    with pytest.raises(RuntimeError, match=r"input: expected dtype torch.float32"):
        call(x.double(), values, *layout, bias)
    with pytest.raises(TypeError, match=r"col_indices: expected dtype torch.int32"):
        call(x, values, layout.row_offsets, layout.col_indices.long(), *layout[2:], bias)
    with pytest.raises(ValueError, match=r"values: expected a contiguous 1-D tensor"):
        call(x, values[None], *layout, bias)
    with pytest.raises(ValueError, match=r"col_indices: expected a 1-D tensor of"):
        call(x, values[:-1].contiguous(), *layout, bias)
    with pytest.raises(ValueError, match=r"bias: expected shape \[7\]"):
        call(x, values, *layout, bias[:3])
    with pytest.raises(TypeError, match=r"values: expected a floating dtype"):
        call(x.int(), values.int(), *layout, None)


def test_backward_errors():
    layout, values, x, bias, grad = _good()
    with pytest.raises(ValueError, match=r"input: required for grad_values"):
        OPS.sparse_linear_backward(grad, None, values, *layout, [False, True, False])
    with pytest.raises(ValueError, match=r"grad_output: expected last dimension out_features=7"):
        OPS.sparse_linear_backward(grad[:, :3], x, values, *layout, [True, True, True])
    with pytest.raises(ValueError, match=r"input: expected batch dimensions \[5\]"):
        OPS.sparse_linear_backward(grad, x[:2], values, *layout, [True, True, True])


# --------------------------------------------------------------------------- the layer
def test_sparse_linear_layer_state_and_copies():
    torch.manual_seed(2)
    layer = sl.nn.SparseLinear(20, 30)
    assert layer.density == 1.0
    layer.set_mask(torch.rand(30, 20) < 0.1)
    x = torch.randn(4, 20)
    expected = layer(x)
    assert torch.equal(layer.weight != 0, layer.mask) or layer.values.eq(0).any()
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        torch.testing.assert_close(clone(x), expected)
    fresh = sl.nn.SparseLinear(20, 30)
    other = torch.rand(30, 20) < 0.2
    fresh.set_mask(other)  # a state dict of another mask's sparse form is refused, clearly
    with pytest.raises(ValueError, match=r"values: the state dict holds the sparse form of "
                       rf"another mask \({layer.values.numel()} stored weights, this layer "
                       rf"{int(other.sum())}\)"):  # fmt: skip
        fresh.load_state_dict(layer.state_dict())
    fresh.set_mask(layer.mask)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), expected)
    assert sorted(layer.state_dict()) == sorted(
        [
            "values",
            "bias",
            "row_offsets",
            "col_indices",
            "col_offsets",
            "row_indices",
            "csr_positions",
        ]
    )


def _model_of_both_kinds() -> torch.nn.Module:
    """A masked conv and a masked linear layer with random masks (30% and 10% kept)."""
    model = sl.sparsify(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(8 * 5 * 7, 5),
        )
    )  # fmt: skip
    model[0].set_mask(torch.rand(8, 3, 3, 3) < 0.3)
    model[3].set_mask(torch.rand(5, 280) < 0.1)
    return model


@pytest.mark.parametrize("assign", [False, True])
def test_state_dicts_load_across_the_two_forms(assign):
    """A model in sparse execution saves a state dict that a masked model loads (strictly, any
    mask), and loads a masked model's state dict when the masks are its own."""
    torch.manual_seed(11)
    masked = _model_of_both_kinds()
    x = torch.randn(2, 3, 5, 7)
    expected = masked(x)
    sparse = copy.deepcopy(masked)
    sl.set_execution(sparse, "sparse", example=x)
    assert [type(sparse[i]).__name__ for i in (0, 3)] == ["SparseConv2d", "SparseLinear"]

    fresh = _model_of_both_kinds()  # other masks, other weights
    fresh.load_state_dict(sparse.state_dict(), assign=assign)
    torch.testing.assert_close(fresh(x), expected)
    for i in (0, 3):
        assert torch.equal(fresh[i].mask, masked[i].mask)
        assert torch.equal(fresh[i].weight, masked[i].weight * masked[i].mask)

    with torch.no_grad():
        for p in sparse.parameters():
            p.zero_()
    sparse.load_state_dict(masked.state_dict(), assign=assign)
    torch.testing.assert_close(sparse(x), expected)
    sl.set_execution(sparse, "dense")
    for i in (0, 3):
        assert torch.equal(sparse[i].weight, masked[i].weight * masked[i].mask)


def test_state_dicts_across_forms_refuse_what_does_not_fit():
    torch.manual_seed(12)
    masked = _model_of_both_kinds()
    sparse = copy.deepcopy(masked)
    sl.set_execution(sparse, "sparse", example=torch.randn(2, 3, 5, 7))
    other = _model_of_both_kinds().state_dict()  # other masks
    with pytest.raises(ValueError, match=r"0.weight_mask_packed: the state dict's mask is not "
                       r"this sparse layer's \(\d+ weights kept, this layer \d+\); load it into "
                       r"the model's masked form"):  # fmt: skip
        sparse.load_state_dict(other)
    state = sparse.state_dict()
    bad = {**state, "3.col_indices": state["3.col_indices"] + 1000}
    with pytest.raises(ValueError, match=r"3.row_offsets: the state dict's sparse layout is not "
                       r"one that SparseLayout.from_mask makes"):  # fmt: skip
        masked.load_state_dict(bad)
    swapped = {**state, "3.col_indices": state["3.col_indices"].flip(0)}  # unsorted rows
    with pytest.raises(ValueError, match=r"3.row_offsets: the state dict's sparse layout"):
        masked.load_state_dict(swapped)
    short = {**state, "3.values": state["3.values"][1:]}
    with pytest.raises(ValueError, match=r"3.values: expected \d+ stored weights"):
        masked.load_state_dict(short)
    wide = sl.sparsify(torch.nn.Linear(281, 5))
    with pytest.raises(ValueError, match=r"row_offsets: the state dict's sparse form does not "
                       r"fit this layer: expected the layout of a 5×281 weight"):  # fmt: skip
        wide.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("3.")})


def test_set_mask_keeps_surviving_weights():
    layer = sl.nn.SparseLinear(6, 4)
    before = layer.weight.detach().clone()
    mask = torch.rand(4, 6) < 0.5
    layer.set_mask(mask)
    assert torch.equal(layer.weight.detach(), before * mask)
    with pytest.raises(ValueError, match=r"mask: expected shape \[4, 6\]"):
        layer.set_mask(torch.ones(6, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        layer.set_mask(torch.ones(4, 6))


def test_masked_sparse_round_trip():
    masked = sl.nn.MaskedLinear(12, 9)
    masked.set_mask(torch.rand(9, 12) < 0.3)
    back = sl.nn.SparseLinear.from_masked(masked).to_masked()
    assert torch.equal(back.mask, masked.mask)
    assert torch.equal(back.weight, masked.weight * masked.mask)
    assert back.bias is masked.bias
    with pytest.raises(TypeError, match="layer: expected a sparse_lottery.nn.MaskedLinear"):
        sl.nn.SparseLinear.from_masked(torch.nn.Linear(3, 3))


def test_compile_fullgraph_layer():
    layer = sl.nn.SparseLinear(16, 8)
    layer.set_mask(torch.rand(8, 16) < 0.3)
    x = torch.randn(5, 16, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, layer(x))
    gx, gv = torch.autograd.grad(out.sum(), [x, layer.values])
    ex, ev = torch.autograd.grad(layer(x).sum(), [x, layer.values])
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gv, ev)


# --------------------------------------------------------------------------- set_execution
def _model():
    torch.manual_seed(3)
    model = sl.sparsify(
        torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    )
    model[0].set_mask(torch.rand(256, 64) < 0.02)
    model[2].set_mask(torch.rand(10, 256) < 0.5)
    return model


def test_set_execution_modes():
    model = _model()
    x = torch.randn(7, 64)
    expected = model(x)
    assert sl.set_execution(model, "sparse") == {"0": "sparse", "2": "sparse"}
    assert isinstance(model[0], sl.nn.SparseLinear)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert sl.set_execution(model, "dense") == {"0": "dense", "2": "dense"}
    assert isinstance(model[0], sl.nn.MaskedLinear)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_auto_converts_to_the_measured_faster_form(monkeypatch):
    from sparse_lottery import execution

    model = _model()
    chosen = sl.set_execution(model, "auto", batch=32)
    for name in ("0", "2"):
        assert isinstance(model[int(name)], sl.nn.SparseLinear) == (chosen[name] == "sparse")
    # The decision follows the timings: sparse only where it measured faster.
    execution._decisions.clear()
    monkeypatch.setattr(execution, "_step_times", lambda dense, sparse, x, *a, **kw: (1.0, 2.0))
    assert sl.set_execution(_model(), "auto", batch=8) == {"0": "dense", "2": "dense"}
    execution._decisions.clear()
    monkeypatch.setattr(execution, "_step_times", lambda dense, sparse, x, *a, **kw: (2.0, 1.0))
    assert sl.set_execution(_model(), "auto", batch=8) == {"0": "sparse", "2": "sparse"}
    execution._decisions.clear()
    # A near tie (sparse 5% faster, within timing noise) stays dense.
    monkeypatch.setattr(execution, "_step_times", lambda dense, sparse, x, *a, **kw: (1.0, 0.95))
    assert sl.set_execution(_model(), "auto", batch=8) == {"0": "dense", "2": "dense"}
    execution._decisions.clear()


def test_auto_reuses_measurements_across_densities(monkeypatch):
    from sparse_lottery import execution

    execution._decisions.clear()
    layer = sl.nn.MaskedLinear(64, 32)
    times = {"dense": 1.0, "sparse": 0.5}
    timed = []

    def fake(dense, sparse, x, *args, **kw):
        assert isinstance(dense, sl.nn.MaskedLinear) and isinstance(sparse, sl.nn.SparseLinear)
        timed.append(dense.density)
        return times["dense"], times["sparse"]

    monkeypatch.setattr(execution, "_step_times", fake)
    layer.set_mask(torch.rand(32, 64) < 0.3)
    assert execution.choose(layer, (8, 64)) == "sparse" and len(timed) == 1
    layer.set_mask(torch.rand(32, 64) < 0.1)  # sparser than a density where sparse won
    assert execution.choose(layer, (8, 64)) == "sparse" and len(timed) == 1
    times["sparse"] = 2.0
    layer.set_mask(torch.rand(32, 64) < 0.6)  # denser: measured again
    assert execution.choose(layer, (8, 64)) == "dense" and len(timed) == 2
    layer.set_mask(torch.rand(32, 64) < 0.9)  # denser than where sparse lost: no measurement
    assert execution.choose(layer, (8, 64)) == "dense" and len(timed) == 2
    execution._decisions.clear()


def test_auto_keeps_a_full_mask_dense_without_measuring(monkeypatch):
    """A full mask runs torch's unmasked kernel, which the sparse form (the same products plus
    an index per weight) cannot beat: no measurement, and nothing recorded that could bound the
    masked layer's decisions at lower densities (which are measured)."""
    from sparse_lottery import execution

    execution._decisions.clear()
    layer, timed = sl.nn.MaskedLinear(64, 32), []

    def fake(dense, sparse, x, *args, **kw):
        timed.append(dense.density)
        return 1.0, 0.5

    monkeypatch.setattr(execution, "_step_times", fake)
    assert execution.choose(layer, (8, 64)) == "dense" and timed == []
    assert execution._decisions == {}
    layer.set_mask(torch.rand(32, 64) < 0.3)
    assert execution.choose(layer, (8, 64)) == "sparse" and len(timed) == 1
    execution._decisions.clear()


def test_auto_skips_sparse_measurements_that_cannot_win(monkeypatch):
    """After the sparse step lost at density d₀ in time t₀, it is measured again only at
    densities d where t₀·d/d₀ < SPARSE_MARGIN · dense time (here: sparse time 2·d, dense 1)."""
    from sparse_lottery import execution

    execution._decisions.clear()
    layer = sl.nn.MaskedLinear(64, 64)
    timed = []

    def fake(dense, sparse, x, *args, **kw):
        timed.append("pair")
        return 1.0, 2.0 * sparse.values.numel() / (sparse.in_features * sparse.out_features)

    monkeypatch.setattr(execution, "_step_times", fake)
    keep = torch.rand(64, 64)
    for density, form, measured in (
        (0.8, "dense", ["pair"]),  # loses: 1.6 ≥ 0.9
        (0.5, "dense", []),  # bound 1.6·0.5/0.8 = 1.0 ≥ 0.9: not measured
        (0.4, "sparse", ["pair"]),  # bound 0.8 < 0.9: measured, and 0.8 wins
        (0.1, "sparse", []),  # sparser than a win
    ):
        before = len(timed)
        layer.set_mask(keep < density)
        assert (execution.choose(layer, (8, 64)), timed[before:]) == (form, measured), density
    execution._decisions.clear()


def test_auto_times_the_first_layer_without_input_gradient(monkeypatch):
    """The example pass records which layers need their input's gradient (not the first one)
    and runs in eval mode: batch norm's running statistics and the training flags are kept."""
    from sparse_lottery import execution

    execution._decisions.clear()
    seen = {}

    def fake(dense, sparse, x, input_grad=True, **kw):
        seen.setdefault(tuple(x.shape), set()).add(input_grad)
        return 1.0, 1.0

    monkeypatch.setattr(execution, "_step_times", fake)
    model = sl.sparsify(
        torch.nn.Sequential(
            torch.nn.Linear(12, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 8),
        )
    )
    model[0].set_mask(torch.rand(16, 12) < 0.5)  # pruned: a full mask is not measured
    model[3].set_mask(torch.rand(8, 16) < 0.5)
    bn = model[1]
    stats = [t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    sl.set_execution(model, "auto", example=torch.randn(5, 12))
    assert seen == {(5, 12): {False}, (5, 16): {True}}
    execution._decisions.clear()
    seen.clear()  # an example that requires grad: the first layer's step computes it too
    sl.set_execution(model, "auto", example=torch.randn(5, 12, requires_grad=True))
    assert seen == {(5, 12): {True}, (5, 16): {True}}
    for now, before in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats):
        assert torch.equal(now, before)
    assert all(m.training for m in model.modules())
    execution._decisions.clear()
    monkeypatch.undo()
    layer = sl.nn.MaskedLinear(8, 8)  # the real timing without an input gradient
    times = execution._step_times(layer, sl.nn.SparseLinear.from_masked(layer), torch.randn(4, 8),
                                  input_grad=False, reps=1)  # fmt: skip
    assert all(t > 0 for t in times)


def test_step_times_alternate_and_give_up_after_a_slow_warm_up(monkeypatch):
    from sparse_lottery import execution

    calls = []
    dense, sparse = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    for name, layer in (("dense", dense), ("sparse", sparse)):
        layer.forward = lambda x, f=layer.forward, name=name: calls.append(name) or f(x)
    x = torch.randn(4, 8)
    execution._step_times(dense, sparse, x, reps=3, min_seconds=0.0)
    # the shape probes, the warm-ups, then three pairs, alternating
    assert calls == ["dense", "sparse"] + ["dense", "sparse"] * 4
    calls.clear()
    execution._step_times(dense, sparse, x, reps=3, min_seconds=10.0)
    assert calls == ["dense", "sparse"] * 52  # probes, warm-ups, then up to the cap of 50 pairs
    calls.clear()
    monkeypatch.setattr(execution, "GIVE_UP", 0.0)
    execution._step_times(dense, sparse, x, reps=3)
    assert calls == ["dense", "sparse"] * 3  # probes, warm-ups and one more step each


@pytest.mark.parametrize("optimizer, kernel", [("sgd", "masked_sgd_"), ("adamw", "masked_adamw_")])
def test_timed_step_runs_the_masked_optimizer_on_copies(monkeypatch, optimizer, kernel):
    """Each form's timed step ends with `optimizer`'s masked kernel over copies of the stored
    parameters, masked like the layer's weight (the sparse form's values: no mask); the layer
    itself does not change. `choose` keeps decisions per optimiser."""
    from sparse_lottery import execution

    calls = []
    real = getattr(torch.ops.sparse_lottery, kernel)
    ops = types.SimpleNamespace(**{kernel: lambda *a: calls.append(a) or real(*a)})
    monkeypatch.setattr(execution, "_OPS", ops)
    layer = sl.nn.MaskedLinear(16, 8)
    layer.set_mask(torch.rand(8, 16) < 0.3)
    sparse = sl.nn.SparseLinear.from_masked(layer)
    before = [p.detach().clone() for p in (*layer.parameters(), *sparse.parameters())]
    execution._step_times(layer, sparse, torch.randn(4, 16), True, optimizer=optimizer, reps=1)
    monkeypatch.undo()
    assert len(calls) >= 4  # warm-up and a pair at least, both forms
    masks = [args[4 if optimizer == "adamw" else 3] for args in calls]
    assert any(m[0] is layer.weight_mask_packed for m in masks)  # the dense form's weight
    assert any(m == [None, None] for m in masks)  # the sparse form's values and bias
    after = [*layer.parameters(), *sparse.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    execution._decisions.clear()
    monkeypatch.setattr(execution, "_step_times", lambda *a, **kw: (1.0, 0.5))
    assert execution.choose(layer, (4, 16), True, "sgd") == "sparse"
    monkeypatch.setattr(execution, "_step_times", lambda *a, **kw: (1.0, 2.0))
    assert execution.choose(layer, (4, 16), True, "adamw") == "dense"  # measured, not reused
    execution._decisions.clear()


def test_set_execution_errors():
    with pytest.raises(ValueError, match="mode: expected one of"):
        sl.set_execution(_model(), "fast")
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        sl.set_execution(_model(), "auto", optimizer="adam")
    with pytest.raises(ValueError, match="batch: expected a positive int"):
        sl.set_execution(_model(), "auto", batch=0)


def test_atol_table_covers_every_dtype():
    assert set(ALL_DTYPES) <= set(ATOL)


def test_model_api_refuses_layers_in_sparse_execution():
    model = _model()
    sl.set_execution(model, "sparse")
    for call in (sl.masks, sl.density, lambda m: sl.prune(m, 0.2)):
        with pytest.raises(TypeError, match="layer '0' is a SparseLinear"):
            call(model)
    sl.set_execution(model, "dense")
    assert sl.prune(model, 0.2).removed["0"] > 0


def test_export_dense_of_a_model_in_sparse_execution():
    model = _model()
    x = torch.randn(3, 64)
    expected = model(x)
    sl.set_execution(model, "sparse")
    dense = sl.export_dense(model)
    assert type(dense[0]) is torch.nn.Linear
    torch.testing.assert_close(dense(x), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- convolutions
@pytest.mark.parametrize(
    "kwargs", [dict(padding=1), dict(stride=2, padding=2, dilation=2), dict(kernel_size=(1, 3))]
)
def test_sparse_conv2d_matches_masked_conv2d(kwargs):
    torch.manual_seed(4)
    kwargs = {"kernel_size": 3, **kwargs}
    conv = sl.nn.MaskedConv2d(6, 10, **kwargs)
    conv.set_mask(torch.rand(conv.weight.shape) < 0.2)
    sparse = sl.nn.SparseConv2d.from_masked(conv)
    x = torch.randn(3, 6, 11, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch.testing.assert_close(sparse(x), conv(x2), rtol=1e-5, atol=1e-5)
    sparse(x).square().sum().backward()
    conv(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    dense_grad = sparse.layout.dense(sparse.values.grad).reshape(conv.weight.shape)
    torch.testing.assert_close(dense_grad, conv.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sparse(x[0]), conv(x2[0]), rtol=1e-5, atol=1e-5)  # unbatched
    back = sparse.to_masked()
    assert type(back) is sl.nn.MaskedConv2d and torch.equal(back.mask, conv.mask)
    torch.testing.assert_close(back(x2), conv(x2))


def test_sparse_conv2d_unsupported_layers_stay_dense():
    grouped = sl.nn.MaskedConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="groups=2"):
        sl.nn.SparseConv2d.from_masked(grouped)
    model = torch.nn.Sequential(grouped, sl.nn.MaskedConv2d(4, 4, 3, padding="same"))
    assert sl.set_execution(model, "sparse") == {"0": "dense", "1": "dense"}


def test_set_execution_of_convolutions_needs_an_example_for_auto():
    torch.manual_seed(5)
    model = sl.sparsify(torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1)))
    model[0].set_mask(torch.rand(model[0].weight.shape) < 0.02)
    assert sl.set_execution(model, "auto") == {"0": "dense"}  # input size unknown
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    chosen = sl.set_execution(model, "auto", example=x)
    assert isinstance(model[0], sl.nn.SparseConv2d) == (chosen["0"] == "sparse")
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert sl.set_execution(model, "sparse") == {"0": "sparse"}
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_sparse_conv2d():
    conv = sl.nn.MaskedConv2d(4, 6, 3, padding=1)
    conv.set_mask(torch.rand(conv.weight.shape) < 0.3)
    layer = sl.nn.SparseConv2d.from_masked(conv)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    out = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, layer(x))
    gx, gv = torch.autograd.grad(out.sum(), [x, layer.values])
    ex, ev = torch.autograd.grad(layer(x).sum(), [x, layer.values])
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gv, ev)


def test_timed_step_seeds_the_layer_gradient_without_importing_sympy():
    from sparse_lottery import execution

    layer = sl.nn.MaskedLinear(6, 5)
    x = torch.randn(3, 6, requires_grad=True)
    grad = torch.randn(3, 5)
    got = torch.autograd.grad(execution._Seed.apply(layer(x), grad), [x, layer.weight])
    want = torch.autograd.grad(layer(x), [x, layer.weight], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # A fresh process: choosing a form costs no sympy import (0.6 s) that training never pays.
    code = (
        "import sys, torch, sparse_lottery as sl\n"
        "m = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(64, 64)))\n"
        "m[0].set_mask(torch.rand(64, 64) < 0.1)\n"
        "sl.set_execution(m, 'auto', example=torch.randn(8, 64))\n"
        "print('sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
