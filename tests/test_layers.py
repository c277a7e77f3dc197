"""The masked layers against plain torch layers with weight ⊙ mask: forward, every gradient,
pruned-value independence, padding modes, torch.compile, copies, pickling, state dicts, DDP."""

import copy
import io

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call

import sparse_lottery as sl
from sparse_lottery.nn import MaskedConv1d, MaskedConv2d, MaskedLinear

# (masked class, plain class, constructor kwargs, input shape): odd sizes on purpose.
CASES = {
    "linear": (MaskedLinear, nn.Linear, dict(in_features=41, out_features=33), (9, 41)),
    "linear-1x1": (MaskedLinear, nn.Linear, dict(in_features=1, out_features=1), (1, 1)),
    "linear-3d-nobias": (
        MaskedLinear,
        nn.Linear,
        dict(in_features=17, out_features=5, bias=False),
        (2, 3, 17),
    ),
    "linear-wide": (MaskedLinear, nn.Linear, dict(in_features=341, out_features=19), (37, 341)),
    "linear-empty": (MaskedLinear, nn.Linear, dict(in_features=13, out_features=7), (0, 13)),
    "linear-1d-input": (MaskedLinear, nn.Linear, dict(in_features=9, out_features=4), (9,)),
    "conv1d": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=5, kernel_size=3),
        (2, 3, 11),
    ),
    "conv1d-stride-dil-pad": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, dilation=2, padding=3),
        (3, 4, 23),
    ),
    "conv1d-groups-nobias": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=6, out_channels=9, kernel_size=3, groups=3, bias=False),
        (2, 6, 10),
    ),
    "conv1d-same-even": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=4, kernel_size=4, padding="same", dilation=1),
        (2, 3, 9),
    ),
    "conv1d-valid": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=4, kernel_size=2, padding="valid"),
        (2, 3, 9),
    ),
    "conv1d-reflect": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode="reflect"),
        (2, 3, 9),
    ),
    "conv1d-circular-same": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=4, kernel_size=4, padding="same", padding_mode="circular"),
        (2, 3, 9),
    ),
    "conv1d-unbatched": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=2, kernel_size=3),
        (3, 8),
    ),
    "conv1d-empty": (
        MaskedConv1d,
        nn.Conv1d,
        dict(in_channels=3, out_channels=2, kernel_size=3),
        (0, 3, 8),
    ),
    "conv2d": (
        MaskedConv2d,
        nn.Conv2d,
        dict(in_channels=3, out_channels=7, kernel_size=3),
        (2, 3, 9, 11),
    ),
    "conv2d-rect-stride-dil": (
        MaskedConv2d,
        nn.Conv2d,
        dict(
            in_channels=4,
            out_channels=6,
            kernel_size=(2, 3),
            stride=(2, 1),
            dilation=(1, 2),
            padding=(1, 2),
        ),
        (2, 4, 10, 9),
    ),
    "conv2d-groups": (
        MaskedConv2d,
        nn.Conv2d,
        dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, padding=1),
        (2, 4, 7, 7),
    ),
    "conv2d-same-asym": (
        MaskedConv2d,
        nn.Conv2d,
        dict(in_channels=3, out_channels=5, kernel_size=(2, 4), padding="same", dilation=(3, 1)),
        (2, 3, 8, 9),
    ),
    "conv2d-replicate": (
        MaskedConv2d,
        nn.Conv2d,
        dict(
            in_channels=3, out_channels=4, kernel_size=3, padding=(1, 2), padding_mode="replicate"
        ),
        (2, 3, 6, 7),
    ),
    "conv2d-reflect-same": (
        MaskedConv2d,
        nn.Conv2d,
        dict(
            in_channels=2,
            out_channels=3,
            kernel_size=(3, 2),
            padding="same",
            padding_mode="reflect",
        ),
        (1, 2, 6, 7),
    ),
    "conv2d-circular": (
        MaskedConv2d,
        nn.Conv2d,
        dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="circular"),
        (2, 2, 5, 5),
    ),
}


def make_pair(case, dtype=torch.float64, density=0.4, seed=0):
    """(masked layer with a random mask, plain twin with the same parameters, mask, input)."""
    masked_cls, plain_cls, kwargs, in_shape = CASES[case]
    torch.manual_seed(seed)
    layer = masked_cls(**kwargs, dtype=dtype)
    plain = plain_cls(**kwargs, dtype=dtype)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")})
    mask = torch.rand(layer.weight.shape) < density
    layer.set_mask(mask)
    x = torch.randn(in_shape, dtype=dtype)
    return layer, plain, mask, x


def reference(plain, mask, x):
    """Output and grads (input, weight, bias) of the plain layer run with weight ⊙ mask."""
    x = x.detach().clone().requires_grad_(True)
    params = {k: p.detach().clone().requires_grad_(True) for k, p in plain.named_parameters()}
    used = dict(params, weight=params["weight"] * mask)
    out = functional_call(plain, used, (x,))
    grads = torch.autograd.grad(out, [x, *params.values()], torch.ones_like(out), allow_unused=True)
    return out, dict(zip(["input", *params], grads))


def run_layer(layer, x):
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(torch.ones_like(out))
    params = getattr(layer, "_orig_mod", layer).named_parameters()  # unwrap torch.compile
    grads = {"input": x.grad, **{k: p.grad for k, p in params}}
    return out, grads


# --------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("case", CASES)
def test_matches_plain_layer_with_masked_weight(case):
    layer, plain, mask, x = make_pair(case)
    out, grads = run_layer(layer, x)
    ref_out, ref_grads = reference(plain, mask, x)
    torch.testing.assert_close(out, ref_out)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], msg=lambda m, n=name: f"grad {n}: {m}")
    assert torch.equal(grads["weight"][~mask], torch.zeros_like(grads["weight"][~mask]))


@pytest.mark.parametrize("case", ["linear", "linear-wide", "conv1d-reflect", "conv2d-groups"])
def test_float32(case):
    layer, plain, mask, x = make_pair(case, dtype=torch.float32)
    out, grads = run_layer(layer, x)
    ref_out, ref_grads = reference(plain, mask, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads["weight"], ref_grads["weight"], rtol=1e-4, atol=1e-4)
    assert (grads["weight"][~mask] == 0).all()


@pytest.mark.parametrize(
    "case",
    ["linear", "linear-3d-nobias", "conv1d-groups-nobias", "conv2d-same-asym", "conv2d-circular"],
)
@pytest.mark.parametrize("garbage", ["large", "inf", "nan"])
def test_pruned_values_never_matter(case, garbage):
    layer, _, mask, x = make_pair(case)
    out, grads = run_layer(layer, x)
    with torch.no_grad():
        fill = {
            "large": 1e30 * torch.randn(int((~mask).sum()), dtype=layer.weight.dtype),
            "inf": torch.tensor(float("inf"), dtype=layer.weight.dtype),
            "nan": torch.tensor(float("nan"), dtype=layer.weight.dtype),
        }[garbage]
        layer.weight[~mask] = fill
    out2, grads2 = run_layer(layer, x)
    assert torch.equal(out, out2)
    for name in grads:
        assert torch.equal(grads[name], grads2[name]), name
    assert (grads2["weight"][~mask] == 0).all()


def test_non_contiguous_input():
    layer, plain, mask, _ = make_pair("linear")
    x = torch.randn(41, 18, dtype=torch.float64).t()[::2]  # (9, 41), strided
    assert not x.is_contiguous()
    torch.testing.assert_close(run_layer(layer, x)[0], reference(plain, mask, x)[0])
    conv, plain, mask, _ = make_pair("conv2d")
    x = torch.randn(2, 11, 9, 3, dtype=torch.float64).permute(0, 3, 2, 1)  # (2, 3, 9, 11)
    assert not x.is_contiguous()
    out, grads = run_layer(conv, x)
    ref_out, ref_grads = reference(plain, mask, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grads["weight"], ref_grads["weight"])


def test_all_pruned_and_all_kept():
    layer, plain, _, x = make_pair("linear")
    layer.set_mask(torch.zeros_like(layer.mask))
    assert layer.density == 0.0
    torch.testing.assert_close(layer(x), plain.bias.expand(9, -1))
    layer.set_mask(torch.ones_like(layer.mask))
    assert layer.density == 1.0
    torch.testing.assert_close(layer(x), plain(x))


# --------------------------------------------------------------------------- API of a layer
def test_isinstance_keys_and_repr():
    layer = MaskedConv2d(3, 4, 3)
    assert isinstance(layer, nn.Conv2d)
    assert list(layer.state_dict()) == ["weight", "bias", "weight_mask_packed"]
    assert layer.weight_mask_packed.dtype == torch.uint8
    assert tuple(layer.weight_mask_packed.shape) == sl.ops.packed_shape(layer.weight.shape)
    assert layer.density == 1.0 and layer.mask.all()
    layer.set_mask(torch.arange(108).reshape(4, 3, 3, 3) % 4 == 0)
    assert layer.density == 0.25
    assert "density=0.2500" in repr(layer)
    layer.mask = torch.ones(4, 3, 3, 3, dtype=torch.bool)  # property setter
    assert layer.density == 1.0


def test_set_mask_errors():
    layer = MaskedLinear(5, 3)
    with pytest.raises(ValueError, match=r"mask: expected shape \[3, 5\].*got \[5, 3\]"):
        layer.set_mask(torch.ones(5, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask: expected dtype torch.bool.*torch.float32"):
        layer.set_mask(torch.ones(3, 5))
    with pytest.raises(TypeError, match="mask: expected a torch.Tensor"):
        layer.set_mask([[True] * 5] * 3)
    assert layer.density == 1.0


def test_from_dense_shares_parameters_and_to_dense_copies():
    dense = nn.Conv1d(2, 3, 3, padding="same", padding_mode="reflect")
    hook_calls = []
    dense.register_forward_hook(lambda *_: hook_calls.append(1))
    mask = torch.rand(3, 2, 3) < 0.5
    layer = MaskedConv1d.from_dense(dense, mask)
    assert layer.weight is dense.weight and layer.bias is dense.bias
    assert "weight_mask_packed" not in dense._buffers  # the source is not modified
    assert torch.equal(layer.mask, mask)
    x = torch.randn(2, 2, 7)
    layer(x)
    assert hook_calls == [1]
    back = layer.to_dense()
    assert type(back) is nn.Conv1d and back.weight is not layer.weight
    assert list(back.state_dict()) == ["weight", "bias"]
    torch.testing.assert_close(back(x), layer(x))
    assert (back.weight[~mask] == 0).all()
    with pytest.raises(TypeError, match="layer: expected a torch.nn.modules.linear.Linear"):
        MaskedLinear.from_dense(dense)
    with pytest.raises(TypeError, match="layer: already a masked layer"):
        MaskedConv1d.from_dense(layer)


def test_module_moves_keep_mask():
    layer, _, mask, x = make_pair("linear", dtype=torch.float32)
    layer.double()
    assert layer.weight.dtype == torch.float64
    assert layer.weight_mask_packed.dtype == torch.uint8  # buffers of ints are not cast
    assert torch.equal(layer.mask, mask)
    layer.to("meta")
    assert "density=?" in repr(layer)


# --------------------------------------------------------------------------- copies and state
def _roundtrip_pickle(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("case", ["linear", "conv1d-circular-same", "conv2d-same-asym"])
def test_copies_keep_mask_and_output(case, copier):
    layer, _, mask, x = make_pair(case)
    clone = copy.deepcopy(layer) if copier == "deepcopy" else _roundtrip_pickle(layer)
    assert type(clone) is type(layer)
    assert torch.equal(clone.mask, mask)
    assert clone.weight_mask_packed.data_ptr() != layer.weight_mask_packed.data_ptr()
    torch.testing.assert_close(clone(x), layer(x), rtol=0, atol=0)
    clone.set_mask(~mask)  # independent copies
    assert torch.equal(layer.mask, mask)


def test_state_dict_round_trip_loads_mask():
    src, _, mask, x = make_pair("conv2d-groups")
    dst = MaskedConv2d(**CASES["conv2d-groups"][2], dtype=torch.float64)
    buffer = dst.weight_mask_packed
    dst.load_state_dict(src.state_dict())
    assert dst.weight_mask_packed is buffer  # loaded in place
    assert torch.equal(dst.mask, mask)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # The mask key is required (strict), and a plain layer's state dict lacks it.
    with pytest.raises(RuntimeError, match="weight_mask_packed"):
        dst.load_state_dict({"weight": src.weight, "bias": src.bias})
    # A loaded mask must be one pack_mask makes: uint8, its shape, padding bits clear (with
    # them set, a pruned layer could count as full and run the unmasked product).
    state = src.state_dict()
    for bad, message in [
        (state["weight_mask_packed"].float(), "expected a packed mask .*got torch.float32"),
        (state["weight_mask_packed"][:, :-1], r"expected a packed mask .*of shape \["),
        (torch.full_like(state["weight_mask_packed"], 255), "has padding bits set"),
    ]:
        with pytest.raises(ValueError, match=f"weight_mask_packed: {message}"):
            dst.load_state_dict({**state, "weight_mask_packed": bad})
    assert torch.equal(dst.mask, mask)  # unchanged by the refused loads


# --------------------------------------------------------------------------- torch.compile
# fullgraph=True makes any graph break an error; forward and backward graphs are both compiled.
# Inductor (C++ code generation) for the linear layer; measured cold on 2 busy cores it took
# 10 s for the linear and 17 s / 6 s for the convolutions, against 1-2 s with aot_eager (which
# still traces the ops' fake kernels and autograd), so the convolutions use aot_eager.
@pytest.mark.parametrize(
    "case, backend",
    [
        ("linear-3d-nobias", "inductor"),
        ("conv1d-circular-same", "aot_eager"),
        ("conv2d-same-asym", "aot_eager"),
    ],
)
def test_compile_fullgraph(case, backend):
    torch._dynamo.reset()
    layer, plain, mask, x = make_pair(case, dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    out, grads = run_layer(compiled, x)
    ref_out, ref_grads = run_layer(layer, x)
    torch.testing.assert_close(out, ref_out)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name])
    assert (grads["weight"][~mask] == 0).all()
    # A new mask (same buffer, changed values) must be honoured without recompiling stale data.
    layer.set_mask(~mask)
    torch.testing.assert_close(compiled(x), layer(x))


# --------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, store_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    # A file store: no port to race for, and no store server that leaves with rank 0.
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # every rank starts with different weights and masks
        model = nn.Sequential(MaskedLinear(12, 16), nn.ReLU(), MaskedConv1d(1, 2, 3))
        for layer in (model[0], model[2]):
            layer.set_mask(torch.rand(layer.weight.shape) < 0.5)
        ddp = DDP(model)  # broadcasts parameters and buffers from rank 0
        masks = [model[0].mask, model[2].mask]
        gathered = [[torch.empty_like(m) for m in masks] for _ in range(world)]
        for i, m in enumerate(masks):
            dist.all_gather([g[i] for g in gathered], m)
        for other in gathered:
            assert all(torch.equal(a, b) for a, b in zip(other, masks)), "masks differ"
        # Rank 0 changes its mask after wrapping: broadcast_buffers re-syncs before forward.
        if rank == 0:
            model[0].set_mask(torch.rand(16, 12, generator=torch.Generator().manual_seed(7)) < 0.3)
        x = torch.randn(4, 1, 12)
        ddp(x).square().sum().backward()
        expected = torch.rand(16, 12, generator=torch.Generator().manual_seed(7)) < 0.3
        assert torch.equal(model[0].mask, expected), f"rank {rank}: buffer not broadcast"
        for layer in (model[0], model[2]):
            assert (layer.weight.grad[~layer.mask] == 0).all(), "nonzero grad at pruned weight"
            assert layer.weight.grad[layer.mask].abs().sum() > 0
        del ddp  # its reducer holds gloo work: free it while the group is alive
        dist.barrier()  # no rank closes its connections while another still uses them
    finally:
        dist.destroy_process_group()


def test_ddp_broadcasts_mask_and_keeps_pruned_grads_zero(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (4, 8, 1, 1), (2, 1, 1, 3)])
@pytest.mark.parametrize("form", ["packed", "bool"])
def test_masked_conv_full_mask_shortcut_is_exact(shape, form):
    """A mask that keeps every weight skips the mask passes (CPU): results and gradients must be
    the plain convolution's, and clearing any one bit (the last, in a partial byte or not) must
    bring the mask back."""
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, shape[1], 5, 6, dtype=torch.float64, requires_grad=True)
    for keep_last in (True, False):
        keep = torch.ones(shape, dtype=torch.bool)
        keep.view(-1)[-1] = keep_last
        mask = sl.pack_mask(keep) if form == "packed" else keep
        out = sl.ops.masked_conv2d(x, weight, mask, None, [1, 1], [1, 1], [1, 1], 1)
        ref = torch.nn.functional.conv2d(x, weight * keep, None, 1, 1)
        gy = torch.randn_like(ref)
        got = torch.autograd.grad(out, [x, weight], gy)
        want = torch.autograd.grad(ref, [x, weight], gy)
        torch.testing.assert_close(out, ref)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        assert bool((got[1].view(-1)[-1] == 0) != keep_last)


def test_masked_linear_full_mask_runs_torch_linear_until_the_mask_changes(monkeypatch):
    """A mask that keeps every weight runs torch's linear (no masking); any write to the mask
    (in place, set_mask, load_state_dict) brings the masked op back, and its gradients."""
    calls = []
    masked_op = sl.nn.masked.ops.masked_linear
    monkeypatch.setattr(
        sl.nn.masked.ops, "masked_linear", lambda *a: calls.append(1) or masked_op(*a)
    )
    torch.manual_seed(0)
    layer = MaskedLinear(19, 7, dtype=torch.float64)
    x = torch.randn(5, 19, dtype=torch.float64)

    def check(keep: torch.Tensor, masked: bool) -> None:
        calls.clear()
        out = layer(x)
        assert bool(calls) == masked
        ref = nn.functional.linear(x, layer.weight * keep, layer.bias)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        layer.weight.grad = None
        out.sum().backward()
        assert bool((layer.weight.grad[~keep] == 0).all())

    full = torch.ones(7, 19, dtype=torch.bool)
    check(full, masked=False)
    layer.weight_mask_packed[3, 2] &= 0b1111_1110  # in place: weight (3, 16) pruned
    partial = full.clone()
    partial[3, 16] = False
    check(partial, masked=True)
    layer.set_mask(full)
    check(full, masked=False)
    other = MaskedLinear(19, 7, dtype=torch.float64)
    other.set_mask(partial)
    layer.load_state_dict({**layer.state_dict(), "weight_mask_packed": other.weight_mask_packed})
    check(partial, masked=True)
    with torch.inference_mode():  # no version counter: the masked op, always correct
        frozen, x = MaskedLinear(4, 3), torch.ones(2, 4)
        torch.testing.assert_close(frozen(x), nn.Linear.forward(frozen, x))


@pytest.mark.parametrize(
    "cls, kwargs, shape, torch_conv",
    [
        (MaskedConv2d, {"padding": 1}, (2, 3, 8, 7), True),
        (MaskedConv2d, {"padding": "same", "padding_mode": "reflect"}, (2, 3, 5, 6), True),
        (MaskedConv2d, {"stride": 2, "dilation": 2}, (1, 3, 9, 9), True),
        (MaskedConv2d, {"groups": 3, "padding": 1}, (2, 3, 2, 2), True),  # no im2col form
        (MaskedConv2d, {"padding": 1}, (2, 3, 2, 2), False),  # 4 positions: the im2col form
        (MaskedConv2d, {"padding": "valid"}, (2, 3, 4, 4), False),  # 2x2 output
        (MaskedConv1d, {"padding": 1, "padding_mode": "circular"}, (2, 3, 3), True),
    ],
)
def test_masked_conv_full_mask_runs_torch_conv_except_where_im2col_is_faster(
    monkeypatch, cls, kwargs, shape, torch_conv
):
    """A mask that keeps every weight runs torch's convolution, except on CPU 2-D outputs of at
    most 4 positions per image, where the masked op's im2col form is faster; pruning a weight
    brings the masked op back. Outputs and gradients match the reference on every path."""
    calls = []
    masked_op = cls._op
    monkeypatch.setattr(cls, "_op", staticmethod(lambda *a: calls.append(1) or masked_op(*a)))
    torch.manual_seed(0)
    layer = cls(3, 6, 3, dtype=torch.float64, **kwargs)
    dense = layer._dense_cls(3, 6, 3, dtype=torch.float64, **kwargs)
    x = torch.randn(*shape, dtype=torch.float64)

    def check(keep: torch.Tensor, masked: bool) -> None:
        calls.clear()
        out = layer(x)
        assert bool(calls) == masked
        with torch.no_grad():
            dense.weight.copy_(layer.weight * keep)
            dense.bias.copy_(layer.bias)
        torch.testing.assert_close(out, dense(x), rtol=0, atol=1e-12)
        layer.weight.grad = None
        out.sum().backward()
        assert bool((layer.weight.grad[~keep] == 0).all())

    full = torch.ones(layer.weight.shape, dtype=torch.bool)
    check(full, masked=not torch_conv)
    partial = full.clone()
    partial[1, 0, 0] = False
    layer.set_mask(partial)
    check(partial, masked=True)
    layer.set_mask(full)
    check(full, masked=not torch_conv)
