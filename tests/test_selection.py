"""Selection at the user level: `ops.magnitude_prune`, `ops.random_prune` and `prune(model)`.

Properties (exact count, smallest magnitudes, monotonicity, pruned stays pruned) are checked
against first principles, independently of the sort-based reference; `torch.nn.utils.prune`
is the external oracle for whole models. The kernels' bit-exact agreement with the reference
lives in test_selection_kernels.py (CPU), test_selection_cuda.py and test_triton_selection.py.
"""

import math

import pytest
import torch
from conftest import DEVICES
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparse_lottery as sl
from sparse_lottery import reference

OPS = torch.ops.sparse_lottery


def _flat(tensors):
    return torch.cat([t.reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)


# --------------------------------------------------------------------------- magnitude_prune
@st.composite
def pools(draw):
    """A few tensors of mixed sizes and dtypes with many ties, their masks, and an amount."""
    n = draw(st.integers(1, 4))
    values = draw(st.sampled_from([[0.0, -0.0, 1.0, -1.0, 2.5], None]))
    weights, masks = [], []
    for _ in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3)))
        dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
        seed = draw(st.integers(0, 2**31))
        g = torch.Generator().manual_seed(seed)
        if values is None:
            w = torch.randn(shape, generator=g)
        else:
            w = torch.tensor(values)[torch.randint(len(values), shape, generator=g)]
        weights.append(w.to(dtype))
        kind = draw(st.sampled_from(["none", "bool", "packed"]))
        keep = torch.rand(shape, generator=g) < draw(st.floats(0.0, 1.0))
        masks.append(None if kind == "none" else keep if kind == "bool" else sl.pack_mask(keep))
    amount = draw(st.floats(0.0, 1.0))
    return weights, masks, amount


@settings(max_examples=60, deadline=None)
@given(pools())
def test_magnitude_prune_removes_exactly_the_smallest(case):
    weights, masks, amount = case
    before = [
        torch.ones(w.shape, dtype=torch.bool) if m is None else reference.as_bool(m, w.shape)
        for w, m in zip(weights, masks)
    ]
    result = sl.ops.magnitude_prune(weights, masks, amount)
    after = [reference.as_bool(new, w.shape) for new, w in zip(result.masks, weights)]
    survivors = int(sum(b.sum() for b in before))
    k = round(amount * survivors)
    kept, was = _flat(after).bool(), _flat(before).bool()
    mags = _flat(weights).abs()
    assert int(result.removed[0]) == k and int(kept.sum()) == survivors - k
    assert not (kept & ~was).any(), "a pruned weight came back"
    removed = was & ~kept
    if k and k < survivors:
        assert mags[removed].max() <= mags[kept].min()
        assert float(result.thresholds[0]) == float(mags[removed].max())
    for new, m in zip(result.masks, masks):  # output format follows the input mask
        assert new.dtype == (
            torch.uint8 if m is not None and m.dtype == torch.uint8 else torch.bool
        )


@settings(max_examples=30, deadline=None)
@given(pools(), st.floats(0.0, 1.0))
def test_magnitude_prune_is_monotone_in_the_amount(case, other):
    weights, masks, amount = case
    lo, hi = sorted([amount, other])
    small = sl.ops.magnitude_prune(weights, masks, lo).masks
    large = sl.ops.magnitude_prune(weights, masks, hi).masks
    for a, b, w in zip(small, large, weights):
        a, b = reference.as_bool(a, w.shape), reference.as_bool(b, w.shape)
        assert not (b & ~a).any(), "pruning more must remove a superset"


def test_magnitude_prune_tie_break_and_special_values():
    w0 = torch.tensor([1.0, -1.0, 0.0, -0.0, float("inf")])
    w1 = torch.tensor([[-0.0, 1.0], [float("-inf"), 1e-45]])  # 1e-45: a float32 subnormal
    result = sl.ops.magnitude_prune([w0, w1], amount=5)
    # Order: the three zeros (first positions first), the subnormal, then the first ±1.
    assert result.masks[0].tolist() == [False, True, False, False, True]
    assert result.masks[1].tolist() == [[False, True], [True, False]]
    assert float(result.thresholds[0]) == 1.0
    assert sl.ops.magnitude_prune([w0, w1], amount=4).thresholds.item() == pytest.approx(1e-45)


def test_magnitude_prune_layerwise_amounts_and_counts():
    torch.manual_seed(0)
    w = [torch.randn(10, 10), torch.randn(50), torch.randn(3, 3, 3)]
    r = sl.ops.magnitude_prune(w, amount=[0.5, 10, 0.0], scope="layerwise") if False else None
    r = sl.ops.magnitude_prune(w, amount=[50, 10, 0], scope="layerwise")
    assert r.removed.tolist() == [50, 10, 0] and len(r.thresholds) == 3
    r = sl.ops.magnitude_prune(w, amount=0.25, scope="layerwise")
    assert r.removed.tolist() == [25, round(12.5), round(0.25 * 27)]  # Python's rounding
    for m, x, t in zip(r.masks, w, r.thresholds):
        assert float(x.abs()[~m].max()) == float(t)
    empty = sl.ops.magnitude_prune([], amount=0.5)
    assert empty.masks == [] and empty.removed.tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_magnitude_prune_leaves_inputs_alone(device):
    w = torch.randn(20, 30, device=device)
    m = torch.rand(20, 30, device=device) < 0.7
    packed = sl.pack_mask(m)
    w0, m0, p0 = w.clone(), m.clone(), packed.clone()
    a = sl.ops.magnitude_prune(w, m, 0.3).masks[0]
    b = sl.ops.magnitude_prune(w, packed, 0.3).masks[0]
    assert torch.equal(w, w0) and torch.equal(m, m0) and torch.equal(packed, p0)
    assert torch.equal(sl.pack_mask(a), b) and b.device == w.device


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, 1.5),
            ValueError,
            r"amounts\[0\]: expected a fraction in \[0, 1\], got 1.5",
        ),
        (lambda w, m: sl.ops.magnitude_prune(w, m, -0.1), ValueError, "expected a fraction"),
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, float("nan")),
            ValueError,
            "expected a fraction",
        ),
        (lambda w, m: sl.ops.magnitude_prune(w, m, -3), ValueError, "expected a whole count"),
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, 10_000),
            ValueError,
            "10000 to remove exceeds the 21 surviving weights of the pool",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, [3, 0.5], scope="layerwise"),
            TypeError,
            "all fractions .* or all counts",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, [0.1, 0.2]),
            ValueError,
            "needs scope='layerwise'",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, [0.1], scope="layerwise"),
            ValueError,
            r"expected 2 amount\(s\)",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune(w, m, 0.1, scope="local"),
            ValueError,
            "scope: expected one of",
        ),
        (lambda w, m: sl.ops.magnitude_prune(w, m, True), TypeError, "amount: expected a float"),
        (lambda w, m: sl.ops.magnitude_prune(w, m[:1], 0.1), ValueError, "masks: expected 2 masks"),
        (
            lambda w, m: sl.ops.magnitude_prune(w, [m[0], torch.ones(3, 4, dtype=torch.bool)], 0.1),
            RuntimeError,
            r"masks\[1\]: expected a bool mask of weights\[1\]'s shape",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune(w, [m[0], torch.ones(2, 3)], 0.1),
            TypeError,
            r"masks\[1\]: expected dtype torch.bool",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune([w[0].double(), w[1]], m, 0.1),
            TypeError,
            r"weights\[0\]: expected dtype torch.float32",
        ),
        (
            lambda w, m: sl.ops.magnitude_prune(
                [w[0], w[1].index_fill(1, torch.tensor([2]), float("nan"))], m, 0.1
            ),
            ValueError,
            r"weights\[1\]: contains NaN",
        ),
    ],
)
def test_magnitude_prune_rejects_bad_input(call, error, match):
    w = [torch.randn(5, 3), torch.randn(2, 3)]
    m = [torch.ones(5, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)]
    with pytest.raises(error, match=match):
        call(w, m)


# --------------------------------------------------------------------------- random_prune
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_random_prune_exact_count_survivors_only_and_seeded(scope):
    torch.manual_seed(1)
    keep = [torch.rand(30, 17) < 0.6, torch.rand(101) < 0.9]
    masks = [keep[0], sl.pack_mask(keep[1])]
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = sl.ops.random_prune(masks, 0.4, scope, generator=g(5))
    b = sl.ops.random_prune(masks, 0.4, scope, generator=g(5))
    c = sl.ops.random_prune(masks, 0.4, scope, generator=g(6))
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    assert not all(torch.equal(x, y) for x, y in zip(a.masks, c.masks))
    after = [a.masks[0], sl.unpack_mask(a.masks[1], (101,))]
    assert a.masks[1].dtype == torch.uint8 and a.thresholds.numel() == 0
    survivors = [int(k.sum()) for k in keep]
    if scope == "global":
        assert int(a.removed[0]) == round(0.4 * sum(survivors))
    else:
        assert a.removed.tolist() == [round(0.4 * s) for s in survivors]
    for new, old in zip(after, keep):
        assert not (new & ~old).any()
    assert sum(int((o & ~n).sum()) for n, o in zip(after, keep)) == int(a.removed.sum())


def test_random_prune_same_weights_for_bool_and_packed_masks():
    keep = torch.rand(13, 21) < 0.8
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = sl.ops.random_prune(keep, 0.5, generator=g()).masks[0]
    b = sl.ops.random_prune(sl.pack_mask(keep), 0.5, generator=g()).masks[0]
    assert torch.equal(sl.pack_mask(a), b)


def test_random_prune_is_uniform():
    # Each of 64 positions is removed with probability 1/4 at amount 0.25; over 400 seeds the
    # counts are Binomial(400, 1/4): mean 100, sd 8.7. Fixed seeds make the test deterministic.
    counts = torch.zeros(64)
    ones = torch.ones(8, 8, dtype=torch.bool)
    for seed in range(400):
        new = sl.ops.random_prune(ones, 16, generator=torch.Generator().manual_seed(seed))
        counts += (~new.masks[0]).flatten().float()
    assert counts.sum() == 400 * 16
    assert counts.min() > 100 - 5 * 8.7 and counts.max() < 100 + 5 * 8.7
    chi2 = float(((counts - 100) ** 2 / 100).sum())
    assert chi2 < 120  # 63 degrees of freedom: p ≈ 1e-5


def test_random_prune_rejects_bad_input():
    with pytest.raises(TypeError, match=r"masks\[0\]: expected a bool mask or a packed"):
        sl.ops.random_prune([torch.ones(3)], 0.5)
    with pytest.raises(ValueError, match="exceeds the 3 surviving weights of tensor 0"):
        sl.ops.random_prune([torch.ones(3, dtype=torch.bool)], [4], scope="layerwise")


# --------------------------------------------------------------------------- prune(model)
def lenet():
    return nn.Sequential(
        nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(), nn.Linear(10, 4)
    )


def test_prune_matches_torch_global_unstructured_over_levels():
    torch.manual_seed(2)
    ours = sl.sparsify(lenet())
    theirs = lenet()
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if "mask" not in k})
    params = [(theirs[i], "weight") for i in (0, 2, 4)]
    for _ in range(3):  # torch applies the amount to the surviving weights too
        sl.prune(ours, 0.2)
        torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=0.2)
        for i in (0, 2, 4):
            assert torch.equal(ours[i].mask, theirs[i].weight_mask.bool())
    assert sl.density(ours) == pytest.approx(0.8**3, abs=1e-2)


def test_prune_exact_with_ties_in_layer_order():
    model = sl.sparsify(nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1, 2, 3], [1, 5, -6, 7], [8, 1, 9, 10]]))
        model[1].weight.copy_(torch.tensor([[-1.0, 11, 12], [1, 13, 0.5]]))
    # 18 weights; 0.5 and six ±1s. Removing 4: 0.5 and the first three 1s in order.
    report = sl.prune(model, 4)
    assert report.removed == {"0": 3, "1": 1} and report.thresholds == {"0": 1.0, "1": 1.0}
    assert model[0].mask.int().tolist() == [[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
    assert model[1].mask.int().tolist() == [[1, 1, 1], [1, 1, 0]]
    assert sum(sl.prune(model, 0.5).removed.values()) == 7  # half of the 14 survivors
    assert sl.density(model) == 7 / 18


@pytest.mark.parametrize("method", list(sl.pruning.METHODS))
def test_prune_methods_exclude_and_rates(method):
    torch.manual_seed(3)
    model = sl.sparsify(lenet())
    report = sl.prune(model, 0.5, method=method, exclude="0", rates={"4": 0.25})
    assert set(report.removed) == {"2", "4"} and model[0].density == 1.0
    assert report.removed["4"] == 10  # 40 weights at 0.25, by itself
    if "layerwise" in method:
        assert report.removed["2"] == 150
    assert model[2].density == pytest.approx(0.5, abs=0.3)
    assert sum(report.removed.values()) == 300 * 0.5 + 10
    assert bool(report.thresholds) == method.endswith("magnitude")


def test_prune_iterated_gives_density_power():
    model = sl.sparsify(lenet())
    for level in range(1, 5):
        sl.prune(model, 0.2, method="random_global", generator=torch.Generator().manual_seed(level))
        total = 20 * 30 + 30 * 10 + 10 * 4
        assert sl.density(model) == pytest.approx(1 - _pruned_after(total, level) / total)


def _pruned_after(total, levels):
    left = total
    for _ in range(levels):
        left -= round(0.2 * left)
    return total - left


def test_prune_rejects_bad_arguments():
    model = sl.sparsify(lenet())
    with pytest.raises(ValueError, match="method: expected one of"):
        sl.prune(model, 0.2, method="global")
    with pytest.raises(ValueError, match="rates: 'fc9' matches no masked layer"):
        sl.prune(model, 0.2, rates={"fc9": 0.1})
    with pytest.raises(ValueError, match="has no masked layers"):
        sl.prune(lenet(), 0.2)
    with pytest.raises(ValueError, match="expected a fraction"):
        sl.prune(model, 1.2)
    assert math.isclose(sl.density(model), 1.0)
