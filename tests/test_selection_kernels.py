"""The C++ CPU selection kernels (csrc/cpu/magnitude_select.cpp) against the sort-based oracle.

Masks, thresholds and removed counts must equal `sparse_lottery.reference` bit for bit. Inputs
are drawn fresh per seed; sizes cover every path of the kernel: small groups (one task, radix
histogram), medium groups (radix on every thread), large groups (sampled bracket), its fallback
when the candidates overflow the budget (ties), and the budget forced down with
SPARSE_LOTTERY_SELECT_BUDGET (radix refinement down to a single key, whose ties each part
removes itself).
"""

import pytest
import torch

import sparse_lottery  # noqa: F401  (registers the ops and their kernels)
from sparse_lottery import _mask_format, _registry, reference

ops = torch.ops.sparse_lottery
pytestmark = pytest.mark.skipif(
    _registry.selected_backend("magnitude_prune", "cpu") != "cpp",
    reason="the C++ extension is not built",
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MASK_KINDS = ["none", "bool", "packed"]
BUDGET = "SPARSE_LOTTERY_SELECT_BUDGET"


@pytest.fixture(params=[1, 3], ids=lambda n: f"threads{n}")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def values(shape, dtype, kind, g):
    """Weights of `shape`: "normal", "ties" (a few values, ±0 among them) or "special"
    (normal values mixed with ±0, subnormals, ±inf and ties)."""
    if kind == "ties":
        pool = torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -2.0])
        return pool[torch.randint(0, len(pool), shape, generator=g)].to(dtype)
    w = torch.randn(shape, generator=g).to(dtype)
    if kind == "special":
        tiny = torch.finfo(dtype).tiny
        pool = torch.tensor([0.0, -0.0, tiny / 4, -tiny / 2, tiny, float("inf"), -float("inf")])
        pool = torch.cat([pool.to(dtype), w.reshape(-1)[:3]])
        pick = torch.rand(shape, generator=g) < 0.3
        w = torch.where(pick, pool[torch.randint(0, len(pool), shape, generator=g)], w)
    return w


def make_mask(shape, kind, g, density=0.7):
    if kind == "none":
        return None
    keep = torch.rand(shape, generator=g) < density
    return reference.pack_mask(keep) if kind == "packed" else keep


def pool(shapes, g, dtypes=DTYPES, masks=MASK_KINDS, kinds=("normal", "ties", "special")):
    """Weights and masks of `shapes`, cycling through dtypes, mask kinds and value kinds. (The
    reference cannot build a packed mask for a tensor without rows: bool there.)"""
    ws, ms = [], []
    for i, shape in enumerate(shapes):
        ws.append(values(shape, dtypes[i % len(dtypes)], kinds[i % len(kinds)], g))
        kind = masks[(i + 1) % len(masks)]
        kind = "bool" if kind == "packed" and len(shape) and shape[0] == 0 else kind
        ms.append(make_mask(shape, kind, g, density=0.3 + 0.6 * (i % 2)))
    return ws, ms


def one_thread(fn, *args):
    """The oracle on one thread: its sorts are much slower on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def assert_magnitude(ws, ms, amounts, counts=False, layerwise=False):
    before = [w.clone() for w in ws], [None if m is None else m.clone() for m in ms]
    masks, thresholds, removed = ops.magnitude_prune(ws, ms, amounts, counts, layerwise)
    ref_masks, ref_thresholds, ref_removed = one_thread(
        reference.magnitude_prune, ws, ms, amounts, counts, layerwise
    )
    assert torch.equal(removed, ref_removed), (removed, ref_removed)
    assert torch.equal(thresholds, ref_thresholds), (thresholds, ref_thresholds)
    assert thresholds.dtype == torch.float64 and removed.dtype == torch.int64
    for i, (m, r, given) in enumerate(zip(masks, ref_masks, ms)):
        assert m.dtype == r.dtype and m.shape == r.shape and m.is_contiguous(), i
        assert torch.equal(m, r), f"mask {i}: {(m != r).sum()} entries differ"
        if given is not None:
            assert m.dtype == given.dtype and m.shape == given.shape
    for w, w0 in zip(ws, before[0]):
        assert torch.equal(w.reshape(-1).view(torch.uint8), w0.reshape(-1).view(torch.uint8))
    for m, m0 in zip(ms, before[1]):
        assert m is None or torch.equal(m, m0), "masks modified"
    return removed


def assert_random(ms, amounts, counts=False, layerwise=False, seed=0):
    masks, removed = ops.random_prune(ms, amounts, counts, layerwise, seed)
    ref_masks, ref_removed = one_thread(
        reference.random_prune, ms, amounts, counts, layerwise, seed
    )
    assert torch.equal(removed, ref_removed), (removed, ref_removed)
    for i, (m, r) in enumerate(zip(masks, ref_masks)):
        assert m.dtype == r.dtype and m.shape == r.shape and m.is_contiguous(), i
        assert torch.equal(m, r), f"mask {i}: {(m != r).sum()} entries differ"


# --------------------------------------------------------------------------- magnitude
def test_backend_is_cpp():
    assert _registry.selected_backend("random_prune", "cpu") == "cpp"


SMALL_SHAPES = [(7, 9), (), (0, 5), (33,), (3, 4, 5), (1, 1), (65, 31), (2, 3, 2, 11), (200,)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_magnitude_small_pools(seed, layerwise, threads):
    g = torch.Generator().manual_seed(seed)
    shapes = SMALL_SHAPES[seed:] + SMALL_SHAPES[:seed]
    ws, ms = pool(shapes, g)
    n = len(ws) if layerwise else 1
    for amount in (0.0, 0.3, 0.5, 0.97, 1.0):
        assert_magnitude(ws, ms, [amount] * n, layerwise=layerwise)
    fractions = torch.rand(n, generator=g).tolist()
    assert_magnitude(ws, ms, fractions, layerwise=layerwise)
    # counts: 0, the survivors exactly (k = S), and one in between
    survivors = [
        int(reference.as_bool(m, w.shape).sum()) if m is not None else w.numel()
        for w, m in zip(ws, ms)
    ]
    full = survivors if layerwise else [sum(survivors)]
    assert_magnitude(ws, ms, [0.0] * n, counts=True, layerwise=layerwise)
    assert_magnitude(ws, ms, [float(s) for s in full], counts=True, layerwise=layerwise)
    assert_magnitude(ws, ms, [float(s // 3) for s in full], counts=True, layerwise=layerwise)


def test_magnitude_degenerate_tensors(threads):
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(4, 6, generator=g), torch.randn(0), torch.tensor(2.5), torch.randn(5, 3)]
    empty = torch.zeros(5, 3, dtype=torch.bool)
    m = [torch.zeros(4, 6, dtype=torch.bool), None, None, reference.pack_mask(empty)]
    for amount in (0.0, 0.5, 1.0):
        assert_magnitude(w, m, [amount])
        assert_magnitude(w, m, [amount] * 4, layerwise=True)
    assert_magnitude(w, m, [1.0], counts=True)  # the single surviving scalar
    assert_magnitude([torch.tensor([-0.0, 0.0, -0.0])], [None], [2.0], counts=True)
    # a packed mask of a tensor without rows (the reference cannot reshape it)
    no_rows = ops.magnitude_prune(
        [torch.randn(0, 5)], [torch.zeros(0, 1, dtype=torch.uint8)], [0.5], False, False
    )
    assert no_rows[0][0].shape == (0, 1) and no_rows[2].tolist() == [0]
    assert_magnitude([torch.tensor([float("inf"), -float("inf"), 1.0])], [None], [2.0], True)


def test_magnitude_noncontiguous(threads):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(40, 70, generator=g)
    ws = [base.t(), base[:, ::3].to(torch.bfloat16), torch.randn(9, 8, 7, generator=g)[:, 1:, ::2]]
    big_mask = torch.rand(70, 80, generator=g) > 0.4
    ms = [big_mask[:, :40], None, (torch.rand(9, 4, 7, generator=g) > 0.5).transpose(1, 2)]
    assert not ws[0].is_contiguous() and not ms[0].is_contiguous()
    assert_magnitude(ws, ms, [0.4])
    assert_magnitude(ws, ms, [0.1, 0.9, 0.5], layerwise=True)


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_magnitude_large_sampled(mask_kind):
    """Large enough for the sampled bracket; tensors of all dtypes with odd widths."""
    g = torch.Generator().manual_seed(3)
    shapes = [(613, 1001), (400, 997), (3, 77, 1111), (50_000,)]
    ws = [values(s, d, "normal", g) for s, d in zip(shapes, DTYPES + [torch.float32])]
    ms = [make_mask(s, mask_kind, g, density=0.8) for s in shapes]
    for amount in (0.2, 0.0001, 0.999):
        assert_magnitude(ws, ms, [amount])
    assert_magnitude(ws, ms, [12345.0], counts=True)


def test_magnitude_large_ties_fall_back():
    """Few distinct values: the sampled bracket's candidates overflow the budget, so the radix
    path takes over and ends on a single key whose ties the parts remove in position order."""
    g = torch.Generator().manual_seed(4)
    ws = [
        values((1200, 1000), torch.float32, "ties", g),
        values((300, 999), torch.float16, "ties", g),
    ]
    ms = [make_mask((1200, 1000), "bool", g, 0.9), make_mask((300, 999), "packed", g, 0.9)]
    for amount in (0.13, 0.5, 0.77):
        assert_magnitude(ws, ms, [amount])


@pytest.mark.parametrize("budget", ["0", "100", "40000"])
def test_magnitude_budget_paths(budget, monkeypatch):
    """Small budgets force histogram refinement (and the single-key tie path at 0)."""
    monkeypatch.setenv(BUDGET, budget)
    g = torch.Generator().manual_seed(5)
    ws, ms = pool([(300, 701), (2, 1000), (90, 33, 7), (150_000,), (5,)], g)
    for amount in (0.05, 0.6, 1.0):
        assert_magnitude(ws, ms, [amount])
    assert_magnitude(ws, ms, [0.3, 0.8, 0.5, 0.01, 1.0], layerwise=True)
    if budget == "0":  # no room for candidates: a large group skips the sampled bracket
        big, big_mask = pool([(1100, 1000)], g, dtypes=[torch.bfloat16], masks=["bool"])
        assert_magnitude(big, big_mask, [0.35])


def test_magnitude_layerwise_many_tensors():
    """Small groups run several at once, large ones on every thread."""
    g = torch.Generator().manual_seed(6)
    shapes = [(5, 5)] * 8 + [(300, 500), (1000, 1100), (17,), (0, 3), (400, 401), (64, 64, 3)]
    ws, ms = pool(shapes, g)
    amounts = torch.rand(len(ws), generator=g).tolist()
    assert_magnitude(ws, ms, amounts, layerwise=True)
    assert_magnitude(ws, ms, [0.0] * len(ws), layerwise=True)


def test_magnitude_thread_count_invariance():
    g = torch.Generator().manual_seed(7)
    ws, ms = pool([(700, 900), (500, 301), (1000, 600)], g, kinds=("ties", "normal"))
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            outs.append(ops.magnitude_prune(ws, ms, [0.42], False, False))
    finally:
        torch.set_num_threads(before)
    for out in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out[0], outs[0][0]))
        assert torch.equal(out[1], outs[0][1]) and torch.equal(out[2], outs[0][2])


# ------------------------------------------------------------------------------ random
@pytest.mark.parametrize("seed", range(3))
def test_random_small(seed, threads):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 9), (), (0, 5), (33,), (3, 4, 5), (65, 31), (200,)]
    ms = [make_mask(s, ["bool", "packed"][i % 2], g) for i, s in enumerate(shapes)]
    for amount in (0.0, 0.25, 1.0):
        assert_random(ms, [amount], seed=seed)
        assert_random(ms, [amount] * len(ms), layerwise=True, seed=seed + 1)
    total = sum(
        int(reference.as_bool(m, (m.shape[0], 8 * m.shape[1])).sum())
        if m.dtype == torch.uint8
        else int(m.sum())
        for m in ms
    )
    for k in (0, 1, total // 2, total):
        assert_random(ms, [float(k)], counts=True, seed=-seed)


@pytest.mark.parametrize("budget", [None, "0"])
def test_random_large(budget, monkeypatch):
    if budget is not None:
        monkeypatch.setenv(BUDGET, budget)
    g = torch.Generator().manual_seed(8)
    ms = [make_mask((1000, 700), "bool", g, 0.8), make_mask((500, 1001), "packed", g, 0.6)]
    for amount in (0.2, 0.999):
        assert_random(ms, [amount], seed=2**62 - 5)
    assert_random(ms, [0.3, 0.7], layerwise=True, seed=11)
    assert_random(ms, [54321.0], counts=True, seed=12)


# ------------------------------------------------------------------------------ errors
def test_nan_names_the_tensor_first():
    w = [torch.randn(4), torch.randn(3, 3), torch.randn(5).half()]
    w[2][1] = float("nan")
    masks = [None, None, torch.tensor([True, False, True, True, True])]  # NaN where pruned
    with pytest.raises(ValueError, match=r"weights\[2\]: contains NaN, which has no magnitude"):
        ops.magnitude_prune(w, masks, [0.5], False, False)
    with pytest.raises(ValueError, match=r"weights\[2\]: contains NaN"):  # before k > S
        ops.magnitude_prune(w, masks, [100.0], True, False)
    with pytest.raises(ValueError, match=r"weights\[2\]: contains NaN"):
        ops.magnitude_prune(w, masks, [0.0, 0.0, 0.0], False, True)
    big = [torch.randn(1200, 1000)]
    big[0][700, 3] = -float("nan")
    with pytest.raises(ValueError, match=r"weights\[0\]: contains NaN"):
        ops.magnitude_prune(big, [None], [0.3], False, False)


def test_too_many_to_remove():
    w = [torch.randn(4), torch.randn(3, 3)]
    m = [None, torch.eye(3, dtype=torch.bool)]
    with pytest.raises(
        ValueError, match="amounts: 8 to remove exceeds the 7 surviving weights of the pool"
    ):
        ops.magnitude_prune(w, m, [8.0], True, False)
    with pytest.raises(ValueError, match="4 to remove exceeds the 3 surviving weights of tensor 1"):
        ops.magnitude_prune(w, m, [1.0, 4.0], True, True)
    with pytest.raises(ValueError, match="exceeds the 3 surviving weights of tensor 0"):
        ops.random_prune([m[1], m[1]], [4.0, 1.0], True, True, 0)


BAD_MAGNITUDE_ARGS = [
    ([torch.randn(3)], [None], [1.5], False, False),
    ([torch.randn(3)], [None], [2.5], True, False),
    ([torch.randn(3)], [None], [-1.0], True, False),
    ([torch.randn(3)], [None], [float("nan")], False, False),
    ([torch.randn(3)], [None], [0.1, 0.2], False, False),
    ([torch.randn(3)], [None, None], [0.1], False, False),
    ([torch.randn(3).double()], [None], [0.5], False, False),
    ([torch.randn(3)], [torch.zeros(3, dtype=torch.int32)], [0.5], False, False),
    ([torch.randn(3)], [torch.zeros(4, dtype=torch.bool)], [0.5], False, False),
    ([torch.randn(3, 9)], [torch.zeros(3, 1, dtype=torch.uint8)], [0.5], False, False),
    ([torch.randn(3)], [None], [1e30], True, False),
]


@pytest.mark.parametrize("args", BAD_MAGNITUDE_ARGS, ids=range(len(BAD_MAGNITUDE_ARGS)))
def test_magnitude_argument_errors_match_python(args):
    with pytest.raises(Exception) as python_error:
        _mask_format.check_magnitude_prune(*args)
        reference.magnitude_prune(*args)
    with pytest.raises(type(python_error.value)) as cpp_error:
        ops.magnitude_prune(*args)
    assert str(cpp_error.value) == str(python_error.value)


BAD_RANDOM_ARGS = [
    ([torch.zeros(3, dtype=torch.bool)], [1.5], False, False, 0),
    ([torch.zeros(3, dtype=torch.uint8)], [0.5], False, False, 0),
    ([torch.zeros(3, dtype=torch.float32)], [0.5], False, False, 0),
    ([torch.ones(3, dtype=torch.bool)], [0.5, 0.5], False, True, 0),
    ([torch.ones(3, dtype=torch.bool)], [4.0], True, False, 0),
]


@pytest.mark.parametrize("args", BAD_RANDOM_ARGS, ids=range(len(BAD_RANDOM_ARGS)))
def test_random_argument_errors_match_python(args):
    with pytest.raises(Exception) as python_error:
        _mask_format.check_random_prune(*args)
        reference.random_prune(*args)
    with pytest.raises(type(python_error.value)) as cpp_error:
        ops.random_prune(*args)
    assert str(cpp_error.value) == str(python_error.value)


def test_opcheck():
    """Schemas, fake kernels and the C++ kernels agree (shapes, dtypes, no aliasing)."""
    w = [torch.randn(5, 7), torch.randn(9).to(torch.bfloat16), torch.randn(3, 2).half()]
    m = [reference.pack_mask(torch.rand(5, 7) < 0.6), None, torch.rand(3, 2) < 0.5]
    torch.library.opcheck(ops.magnitude_prune.default, (w, m, [0.3], False, False))
    torch.library.opcheck(ops.magnitude_prune.default, (w, m, [1.0, 2.0, 0.0], True, True))
    torch.library.opcheck(ops.random_prune.default, ([m[2], m[0]], [4.0], True, False, 3))
    torch.library.opcheck(ops.random_prune.default, ([m[2], m[0]], [0.5, 0.1], False, True, -3))


def test_user_wrappers_run_the_kernels():
    w = [torch.tensor([0.5, -0.1, 0.3]), torch.tensor([[0.2, -0.4]])]
    result = sparse_lottery.ops.magnitude_prune(w, amount=2)
    assert [m.tolist() for m in result.masks] == [[True, False, True], [[False, True]]]
    assert result.removed.tolist() == [2]
    m = torch.ones(10, 10, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    assert int(sparse_lottery.ops.random_prune(m, 0.3, generator=gen).masks[0].sum()) == 70
