"""Model-level API: sparsify, masks, load_masks, density, export_dense, torch.nn.utils.prune
interop, global magnitude pruning, and a smoke run of the quick start."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sparse_lottery as sl
from sparse_lottery.nn import MaskedConv1d, MaskedConv2d, MaskedLinear


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2)
        )
        self.conv1d = nn.Conv1d(4, 2, 3)
        self.attn = nn.MultiheadAttention(6, 2)
        self.fc1 = nn.Linear(60, 20)
        self.fc2 = nn.Linear(20, 5)
        self.norm = nn.LayerNorm(20)

    def forward(self, x):
        x = self.features(x)  # (B, 4, 6, 6)
        x = self.conv1d(x.flatten(2))[..., :30]  # (B, 2, 30)
        x, _ = self.attn(*[x.reshape(x.shape[0], 10, 6)] * 3, need_weights=False)
        return self.fc2(torch.relu(self.norm(self.fc1(x.flatten(1)))))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


X = torch.randn(3, 1, 8, 8)
CONVERTIBLE = ["features.0", "features.2", "conv1d", "fc1", "fc2"]


def masked_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, sl.nn.masked._MaskedMixin)]


# --------------------------------------------------------------------------- sparsify
def test_sparsify_converts_in_place_keeping_weights_and_keys():
    model = make_net()
    expected = model(X)
    weights = {n: p for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    assert sl.sparsify(model) is model
    assert masked_names(model) == CONVERTIBLE
    assert type(model.features[0]) is MaskedConv2d and type(model.conv1d) is MaskedConv1d
    assert type(model.fc1) is MaskedLinear
    # MultiheadAttention's out_proj (a Linear subclass whose forward is never called) stays.
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert all(p is weights[n] for n, p in model.named_parameters())  # same Parameter objects
    assert set(model.state_dict()) == keys | {f"{n}.weight_mask_packed" for n in CONVERTIBLE}
    assert sl.density(model) == 1.0
    torch.testing.assert_close(model(X), expected)
    # Idempotent: already-masked layers are left alone.
    layer = model.fc1
    sl.sparsify(model)
    assert model.fc1 is layer


@pytest.mark.parametrize(
    "include, exclude, expected",
    [
        ("fc*", None, ["fc1", "fc2"]),
        (["features.*", "conv1d"], None, ["features.0", "features.2", "conv1d"]),
        (None, "features.*", ["conv1d", "fc1", "fc2"]),
        ("*", ["fc2", "conv*"], ["features.0", "features.2", "fc1"]),
        (lambda name, m: isinstance(m, nn.Conv2d), None, ["features.0", "features.2"]),
        (
            None,
            lambda name, m: m.weight.numel() > 100,
            ["features.0", "features.2", "conv1d", "fc2"],
        ),
    ],
)
def test_sparsify_include_exclude(include, exclude, expected):
    model = sl.sparsify(make_net(), include=include, exclude=exclude)
    assert masked_names(model) == expected


def test_selectors_and_plans_that_match_nothing_are_refused():
    """A glob or plan entry that names no layer is a typo: refused with the layers there are,
    instead of silently selecting nothing. Amounts name their argument."""
    net = make_net()
    with pytest.raises(ValueError, match=r"include: 'fc9' matches no layer; the layers are \["):
        sl.sparsify(net, include=["fc1", "fc9"])
    with pytest.raises(ValueError, match="exclude: 'nothing' matches no layer"):
        sl.sparsify(net, exclude="nothing")
    with pytest.raises(TypeError, match="exclude: expected a glob, a list of globs or a callable"):
        sl.sparsify(net, exclude=2)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got str"):
        sl.sparsify("net")
    assert masked_names(net) == []  # nothing converted by the refused calls
    model = sl.sparsify(net)
    assert sl.sparsify(model, include="fc1") is model  # masked layers count as matches
    with pytest.raises(ValueError, match="exclude: 'fc9' matches no layer"):
        sl.prune(model, 0.2, exclude="fc9")
    with pytest.raises(ValueError, match=r"amount: expected a fraction in \[0, 1\], got 1.5"):
        sl.prune(model, 1.5)
    with pytest.raises(ValueError, match=r"rates\['fc2'\]: expected a fraction in \[0, 1\]"):
        sl.prune(model, 0.2, rates={"fc2": 2.0})
    with pytest.raises(ValueError, match="amount: expected a whole count ≥ 0, got -3"):
        sl.prune(model, -3)
    assert sl.density(model) == 1.0  # the refused calls pruned nothing
    with pytest.raises(ValueError, match=r"mode: the plan names \['fc9'\], not masked layers"):
        sl.set_execution(model, {"fc1": "sparse", "fc9": "sparse"})
    assert sl.set_execution(model, {"fc1": "sparse"}) == {"fc1": "sparse"}
    with pytest.raises(ValueError, match=r"example: expected an input batch of the model, but "
                       r"its forward pass on shape \[2, 7\] failed"):  # fmt: skip
        sl.set_execution(model, "auto", example=torch.randn(2, 7))
    with pytest.warns(UserWarning, match="sparsify: Sequential has no nn.Linear, nn.Conv1d"):
        plain = sl.sparsify(nn.Sequential(nn.ReLU(), nn.Embedding(3, 2)))
    with pytest.raises(ValueError, match="model: has no masked layers"):
        sl.prune(plain, 0.2)


def test_sparsify_root_layer_and_shared_modules():
    root = nn.Linear(4, 3)
    masked = sl.sparsify(root)
    assert type(masked) is MaskedLinear and masked.weight is root.weight
    assert list(sl.masks(masked)) == ["weight"]
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    sl.sparsify(model)
    assert type(model[0]) is MaskedLinear and model[0] is model[2]


def test_sparsify_refuses_torch_pruned_layers():
    model = nn.Sequential(nn.Linear(4, 4))
    prune.random_unstructured(model[0], "weight", 0.5)
    with pytest.raises(ValueError, match="model: module '0'.*from_torch_prune"):
        sl.sparsify(model)


# --------------------------------------------------------------------------- masks
def test_masks_load_masks_density():
    model = sl.sparsify(make_net())
    ms = sl.masks(model)
    assert list(ms) == [f"{n}.weight" for n in CONVERTIBLE]
    state = model.state_dict()
    assert all(ms[k].shape == state[k].shape and ms[k].dtype == torch.bool for k in ms)
    torch.manual_seed(1)
    new = {k: torch.rand(m.shape) < 0.3 for k, m in ms.items()}
    sl.load_masks(model, new)
    for k, m in sl.masks(model).items():
        assert torch.equal(m, new[k])
    kept = sum(int(m.sum()) for m in new.values())
    total = sum(m.numel() for m in new.values())
    assert sl.density(model) == kept / total
    # Partial update with strict=False leaves the other layers alone.
    sl.load_masks(model, {"fc2.weight": torch.ones(5, 20, dtype=torch.bool)}, strict=False)
    assert model.fc2.density == 1.0 and torch.equal(model.fc1.mask, new["fc1.weight"])


def test_load_masks_errors_name_the_key():
    model = sl.sparsify(make_net())
    ms = sl.masks(model)
    before = sl.masks(model)
    with pytest.raises(KeyError, match=r"masks: unknown key\(s\) \['fc3.weight'\]"):
        sl.load_masks(model, {**ms, "fc3.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(KeyError, match=r"masks: missing key\(s\) \['fc2.weight'\]"):
        sl.load_masks(model, {k: v for k, v in ms.items() if k != "fc2.weight"})
    bad_shape = {**ms, "fc1.weight": torch.zeros(20, 59, dtype=torch.bool)}
    with pytest.raises(
        ValueError,
        match=r"masks\['fc1.weight'\]: expected shape \[20, 60\], "
        r"got \[20, 59\]",
    ):
        sl.load_masks(model, bad_shape)
    with pytest.raises(
        TypeError,
        match=r"masks\['fc2.weight'\]: expected a torch.bool tensor, "
        r"got torch.float32",
    ):
        sl.load_masks(model, {**ms, "fc2.weight": torch.zeros(5, 20)})
    # Nothing was changed by the failed calls (validation happens first).
    assert all(torch.equal(before[k], v) for k, v in sl.masks(model).items())
    with pytest.raises(ValueError, match="model: has no masked layers"):
        sl.density(nn.Linear(2, 2))


def test_export_dense():
    model = sl.sparsify(make_net())
    torch.manual_seed(2)
    sl.load_masks(model, {k: torch.rand(m.shape) < 0.5 for k, m in sl.masks(model).items()})
    with torch.no_grad():  # garbage in pruned positions must not leak into the export
        for name in CONVERTIBLE:
            layer = model.get_submodule(name)
            layer.weight[~layer.mask] = 1e9
    dense = sl.export_dense(model)
    assert masked_names(dense) == [] and masked_names(model) == CONVERTIBLE
    assert type(dense.fc1) is nn.Linear and type(dense.features[2]) is nn.Conv2d
    assert set(dense.state_dict()) == set(make_net().state_dict())
    for name in CONVERTIBLE:
        layer, plain = model.get_submodule(name), dense.get_submodule(name)
        assert plain.weight is not layer.weight
        assert (plain.weight[~layer.mask] == 0).all()
        assert torch.equal(plain.weight[layer.mask], layer.weight[layer.mask])
    torch.testing.assert_close(dense(X), model(X))
    root = sl.export_dense(sl.sparsify(nn.Conv1d(2, 2, 1)))
    assert type(root) is nn.Conv1d


# --------------------------------------------------------------------------- torch.nn.utils.prune
def test_from_torch_prune_adopts_reparametrisation():
    model = make_net()
    prune.l1_unstructured(model.fc1, "weight", amount=0.4)
    prune.random_unstructured(model.fc1, "weight", amount=0.2)  # a PruningContainer
    prune.ln_structured(model.features[0], "weight", amount=0.5, n=2, dim=0)
    prune.l1_unstructured(model.fc2, "bias", amount=0.5)  # bias pruning is left alone
    expected = model(X)
    orig = model.fc1.weight_orig
    fc1_mask = model.fc1.weight_mask.bool()
    model = sl.from_torch_prune(model)
    assert masked_names(model) == ["features.0", "fc1"]
    assert model.fc1.weight is orig  # same Parameter, original (unzeroed) values
    assert torch.equal(model.fc1.mask, fc1_mask)
    assert not hasattr(model.fc1, "weight_orig") and not hasattr(model.fc1, "weight_mask")
    assert not model.fc1._forward_pre_hooks
    assert hasattr(model.fc2, "bias_orig")
    torch.testing.assert_close(model(X), expected)
    assert "fc1.weight" in model.state_dict()


def test_to_torch_prune_round_trip():
    model = sl.sparsify(make_net())
    torch.manual_seed(3)
    sl.load_masks(model, {k: torch.rand(m.shape) < 0.4 for k, m in sl.masks(model).items()})
    ms, expected = sl.masks(model), model(X)
    weights = {n: model.get_submodule(n).weight for n in CONVERTIBLE}
    model = sl.to_torch_prune(model)
    assert masked_names(model) == []
    for name in CONVERTIBLE:
        layer = model.get_submodule(name)
        assert type(layer) in (nn.Linear, nn.Conv1d, nn.Conv2d)
        assert prune.is_pruned(layer) and layer.weight_orig is weights[name]
        assert torch.equal(layer.weight_mask.bool(), ms[f"{name}.weight"])
    torch.testing.assert_close(model(X), expected)
    model = sl.from_torch_prune(model)
    assert masked_names(model) == CONVERTIBLE
    assert all(torch.equal(ms[k], v) for k, v in sl.masks(model).items())
    assert all(model.get_submodule(n).weight is weights[n] for n in CONVERTIBLE)
    torch.testing.assert_close(model(X), expected)
    root = sl.to_torch_prune(sl.sparsify(nn.Linear(3, 3)))
    assert type(root) is nn.Linear and prune.is_pruned(root)
    assert type(sl.from_torch_prune(root)) is MaskedLinear


# --------------------------------------------------------------------------- quick start
def test_load_mnist1d_generates_and_caches(tmp_path):
    pytest.importorskip("mnist1d", reason="the mnist1d package generates the data")
    from sparse_lottery.quickstart import load_mnist1d

    data = load_mnist1d(tmp_path / "data")
    assert (tmp_path / "data" / "mnist1d.npz").exists()
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    assert data["y"].dtype == torch.long and int(data["y"].max()) == 9
    again = load_mnist1d(tmp_path / "data")  # from the cache
    assert all(torch.equal(data[k], again[k]) for k in data)


def test_quickstart_smoke(tmp_path, caplog):
    import numpy as np

    from sparse_lottery.__main__ import build_parser
    from sparse_lottery.quickstart import QuickstartConfig, run_quickstart

    # A tiny stand-in for the cached data set keeps this test to about a second.
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist1d.npz",
        x=rng.normal(size=(256, 40)),
        y=rng.integers(0, 10, 256),
        x_test=rng.normal(size=(64, 40)),
        y_test=rng.integers(0, 10, 64),
    )
    cfg = QuickstartConfig(
        epochs=1, sparsity=0.8, seed=1, data_dir=str(tmp_path), hidden=64, device="cpu"
    )
    with caplog.at_level("INFO", logger="sparse_lottery.quickstart"):
        result = run_quickstart(cfg)
    assert any("dense epoch 1/1" in r.message for r in caplog.records)
    assert any("sparse epoch 1/1" in r.message for r in caplog.records)
    assert abs(result["density"] - 0.2) < 1e-3
    assert 0 <= result["dense_accuracy"] <= 1 and 0 <= result["sparse_accuracy"] <= 1
    again = run_quickstart(cfg)  # deterministic by seed
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in result.items() if k != "seconds"
    }
    args = build_parser().parse_args(["quickstart", "--epochs", "2", "--data-dir", "d"])
    assert (args.command, args.epochs, args.data_dir, args.sparsity) == ("quickstart", 2, "d", 0.9)


def test_cli_backends(capsys):
    from sparse_lottery.__main__ import main

    assert main(["backends"]) == 0
    assert "| reference | yes |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["no-such-command"])
