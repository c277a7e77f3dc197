"""The CUDA kernels of magnitude_prune and random_prune (csrc/cuda/magnitude_select.cu) against
the sort-based oracle of sparse_lottery.reference, bit for bit: masks, thresholds, counts.

The oracle runs on CPU copies of fresh random inputs: ties and duplicates, ±0.0, subnormals,
±inf, empty tensors, fully pruned tensors, single elements, mixed dtypes and mask formats in one
pool, both scopes, fractions and counts (k = 0 and k = S), partial removal of ties spread over
many blocks, tensors many block chunks long, misaligned and non-contiguous inputs. GPU tests
skip with the reason where no GPU is visible; the registration test runs wherever the extension
was built with CUDA.
"""

import math
import re

import pytest
import torch

import sparse_lottery as sl
from sparse_lottery import reference
from sparse_lottery._extension import _C, LOAD_ERROR, has_cuda_kernels

ops = torch.ops.sparse_lottery

if not has_cuda_kernels():
    WHY = f"CUDA kernels not built ({LOAD_ERROR or 'extension built without CUDA'})"
elif not torch.cuda.is_available():
    WHY = "no CUDA GPU visible"
else:
    WHY = ""
needs_gpu = pytest.mark.skipif(bool(WHY), reason=WHY)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FORMS = ["none", "bool", "packed"]
SHAPES = [(), (1,), (7,), (0,), (4, 0), (0, 3), (3, 5), (5, 13), (33, 17), (2, 3, 4, 5), (64, 80)]
SEEDS = range(6)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pick(options, gen):
    return options[int(torch.randint(len(options), (), generator=gen))]


def _values(shape, dtype, gen, kind):
    """CPU weights of `shape`: "normal", "ties" (few distinct values, ±0.0) or "special"
    (±0.0, subnormals, ±inf, the largest finite value, duplicates)."""
    n = math.prod(shape)
    if kind == "normal":
        x = torch.randn(n, generator=gen)
    elif kind == "ties":
        x = torch.randint(-6, 7, (n,), generator=gen).float() / 4
    else:
        tiny = torch.finfo(dtype).tiny
        big = torch.finfo(dtype).max
        table = torch.tensor(
            [0.0, -0.0, tiny / 4, -tiny / 4, 0.75 * tiny, math.inf, -math.inf, big, 1.0, -1.0]
        )
        pick = torch.randint(len(table) + 1, (n,), generator=gen)
        x = torch.where(pick < len(table), table[pick.clamp(max=len(table) - 1)], torch.randn(n))
    x = x.to(dtype)
    negative_zero = (x == 0) & (torch.rand(n, generator=gen) < 0.5)
    x = torch.where(negative_zero, torch.tensor(-0.0, dtype=dtype), x)
    return x.reshape(shape)


def _mask(shape, form, density, gen):
    """(mask in `form` or None, bool survivors of `shape`)."""
    keep = torch.rand(shape, generator=gen) < density
    if form == "none":
        return None, torch.ones(shape, dtype=torch.bool)
    return (keep if form == "bool" else reference.pack_mask(keep)), keep


def _pool(gen, tensors, shapes=SHAPES, dtypes=DTYPES, forms=FORMS):
    """Weights and masks on the CPU, and each tensor's survivor count."""
    weights, masks, survivors = [], [], []
    for _ in range(tensors):
        shape = _pick(shapes, gen)
        dtype = _pick(dtypes, gen)
        weights.append(_values(shape, dtype, gen, _pick(["normal", "ties", "special"], gen)))
        mask, keep = _mask(shape, _pick(forms, gen), _pick([0.0, 0.3, 0.9, 1.0], gen), gen)
        masks.append(mask)
        survivors.append(int(keep.sum()))
    return weights, masks, survivors


def _amounts(survivors, counts, layerwise, gen, choice=None):
    """Amounts for the pool: fractions incl. 0 and 1, or counts incl. 0 and S."""
    totals = survivors if layerwise else [sum(survivors)]
    out = []
    for s in totals:
        c = choice if choice is not None else _pick(["zero", "all", "some"], gen)
        if counts:
            k = {"zero": 0, "all": s, "some": int(torch.randint(s + 1, (), generator=gen))}[c]
            out.append(float(k))
        else:
            out.append({"zero": 0.0, "all": 1.0, "some": _pick([0.1, 0.37, 0.5, 0.999], gen)}[c])
    return out


def _cuda(ts):
    return [None if t is None else t.cuda() for t in ts]


def _bits(t):
    """A view of a tensor's raw bits, so that -0.0 and 0.0 (and NaNs) compare exactly."""
    return t.view({4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


def _same_masks(got, want, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.is_cuda, f"{what}: mask {i} on {g.device}"
        assert g.dtype == w.dtype and g.shape == w.shape, (
            f"{what}: mask {i} {g.dtype} {list(g.shape)} != {w.dtype} {list(w.shape)}"
        )
        assert torch.equal(g.cpu(), w), f"{what}: mask {i} differs at {(g.cpu() != w).nonzero()}"


def _check_magnitude(weights, masks, amounts, counts, layerwise, what=""):
    """The CUDA op on copies of the CPU inputs equals the reference; inputs unmodified."""
    w_dev, m_dev = _cuda(weights), _cuda(masks)
    w_before = [_bits(w).clone() for w in w_dev]
    m_before = [None if m is None else m.clone() for m in m_dev]
    new, thresholds, removed = ops.magnitude_prune(w_dev, m_dev, amounts, counts, layerwise)
    want_new, want_thresholds, want_removed = reference.magnitude_prune(
        weights, masks, amounts, counts, layerwise
    )
    _same_masks(new, want_new, what)
    assert thresholds.device.type == "cpu" and thresholds.dtype == torch.float64, what
    assert removed.device.type == "cpu" and removed.dtype == torch.int64, what
    assert thresholds.tolist() == want_thresholds.tolist(), what
    assert removed.tolist() == want_removed.tolist(), what
    for w, b in zip(w_dev, w_before):
        assert torch.equal(_bits(w), b), f"{what}: weights modified"
    for m, b in zip(m_dev, m_before):
        assert m is None or torch.equal(m, b), f"{what}: masks modified"
    return new


def _random_masks(gen, tensors, shapes=SHAPES):
    masks, survivors = [], []
    for _ in range(tensors):
        mask, keep = _mask(
            _pick(shapes, gen), _pick(["bool", "packed"], gen), _pick([0.0, 0.5, 1.0], gen), gen
        )
        masks.append(mask)
        survivors.append(int(keep.sum()))
    return masks, survivors


def _check_random(masks, amounts, counts, layerwise, seed, what=""):
    m_dev = _cuda(masks)
    before = [m.clone() for m in m_dev]
    new, removed = ops.random_prune(m_dev, amounts, counts, layerwise, seed)
    want_new, want_removed = reference.random_prune(masks, amounts, counts, layerwise, seed)
    _same_masks(new, want_new, what)
    assert removed.device.type == "cpu" and removed.tolist() == want_removed.tolist(), what
    for m, b in zip(m_dev, before):
        assert torch.equal(m, b), f"{what}: masks modified"
    return new


# --------------------------------------------------------------------------- build
@pytest.mark.skipif(not has_cuda_kernels(), reason="extension built without CUDA kernels")
@pytest.mark.parametrize("op", ["magnitude_prune", "random_prune"])
def test_cuda_kernels_registered(op):
    assert _C is not None and _C.with_cuda()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_lottery::{op}", "CUDA")
    assert sl.backends()["selected"][op]["cuda"] == "cpp"


# --------------------------------------------------------------------------- magnitude
@needs_gpu
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("counts", [False, True], ids=["fractions", "counts"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_magnitude_prune_matches_reference(layerwise, counts, seed):
    gen = _gen(1000 * seed + 10 * layerwise + counts)
    weights, masks, survivors = _pool(gen, tensors=1 + seed)
    for _ in range(3):
        amounts = _amounts(survivors, counts, layerwise, gen)
        _check_magnitude(weights, masks, amounts, counts, layerwise, f"amounts {amounts}")


@needs_gpu
@pytest.mark.parametrize("choice", ["zero", "all"])
@pytest.mark.parametrize("counts", [False, True], ids=["fractions", "counts"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_magnitude_prune_none_and_all(layerwise, counts, choice):
    gen = _gen(7)
    weights, masks, survivors = _pool(gen, tensors=6)
    amounts = _amounts(survivors, counts, layerwise, gen, choice)
    new = _check_magnitude(weights, masks, amounts, counts, layerwise, choice)
    if choice == "all":
        assert all(not reference.as_bool(m.cpu(), w.shape).any() for m, w in zip(new, weights))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_magnitude_prune_each_dtype_and_form(dtype, form):
    gen = _gen(11)
    for shape in SHAPES:
        for kind in ("normal", "ties", "special"):
            w = _values(shape, dtype, gen, kind)
            mask, keep = _mask(shape, form, 0.7, gen)
            s = int(keep.sum())
            for k in sorted({0, min(1, s), s // 3, max(s - 1, 0), s}):
                _check_magnitude([w], [mask], [float(k)], True, False, f"{shape} {kind} k={k}")


@needs_gpu
def test_magnitude_prune_fully_pruned_and_single_elements():
    gen = _gen(12)
    w = [_values((3, 4), torch.float32, gen, "normal"), torch.tensor([-2.5]), torch.tensor(0.5)]
    masks = [torch.zeros(3, 4, dtype=torch.bool), None, reference.pack_mask(torch.tensor(True))]
    for counts, amounts in [(True, [0.0, 1.0, 1.0]), (False, [1.0, 0.0, 1.0])]:
        _check_magnitude(w, masks, amounts, counts, True, f"layerwise {amounts}")
    _check_magnitude(w, masks, [1.0], True, False, "global one")
    _check_magnitude(w, masks, [2.0], True, False, "global all")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_magnitude_prune_partial_ties_across_blocks(dtype, form):
    """A few distinct magnitudes over ~2M weights: the threshold's ties span dozens of blocks
    (a block reads at least 32768 positions) and several tensors; only some of them go."""
    gen = _gen(13)
    shapes = [(1000, 999), (7,), (513, 1031)]
    weights = [(torch.randint(0, 4, s, generator=gen).float() - 1.5).to(dtype) / 2 for s in shapes]
    masks, keeps = zip(*[_mask(s, form, 0.8, gen) for s in shapes])
    survivors = [int(k.sum()) for k in keeps]
    total = sum(survivors)
    for k in [1, total // 3, total // 2 + 12345, total - 1]:  # ends inside a run of ties
        _check_magnitude(weights, list(masks), [float(k)], True, False, f"global k={k}")
    amounts = [float(survivors[0] // 2 + 77), float(min(3, survivors[1])), float(survivors[2] // 5)]
    _check_magnitude(weights, list(masks), amounts, True, True, "layerwise")
    _check_magnitude(weights, list(masks), [0.3, 0.5, 0.71], False, True, "layerwise fractions")


@needs_gpu
@pytest.mark.parametrize("form", FORMS)
def test_magnitude_prune_long_tensors(form):
    """Segments many chunks long, mixed float32 (three passes) and bfloat16 (two) in one pool."""
    gen = _gen(14)
    shapes = [(3001, 1409), (4_000_003,)]
    weights = [torch.randn(shapes[0], generator=gen), torch.randn(shapes[1], generator=gen)]
    weights[1] = weights[1].to(torch.bfloat16)
    masks = [_mask(s, form, 0.6, gen)[0] for s in shapes]
    for amount in (0.1, 0.5, 0.93):
        _check_magnitude(weights, masks, [amount], False, False, f"global {amount}")
    _check_magnitude(weights, masks, [0.25, 0.75], False, True, "layerwise")


@needs_gpu
def test_magnitude_prune_misaligned_and_non_contiguous():
    """Weights and bool masks at addresses that rule out vector accesses, and transposed ones."""
    gen = _gen(15)
    base = torch.randn(4099, generator=gen)
    keep = torch.rand(4099, generator=gen) < 0.5
    w_t = torch.randn(301, 77, generator=gen).to(torch.float16).t()
    m_t = (torch.rand(301, 77, generator=gen) < 0.5).t()
    weights = [base[3:], w_t]  # base[3:]: contiguous, 12 bytes past an aligned address
    w_dev = [base.cuda()[3:], w_t.cuda()]
    assert w_dev[0].data_ptr() % 16 != 0 and not w_dev[1].is_contiguous()
    mask_sets = [
        ([keep[1:-2], m_t], [keep.cuda()[1:-2], m_t.cuda()]),  # odd address, transposed
        ([None, reference.pack_mask(m_t)], [None, reference.pack_mask(m_t).cuda()]),
    ]
    for masks, m_dev in mask_sets:
        for amount in (0.2, 0.9):
            got = ops.magnitude_prune(w_dev, m_dev, [amount], False, False)
            want = reference.magnitude_prune(weights, masks, [amount], False, False)
            _same_masks(got[0], want[0], f"misaligned {amount}")
            assert got[1].tolist() == want[1].tolist() and got[2].tolist() == want[2].tolist()


# --------------------------------------------------------------------------- random
@needs_gpu
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("counts", [False, True], ids=["fractions", "counts"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_random_prune_matches_reference(layerwise, counts, seed):
    gen = _gen(2000 * seed + 10 * layerwise + counts)
    masks, survivors = _random_masks(gen, tensors=1 + seed)
    for choice in ("zero", "all", "some", "some"):
        amounts = _amounts(survivors, counts, layerwise, gen, choice)
        _check_random(masks, amounts, counts, layerwise, seed * 7919 + 1, f"{choice} {amounts}")


@needs_gpu
@pytest.mark.parametrize("form", ["bool", "packed"])
def test_random_prune_long_masks(form):
    gen = _gen(16)
    shapes = [(2049, 1543), (5,), (3_000_001,)]
    masks = [_mask(s, form, 0.7, gen)[0] for s in shapes]
    for amount in (0.05, 0.5, 0.99):
        _check_random(masks, [amount], False, False, 12345, f"global {amount}")
    _check_random(masks, [0.3, 1.0, 0.6], False, True, 2**62 - 1, "layerwise")


@needs_gpu
def test_random_prune_same_seed_same_masks_on_cpu_and_cuda():
    gen = _gen(17)
    keep = torch.rand(37, 45, generator=gen) < 0.6
    for mask in (keep, reference.pack_mask(keep)):
        for seed in (0, 1, 2**40 + 3):
            on_cpu = ops.random_prune([mask], [0.5], False, False, seed)
            on_cuda = ops.random_prune([mask.cuda()], [0.5], False, False, seed)
            assert torch.equal(on_cuda[0][0].cpu(), on_cpu[0][0])
            again = ops.random_prune([mask.cuda()], [0.5], False, False, seed)
            assert torch.equal(again[0][0], on_cuda[0][0])
    # The bool and the packed mask select the same weights.
    as_bool = ops.random_prune([keep.cuda()], [0.5], False, False, 5)[0][0]
    as_packed = ops.random_prune([reference.pack_mask(keep).cuda()], [0.5], False, False, 5)
    assert torch.equal(reference.unpack_mask(as_packed[0][0].cpu(), (37, 45)), as_bool.cpu())


# --------------------------------------------------------------------------- errors
def _same_error(kind, cpu_call, cuda_call):
    """The CUDA kernel raises the error (type and message) that the CPU path raises."""
    with pytest.raises(kind) as cpu_error:
        cpu_call()
    with pytest.raises(kind, match=re.escape(str(cpu_error.value))):
        cuda_call()


def _cuda_kernel(op, *args):
    """The CUDA kernel of `op` called directly: CPU tensors reach its argument checks."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    return getattr(ops, op).default.redispatch(keys, *args)


_W = [torch.randn(3, 4), torch.randn(6)]
MAGNITUDE_ARGUMENT_ERRORS = [
    (ValueError, _W, [None, None], [1.5], False, False),  # fraction > 1
    (ValueError, _W, [None, None], [1.00001], False, False),
    (ValueError, _W, [None, None], [1e16], False, False),
    (ValueError, _W, [None, None], [-1e-05], False, False),
    (ValueError, _W, [None, None], [math.nan], False, False),
    (ValueError, _W, [None, None], [2.5], True, False),  # not a whole count
    (ValueError, _W, [None, None], [-1.0], True, False),
    (ValueError, _W, [None, None], [math.inf], True, False),
    (ValueError, _W, [None, None], [0.5], False, True),  # one amount for two tensors
    (ValueError, _W, [None], [0.5], False, False),  # masks list too short
    (TypeError, [_W[0].double()], [None], [0.5], False, False),
    (TypeError, [_W[0]], [torch.zeros(3, 4)], [0.5], False, False),  # float mask
    (RuntimeError, [_W[0]], [torch.ones(4, 3, dtype=torch.bool)], [0.5], False, False),
    (RuntimeError, [_W[0]], [torch.ones(3, 2, dtype=torch.uint8)], [0.5], False, False),
]
_M = [torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 1, dtype=torch.uint8)]
RANDOM_ARGUMENT_ERRORS = [
    (ValueError, _M, [1.01], False, False),
    (ValueError, _M, [0.5], False, True),
    (ValueError, _M, [3.25], True, False),
    (TypeError, [torch.ones(8, dtype=torch.uint8)], [0.5], False, False),  # 1-D packed
    (TypeError, [torch.ones(3, 4)], [0.5], False, False),
]


@pytest.mark.skipif(not has_cuda_kernels(), reason="extension built without CUDA kernels")
@pytest.mark.parametrize("case", range(len(MAGNITUDE_ARGUMENT_ERRORS)))
def test_magnitude_prune_argument_errors_match_python(case):
    kind, ws, ms, amounts, counts, layerwise = MAGNITUDE_ARGUMENT_ERRORS[case]
    _same_error(
        kind,
        lambda: ops.magnitude_prune(ws, ms, amounts, counts, layerwise),
        lambda: _cuda_kernel("magnitude_prune", ws, ms, amounts, counts, layerwise),
    )


@pytest.mark.skipif(not has_cuda_kernels(), reason="extension built without CUDA kernels")
@pytest.mark.parametrize("case", range(len(RANDOM_ARGUMENT_ERRORS)))
def test_random_prune_argument_errors_match_python(case):
    kind, ms, amounts, counts, layerwise = RANDOM_ARGUMENT_ERRORS[case]
    _same_error(
        kind,
        lambda: ops.random_prune(ms, amounts, counts, layerwise, 3),
        lambda: _cuda_kernel("random_prune", ms, amounts, counts, layerwise, 3),
    )


@pytest.mark.skipif(not has_cuda_kernels(), reason="extension built without CUDA kernels")
def test_cpu_tensors_are_refused_by_the_cuda_kernels():
    with pytest.raises(RuntimeError, match=r"weights\[0\]: expected a CUDA tensor, got device cpu"):
        _cuda_kernel("magnitude_prune", _W, [None, None], [0.5], False, False)
    with pytest.raises(RuntimeError, match=r"masks\[0\]: expected a CUDA tensor, got device cpu"):
        _cuda_kernel("random_prune", _M, [0.5], False, False, 3)


@needs_gpu
def test_magnitude_prune_data_errors():
    """NaN anywhere (even masked, even with k = 0) and k > S, as the reference words them."""
    w = [torch.randn(3, 4), torch.randn(6)]
    w_nan = [w[0], w[1].clone()]
    w_nan[1][2] = math.nan
    masked = reference.pack_mask(torch.arange(6) != 2)  # the NaN is pruned already
    cases = [
        (w_nan, [None, None], [1.0], True, False),
        (w_nan, [None, masked], [0.0], False, False),
        (w_nan, [None, None], [0.0, 0.0], True, True),
        (w, [None, None], [19.0], True, False),  # k > S, the pool
        (w, [None, None], [1.0, 7.0], True, True),  # k > S, tensor 1
        (w, [None, masked], [1e22], True, False),
    ]
    for ws, ms, amounts, counts, layerwise in cases:
        _same_error(
            ValueError,
            lambda ws=ws, ms=ms, a=amounts, c=counts, lw=layerwise: ops.magnitude_prune(
                ws, ms, a, c, lw
            ),
            lambda ws=ws, ms=ms, a=amounts, c=counts, lw=layerwise: ops.magnitude_prune(
                _cuda(ws), _cuda(ms), a, c, lw
            ),
        )
    m_cpu = [torch.ones(3, 4, dtype=torch.bool)]
    with pytest.raises(RuntimeError, match=r"masks\[0\]: expected device cuda"):
        ops.magnitude_prune([w[0].cuda()], m_cpu, [0.5], False, False)


@needs_gpu
def test_random_prune_data_errors():
    for amounts, layerwise in (([15.0], False), ([1.0, 9.0], True)):  # 14 survivors in _M
        _same_error(
            ValueError,
            lambda a=amounts, lw=layerwise: ops.random_prune(_M, a, True, lw, 3),
            lambda a=amounts, lw=layerwise: ops.random_prune(_cuda(_M), a, True, lw, 3),
        )


# --------------------------------------------------------------------------- 2^31 positions
def _big_memory_ok(gib):
    return not WHY and torch.cuda.get_device_properties(0).total_memory >= gib * 2**30


@needs_gpu
@pytest.mark.skipif(not WHY and not _big_memory_ok(16), reason="needs a GPU with 16 GiB")
@pytest.mark.parametrize("form", ["none", "packed"])
def test_magnitude_prune_beyond_2_31_elements(form):
    """2^31 + 40 bfloat16 weights repeating [3, 1, 4, 1, 5, 9, 2, 6]: removing every 1 and the
    first 5 twos must clear exactly those (64-bit positions, tie ranks, packed bytes)."""
    groups = 2**28 + 5
    n = 8 * groups
    pattern = torch.tensor([3.0, 1, 4, 1, 5, 9, 2, 6], dtype=torch.bfloat16, device="cuda")
    w = pattern.repeat(groups)
    mask = None if form == "none" else torch.full((1, groups), 0xFF, dtype=torch.uint8).cuda()
    k = 2 * groups + 5
    new, thresholds, removed = ops.magnitude_prune([w], [mask], [float(k)], True, False)
    assert removed.tolist() == [k] and thresholds.tolist() == [2.0]
    out = new[0]
    if form == "packed":
        assert out.shape == (1, groups)
        assert bool((out[0, :5] == 0xB5).all()) and bool((out[0, 5:] == 0xF5).all())
    else:
        assert out.shape == (n,) and int(out.sum()) == n - k
        rows = out.view(groups, 8)
        assert not rows[:, 1].any() and not rows[:, 3].any()
        assert not rows[:5, 6].any() and bool(rows[5:, 6].all())
        assert bool(rows[:, [0, 2, 4, 5, 7]].all())


@needs_gpu
@pytest.mark.skipif(not WHY and not _big_memory_ok(16), reason="needs a GPU with 16 GiB")
def test_random_prune_beyond_2_31_positions():
    groups = 2**28 + 5
    mask = torch.full((1, groups), 0xFF, dtype=torch.uint8, device="cuda")
    k = 1000
    new, removed = ops.random_prune([mask], [float(k)], True, False, 99)
    assert removed.tolist() == [k]
    popcount = torch.tensor([bin(b).count("1") for b in range(256)], device="cuda")
    assert int(popcount[new[0].long()].sum()) == 8 * groups - k
    again, _ = ops.random_prune([mask], [float(k)], True, False, 99)
    assert torch.equal(again[0], new[0])
