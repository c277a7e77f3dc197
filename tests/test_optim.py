"""sparse_lottery.optim against torch.optim on the masked problem, step for step; the
masked_sgd_ / masked_adamw_ ops against their pure-PyTorch reference; opcheck; bad input."""

import copy
import io
import itertools
import warnings

import pytest
import torch
from conftest import ATOL
from torch.optim.optimizer import register_optimizer_step_post_hook

import sparse_lottery as sl
from sparse_lottery import _registry, reference

OPS = torch.ops.sparse_lottery
ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
DTYPE_IDS = [str(d).removeprefix("torch.") for d in ALL_DTYPES]
STEPS = 25

CUDA = pytest.param(
    "cuda",
    marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
)
DEVICES = ["cpu", CUDA]

# torch.optim option combinations (momentum 0 / 0.9, dampening, Nesterov, weight decay, maximize)
SGD_OPTIONS = [
    {"lr": 0.05},
    {"lr": 0.05, "weight_decay": 0.1, "maximize": True},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    {"lr": 0.02, "momentum": 0.5, "nesterov": True, "maximize": True},
]
ADAMW_OPTIONS = [
    {"lr": 0.01},
    {"lr": 0.01, "weight_decay": 0.0},
    {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "maximize": True},
    {"lr": 0.01, "betas": (0.6, 0.9), "eps": 1e-3},  # lerp weight ≥ 0.5: the other branch
]
OPTIMIZERS = [
    *[
        pytest.param(sl.optim.SGD, torch.optim.SGD, o, id=f"sgd{i}")
        for i, o in enumerate(SGD_OPTIONS)
    ],
    *[
        pytest.param(sl.optim.AdamW, torch.optim.AdamW, o, id=f"adamw{i}")
        for i, o in enumerate(ADAMW_OPTIONS)
    ],
]


# --------------------------------------------------------------------------- the masked problem
def _masked_params(dtype, device, seed=0):
    """Parameters of masked layers of odd shapes (packed masks, ~30-60 % kept, one empty layer),
    their biases and an unmasked extra parameter; pruned weights hold garbage on purpose."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layers' initial weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # initialising the zero-element layer
        layers = [
            sl.nn.MaskedLinear(37, 13, dtype=dtype, device=device),
            sl.nn.MaskedConv2d(3, 5, 3, dtype=dtype, device=device),
            sl.nn.MaskedLinear(4, 0, dtype=dtype, device=device),
        ]
    for layer, density in zip(layers, (0.3, 0.6, 0.5)):
        keep = torch.rand(layer.weight.shape, generator=gen) < density
        layer.set_mask(keep.to(device))
        with torch.no_grad():
            layer.weight[~layer.mask] = 1e3
    extra = torch.nn.Parameter(torch.randn(7, generator=gen).to(dtype=dtype, device=device))
    params = [p for layer in layers for p in layer.parameters()] + [extra]
    return layers, params


def _keep(p):
    packed = sl.nn.mask_of(p)
    return None if packed is None else sl.unpack_mask(packed, p.shape)


def _set_grads(params, twins, gen, keeps):
    """grad = 0.1·p + noise: ours gets it unmasked (the kernel must ignore pruned entries), each
    twin list its own from its parameters, masked (grad ⊙ mask, the masked problem)."""
    for i, p in enumerate(params):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.grad = (0.1 * p.detach().double() + noise.to(p.device)).to(p.dtype)
        for twin in twins:
            q = twin[i]
            g = (0.1 * q.detach().double() + noise.to(q.device)).to(q.dtype)
            q.grad = g if keeps[i] is None else g * keeps[i]


def _twin(params, dtype):
    return [p.detach().clone().to(dtype).requires_grad_() for p in params]


def _check_survivors(params, twin, twin64, keeps, dtype, what):
    for i, (p, q, r) in enumerate(zip(params, twin, twin64)):
        keep = torch.ones_like(p, dtype=torch.bool) if keeps[i] is None else keeps[i]
        ours, theirs, exact = p.detach()[keep], q.detach()[keep], r.detach()[keep]
        if dtype in (torch.float32, torch.float64):
            tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == torch.float32 else {}
            torch.testing.assert_close(ours, theirs, **tol, msg=f"{what}: params[{i}]")
        elif ours.numel():
            # flash-attention's bound against torch's same-precision run, both vs float64, where
            # torch's run is finite (its float16 AdamW divides by eps = 0 once v underflows)
            assert torch.isfinite(ours).all(), f"{what}: params[{i}] not finite"
            finite = torch.isfinite(theirs)
            ours, theirs, exact = ours[finite], theirs[finite], exact[finite]
            err = (ours.double() - exact).abs().max().item()
            torch_err = (theirs.double() - exact).abs().max().item()
            bound = 2 * torch_err + 4 * ATOL[dtype] * max(1.0, exact.abs().max().item())
            assert err <= bound, f"{what}: params[{i}] error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("ours_cls, torch_cls, options", OPTIMIZERS)
def test_matches_torch_on_the_masked_problem(ours_cls, torch_cls, options, dtype, device):
    layers, params = _masked_params(dtype, device)
    keeps = [_keep(p) for p in params]
    initial = [p.detach().clone() for p in params]
    twin, twin64 = _twin(params, dtype), _twin(params, torch.float64)
    ours = ours_cls(params, **options)
    theirs, theirs64 = torch_cls(twin, **options), torch_cls(twin64, **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        _set_grads(params, [twin, twin64], gen, keeps)
        for opt in (ours, theirs, theirs64):
            opt.step()
    for i, (p, keep) in enumerate(zip(params, keeps)):
        if keep is not None:  # pruned entries never written: exactly their initial values
            assert torch.equal(p.detach()[~keep], initial[i][~keep]), f"params[{i}] pruned"
            for key, value in ours.state[p].items():
                if key != "step":
                    assert bool((value[~keep] == 0).all()), f"state {key} of params[{i}] pruned"
    _check_survivors(params, twin, twin64, keeps, dtype, ours_cls.__name__)
    assert sorted(ours.state[params[0]]) == sorted(theirs.state[twin[0]])


@pytest.mark.parametrize("ours_cls, torch_cls, options", OPTIMIZERS[2:3] + OPTIMIZERS[-2:-1])
def test_mask_change_between_steps(ours_cls, torch_cls, options):
    """IMP prunes more between levels: newly pruned entries freeze where they are."""
    layers, params = _masked_params(torch.float32, "cpu")
    twin = _twin(params, torch.float32)
    ours, theirs = ours_cls(params, **options), torch_cls(twin, **options)
    gen = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        if step == 10:
            for layer in layers:
                layer.set_mask(layer.mask & (torch.rand(layer.weight.shape, generator=gen) < 0.5))
            snapshot = [p.detach().clone() for p in params]
        keeps = [_keep(p) for p in params]
        _set_grads(params, [twin], gen, keeps)
        ours.step()
        theirs.step()
    for p, keep, before in zip(params, keeps, snapshot):
        if keep is not None:
            assert torch.equal(p.detach()[~keep], before[~keep])
    _check_survivors(params, twin, twin, keeps, torch.float32, "after the mask change")


def test_masked_linear_model_against_torch_sgd_with_remasking():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        sl.nn.MaskedLinear(20, 31), torch.nn.ReLU(), sl.nn.MaskedLinear(31, 5)
    )
    for layer in (model[0], model[2]):
        layer.set_mask(torch.rand(layer.weight.shape) < 0.4)
        with torch.no_grad():
            sl.apply_masks_([layer.weight], [layer.weight_mask_packed])
    twin = copy.deepcopy(model)
    options = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}
    ours = sl.optim.SGD(model.parameters(), **options)
    theirs = torch.optim.SGD(twin.parameters(), **options)
    x, y = torch.randn(64, 20), torch.randn(64, 5)
    for _ in range(STEPS):
        for net, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        with torch.no_grad():  # torch's way: re-mask weights and momentum after every step
            layers = (twin[0], twin[2])
            tensors = [
                t for m in layers for t in (m.weight, theirs.state[m.weight]["momentum_buffer"])
            ]
            sl.apply_masks_(tensors, [m.weight_mask_packed for m in layers for _ in range(2)])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[key], rtol=2e-5, atol=2e-6, msg=key)
    torch.testing.assert_close(model(x), twin(x), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("ours_cls, torch_cls, options", [OPTIMIZERS[4], OPTIMIZERS[-2]])
def test_state_dict_round_trip(ours_cls, torch_cls, options):
    runs = {}
    for name in ("straight", "resumed"):
        layers, ps = _masked_params(torch.float32, "cpu")
        opt = ours_cls(ps, **options)
        gen = torch.Generator().manual_seed(3)
        keeps = [_keep(p) for p in ps]
        for step in range(10):
            if name == "resumed" and step == 5:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                buffer.seek(0)
                opt = ours_cls(ps, **options)
                opt.load_state_dict(torch.load(buffer))
            _set_grads(ps, [], gen, keeps)
            opt.step()
        runs[name] = (ps, opt, layers)
    for p, q in zip(runs["straight"][0], runs["resumed"][0]):
        assert torch.equal(p, q)
    # the same layout as torch's: each loads the other's state dict
    ps, opt, _ = runs["resumed"]
    torch_opt = torch_cls(ps, **options)
    torch_opt.load_state_dict(opt.state_dict())
    ours_cls(ps, **options).load_state_dict(torch_opt.state_dict())
    assert (
        opt.state_dict()["param_groups"][0].keys()
        == torch_opt.state_dict()["param_groups"][0].keys()
    )


@pytest.mark.parametrize("ours_cls, torch_cls, options", [OPTIMIZERS[2], OPTIMIZERS[6]])
def test_step_hooks_and_profiler_label(ours_cls, torch_cls, options):
    """The step skips torch's wrapper only while nothing would see it: step hooks (the
    optimiser's and the global ones) still run, with their argument changes, and a profiler
    still shows the step."""
    layers, ps = _masked_params(torch.float32, "cpu")
    opt = ours_cls(ps, **options)
    _set_grads(ps, [], torch.Generator().manual_seed(1), [_keep(p) for p in ps])
    calls = []
    closure_calls = []

    def pre_hook(optimizer, args, kwargs):  # swaps in a closure: the changed arguments are used
        calls.append("pre")
        return args, {"closure": lambda: closure_calls.append(1)}

    pre = opt.register_step_pre_hook(pre_hook)
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    glob = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append("global"))
    try:
        opt.step()
    finally:
        glob.remove()
    assert calls == ["pre", "post", "global"] and closure_calls == [1]
    pre.remove()
    post.remove()
    before = [p.detach().clone() for p in ps]
    opt.step()  # no hook left: the direct path, which still steps
    assert calls == ["pre", "post", "global"]
    assert any(not torch.equal(a, b) for a, b in zip(before, ps))
    with torch.profiler.profile() as prof:
        opt.step()
    names = {e.name for e in prof.events()}
    assert f"Optimizer.step#{ours_cls.__name__}.step" in names


@pytest.mark.parametrize("ours_cls, torch_cls, options", [OPTIMIZERS[2], OPTIMIZERS[6]])
def test_zero_grad_as_torch(ours_cls, torch_cls, options):
    _, ps = _masked_params(torch.float32, "cpu")
    opt = ours_cls(ps, **options)
    _set_grads(ps, [], torch.Generator().manual_seed(1), [_keep(p) for p in ps])
    grads = [p.grad for p in ps]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(ps, grads))
    with torch.profiler.profile() as prof:
        opt.zero_grad()
    assert all(p.grad is None for p in ps)
    assert f"Optimizer.zero_grad#{ours_cls.__name__}.zero_grad" in {e.name for e in prof.events()}
    _set_grads(ps, [], torch.Generator().manual_seed(1), [_keep(p) for p in ps])
    opt.zero_grad()  # the direct path
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("ours_cls", [sl.optim.SGD, sl.optim.AdamW])
def test_optimiser_built_before_set_execution_is_refused(ours_cls):
    """set_execution replaces a layer's trained parameter (weight <-> values); an optimiser
    holding the old one would silently never update that layer, so its step raises."""
    model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                            torch.nn.Linear(8, 2)))  # fmt: skip
    model[0].set_mask(torch.rand(8, 16) < 0.2)
    stale = ours_cls(model.parameters(), lr=0.1)
    sl.set_execution(model, {"0": "sparse"})
    model(torch.randn(4, 16)).sum().backward()
    with pytest.raises(RuntimeError, match="params: '0.weight' was replaced by set_execution"):
        stale.step()
    fresh = ours_cls(model.parameters(), lr=0.1)
    before = model[0].values.detach().clone()
    fresh.step()
    assert not torch.equal(model[0].values, before)
    sl.set_execution(model, "dense")  # back: the sparse form's values are retired in turn
    fresh.zero_grad()
    model(torch.randn(4, 16)).sum().backward()
    with pytest.raises(RuntimeError, match="params: '0.values' was replaced"):
        fresh.step()


def test_mask_of_follows_the_layer():
    layer = sl.nn.MaskedLinear(6, 4)
    assert sl.nn.mask_of(layer.weight) is layer.weight_mask_packed
    assert sl.nn.mask_of(layer.bias) is None
    assert sl.nn.mask_of(torch.nn.Parameter(torch.ones(2))) is None
    layer = layer.to(torch.float64)
    assert sl.nn.mask_of(layer.weight) is layer.weight_mask_packed
    clone = copy.deepcopy(layer)
    assert sl.nn.mask_of(clone.weight) is clone.weight_mask_packed
    assert sl.nn.mask_of(layer.weight) is layer.weight_mask_packed
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert sl.nn.mask_of(loaded.weight) is loaded.weight_mask_packed
    fresh = sl.nn.MaskedLinear(6, 4, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict(), assign=True)
    assert sl.nn.mask_of(fresh.weight) is fresh.weight_mask_packed
    fresh.weight = torch.nn.Parameter(torch.zeros(4, 6))
    assert sl.nn.mask_of(fresh.weight) is fresh.weight_mask_packed
    dense = torch.nn.Linear(3, 2)
    masked = sl.nn.MaskedLinear.from_dense(dense)
    assert sl.nn.mask_of(dense.weight) is masked.weight_mask_packed


# --------------------------------------------------------------------------- the ops
SHAPES = [(13, 37), (5, 3, 3, 3), (7,), (), (0, 5), (3, 0), (1, 1000), (9, 41)]


def _op_inputs(dtype, device, mask_kind, contiguous=True, seed=0, shapes=SHAPES):
    """Per shape: param, grad, two states and a mask of `mask_kind` ('none', 'bool', 'packed');
    non-contiguous tensors (transposed) when not `contiguous`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:

        def rand(shape=shape):
            t = torch.randn(shape[::-1] if not contiguous else shape, generator=gen)
            t = t.permute(tuple(reversed(range(len(shape))))) if not contiguous else t
            return t.to(dtype=dtype, device=device)

        p, g, s1, s2 = rand(), rand(), rand(), rand().abs()
        keep = (torch.rand(shape, generator=gen) < 0.5).to(device)
        mask = {"none": None, "bool": keep, "packed": sl.pack_mask(keep)}[mask_kind]
        out.append((p, g, s1, s2, mask, None if mask is None else keep))
    return out


def _sgd_args(inputs, momentum=0.9, first=False, **kw):
    params, grads, bufs, _, masks, _ = zip(*inputs)
    options = {"lr": 0.1, "dampening": 0.1, "weight_decay": 0.01, "nesterov": False}
    options.update(kw)
    return (
        list(params),
        list(grads),
        list(bufs) if momentum else [],
        list(masks),
        options["lr"],
        momentum,
        options["dampening"],
        options["weight_decay"],
        options["nesterov"],
        kw.get("maximize", False),
        first,
    )


def _adamw_args(inputs, step=3, maximize=False, weight_decay=0.01):
    params, grads, m, v, masks, _ = zip(*inputs)
    return (list(params), list(grads), list(m), list(v), list(masks), 0.01, 0.9, 0.999, 1e-8,
            weight_decay, step, maximize)  # fmt: skip


OP_CASES = [
    ("masked_sgd_", _sgd_args, {}),
    ("masked_sgd_", _sgd_args, {"momentum": 0}),
    ("masked_sgd_", _sgd_args, {"first": True, "maximize": True}),
    ("masked_sgd_", _sgd_args, {"nesterov": True, "dampening": 0.0}),
    ("masked_adamw_", _adamw_args, {}),
    ("masked_adamw_", _adamw_args, {"step": 1, "maximize": True, "weight_decay": 0.0}),
]


def _clone_args(args):
    return [
        [t.clone() if torch.is_tensor(t) else t for t in a] if isinstance(a, list) else a
        for a in args
    ]


def _mutated(args):
    """The tensors an op writes: params and momentum buffers, or params, exp_avgs, exp_avg_sqs."""
    return [t for i in ((0, 2) if len(args) == 11 else (0, 2, 3)) for t in args[i]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mask_kind", ["packed", "bool", "none"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("op, make, kw", OP_CASES)
def test_kernel_matches_reference(op, make, kw, contiguous, mask_kind, dtype, device):
    if _registry.selected_backend(op, device) == "reference":
        pytest.skip("no compiled kernel for this device: the reference itself serves the op")
    _check_kernel(op, make, kw, _op_inputs(dtype, device, mask_kind, contiguous), dtype)


def _check_kernel(op, make, kw, inputs, dtype, threads=None):
    """Runs `op` (on `threads` intra-op threads, if given) and the reference on copies of the
    same arguments: pruned entries keep their old bits, survivors match the reference."""
    args = make(inputs, **kw)
    before, expected = _clone_args(args), _clone_args(args)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        getattr(OPS, op)(*args)
    finally:
        torch.set_num_threads(previous)
    getattr(reference, op)(*expected)
    keeps = [keep for *_, keep in inputs]
    n = len(inputs)
    for j, (got, want, old) in enumerate(zip(_mutated(args), _mutated(expected), _mutated(before))):
        keep = keeps[j % n]
        if keep is not None:  # pruned entries: the old bits
            assert torch.equal(got[~keep], old[~keep]), f"{op} tensor {j}: pruned entries written"
        # survivors: the reference maths up to contraction of a·b + c into one rounding
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got, want, rtol=8 * eps, atol=8 * eps, msg=f"{op} tensor {j}")


@pytest.mark.parametrize("mask_kind", ["packed", "bool", "none"])
@pytest.mark.parametrize("op, make, kw", [OP_CASES[0], OP_CASES[4]])
def test_cpu_kernel_split_between_threads_mid_byte(op, make, kw, mask_kind):
    """Two threads split the concatenated elements (ATen's OpenMP parallel_for: two tasks of
    16 389 here): the second starts at column 44 of row 105 of the (211, 155) tensor, inside a
    mask byte, so a task's first run is a partial byte."""
    if _registry.selected_backend(op, "cpu") == "reference":
        pytest.skip("no compiled CPU kernel")
    shapes = [(7, 10), (211, 155), (3,)]  # 32 778 elements
    inputs = _op_inputs(torch.float32, "cpu", mask_kind, shapes=shapes)
    _check_kernel(op, make, kw, inputs, torch.float32, threads=2)


def test_kernel_is_bit_exact_where_the_math_allows():
    """Where no rounding is involved the kernel is exact: the momentum buffer's first step
    (buf = -grad, maximize, no weight decay)."""
    inputs = _op_inputs(torch.float64, "cpu", "packed")
    args = _sgd_args(inputs, momentum=0.9, first=True, maximize=True, weight_decay=0.0)
    OPS.masked_sgd_(*args)
    for (_, g, _, _, _, keep), got in zip(inputs, args[2]):
        assert torch.equal(got[keep], -g[keep])


@pytest.mark.parametrize("op, make, kw", [OP_CASES[0], OP_CASES[4]])
def test_opcheck(op, make, kw):
    inputs = _op_inputs(torch.float32, "cpu", "packed")
    torch.library.opcheck(getattr(OPS, op), make(inputs[:3], **kw))


def test_pruned_garbage_is_ignored():
    """NaN and inf in pruned weights, grads and states stay where they are and go nowhere."""
    p = torch.tensor([1.0, float("nan"), 2.0, float("inf")])
    g = torch.tensor([0.5, float("nan"), -0.5, float("nan")])
    m, v = torch.zeros(4), torch.full((4,), float("nan"))
    v[0] = v[2] = 0.0
    keep = torch.tensor([True, False, True, False])
    OPS.masked_adamw_(
        [p], [g], [m], [v], [sl.pack_mask(keep)], 0.1, 0.9, 0.999, 1e-8, 0.1, 1, False
    )
    assert torch.isfinite(p[keep]).all() and torch.isfinite(m[keep]).all()
    assert torch.isnan(p[1]) and torch.isinf(p[3]) and torch.isnan(v[~keep]).all()


# --------------------------------------------------------------------------- bad input
def _bad_inputs():
    inputs = _op_inputs(torch.float32, "cpu", "packed")[:2]
    p, g, s1, s2, mask, _ = inputs[0]
    sgd = _sgd_args(inputs)
    cases = [
        ("grads count", 1, [[g]], ValueError, r"grads: expected 2 tensors"),
        ("grad dtype", 1, [[g.double(), inputs[1][1]]], TypeError, r"grads\[0\]: expected dtype"),
        ("grad shape", 1, [[g[:2], inputs[1][1]]], ValueError, r"grads\[0\]: expected shape"),
        ("buffer count", 2, [[s1]], ValueError, r"momentum_buffers: expected 2 tensors"),
        ("mask dtype", 3, [[mask.float(), None]], TypeError, r"masks\[0\]: expected dtype"),
        ("mask shape", 3, [[mask[:1], None]], ValueError, r"masks\[0\]: expected a packed"),
        ("bool shape", 3, [[torch.ones(2, 2, dtype=torch.bool), None]], ValueError, r"masks\[0\]"),
        ("int param", 0, [[p.int(), inputs[1][0]]], TypeError, r"params\[0\]: expected a floating"),
    ]
    for what, index, value, exc, match in cases:
        args = list(sgd)
        args[index] = value[0]
        if what == "int param":
            args[1] = [g.int(), inputs[1][1]]
            args[2] = [s1.int(), inputs[1][2]]
        yield pytest.param("masked_sgd_", args, exc, match, id=what)
    adamw = list(_adamw_args(inputs))
    adamw[10] = 0
    yield pytest.param("masked_adamw_", adamw, ValueError, r"step: expected", id="step 0")
    adamw = list(_adamw_args(inputs))
    adamw[3] = [s2[:1], inputs[1][3]]
    yield pytest.param(
        "masked_adamw_", adamw, ValueError, r"exp_avg_sqs\[0\]: expected shape", id="state shape"
    )


@pytest.mark.parametrize("backend", ["dispatch", "reference"])
@pytest.mark.parametrize("op, args, exc, match", list(_bad_inputs()))
def test_bad_input_errors(op, args, exc, match, backend):
    fn = getattr(OPS, op) if backend == "dispatch" else _registry.python_kernel("reference", op)
    with pytest.raises(exc, match=match):
        fn(*args)


def test_unsupported_options_are_rejected():
    w = [torch.nn.Parameter(torch.ones(2))]
    for cls, kw in itertools.chain(
        ((sl.optim.SGD, {k: True}) for k in ("foreach", "fused", "differentiable")),
        ((sl.optim.AdamW, {k: True}) for k in ("amsgrad", "foreach", "capturable", "fused")),
    ):
        with pytest.raises(ValueError, match=next(iter(kw))):
            cls(w, **kw)
    with pytest.raises(ValueError, match="nesterov"):
        sl.optim.SGD(w, momentum=0, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        sl.optim.AdamW(w, betas=(0.9, 1.0))
    w[0].grad = torch.ones(2).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        sl.optim.SGD(w).step()
