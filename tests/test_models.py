"""The model zoo (`sparse_lottery.models`): shapes, classifier names, gradients, sparsify,
parameter counts, determinism and argument errors."""

import sys

import pytest
import torch
from torch import nn

import sparse_lottery as sl
from sparse_lottery.models import MODELS, ModelSpec, get_model, model_names

CLASSES = 7
NATURAL_SHAPES = {
    "lenet_300_100": (1, 28, 28),
    "mnist1d_mlp": (40,),
    "resnet18": (3, 64, 64),  # small ImageNet-style input, to be quick
    "resnet50": (3, 64, 64),
}
NAMES = model_names()


def natural_shape(name):
    return NATURAL_SHAPES.get(name, (3, 32, 32))


def build(name, num_classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    return get_model(name, num_classes, natural_shape(name))


def batch(name, seed=1):
    return torch.randn((2, *natural_shape(name)), generator=torch.Generator().manual_seed(seed))


def test_model_names():
    assert NAMES == [
        "lenet_300_100",
        "mnist1d_mlp",
        "conv2",
        "conv4",
        "conv6",
        "resnet20",
        "resnet32",
        "resnet56",
        "vgg11",
        "vgg16",
        "vgg19",
        "mobilenetv2",
        "resnet18",
        "resnet50",
    ]
    assert list(MODELS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_spec_fields(name):
    spec = MODELS[name]
    assert isinstance(spec, ModelSpec) and spec.name == name
    assert spec.description.strip() and "\n" not in spec.description
    assert "(" in spec.description  # names its paper: "(Author et al. year)"
    with pytest.raises(AttributeError):
        spec.name = "other"  # frozen


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_output_layer(name):
    model = build(name)
    x = batch(name)
    for train in (False, True):
        model.train(train)
        out = model(x)
        assert out.shape == (2, CLASSES), f"train={train}"
        assert torch.isfinite(out).all()
    # The named output layer is an nn.Linear to the classes and produces the model's output.
    layer = dict(model.named_modules())[MODELS[name].output_layer]
    assert type(layer) is nn.Linear and layer.out_features == CLASSES
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    model.eval()
    out = model(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], out)


@pytest.mark.parametrize("name", NAMES)
def test_backward_gives_finite_grads(name):
    model = build(name).train()
    loss = nn.functional.cross_entropy(model(batch(name)), torch.tensor([0, CLASSES - 1]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_sparsify_keeps_output(name):
    model = build(name).eval()
    x = batch(name)
    with torch.no_grad():
        expected = model(x)
        n_params = sum(p.numel() for p in model.parameters())
        model = sl.sparsify(model)
        out = model(x)
    torch.testing.assert_close(out, expected)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert sl.density(model) == 1.0
    layer = dict(model.named_modules())[MODELS[name].output_layer]
    assert type(layer).__name__ == "MaskedLinear"
    # Every Linear / Conv2d was converted: none of the plain types is left.
    assert not [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_manual_seed(name):
    a, b, c = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# Hand-derived parameter counts for 10 classes (weights + biases + BN affine parameters).
PARAM_COUNTS = {
    # 784*300+300 + 300*100+100 + 100*10+10
    "lenet_300_100": 266_610,
    # 40*500+500 + 500*500+500 + 500*10+10
    "mnist1d_mlp": 276_010,
    # convs 3*64*9+64 = 1,792 and 64*64*9+64 = 36,928; fc1 16*16*64*256+256 = 4,194,560;
    # fc2 256*256+256 = 65,792; fc3 256*10+10 = 2,570
    "conv2": 4_301_642,
    # ResNet-20 (bias-free convs, BN = 2 per channel):
    #   stem 3*16*9 + 32 = 464
    #   stage 1: 3 blocks * (2 * 16*16*9 + 2*32) = 3 * 4,672 = 14,016
    #   stage 2: first block 16*32*9 + 32*32*9 + 2*64 + shortcut (16*32 + 64) = 14,528,
    #            two blocks 2 * (2 * 32*32*9 + 2*64) = 37,120 -> 51,648
    #   stage 3: first block 32*64*9 + 64*64*9 + 2*128 + shortcut (32*64 + 128) = 57,728,
    #            two blocks 2 * (2 * 64*64*9 + 2*128) = 147,968 -> 205,696
    #   fc 64*10+10 = 650; total 464 + 14,016 + 51,648 + 205,696 + 650 = 272,474
    "resnet20": 272_474,
    # 13 convs with bias + BN (1,920 + 37,056 + 74,112 + 147,840 + 295,680 + 2 * 590,592
    # + 1,181,184 + 5 * 2,360,832 = 14,723,136) + fc 512*10+10 = 5,130
    "vgg16": 14_728_266,
    # torchvision's resnet18 with a 10-class fc: 11,689,512 - (512*1000+1000) + (512*10+10)
    "resnet18": 11_181_642,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts(name):
    model = build(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


def test_mlps_flatten_any_shape():
    assert get_model("lenet_300_100", 10, (784,)).fc1.in_features == 784
    assert get_model("lenet_300_100", 10, (1, 28, 28)).fc1.in_features == 784
    model = get_model("mnist1d_mlp", 3, (1, 40))
    assert model.fc1.in_features == 40
    assert model(torch.zeros(2, 1, 40)).shape == (2, 3)


@pytest.mark.parametrize("name", ["conv2", "conv4", "conv6", "resnet20", "vgg11", "mobilenetv2"])
def test_conv_models_take_other_images(name):
    model = get_model(name, 4, (1, 28, 28)).eval()  # MNIST-like grey images
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


def test_conv_fc_width_follows_image_size():
    assert get_model("conv6", 10, (3, 32, 32)).fc1.in_features == 4 * 4 * 256
    assert get_model("conv4", 10, (1, 28, 28)).fc1.in_features == 7 * 7 * 128


def test_unknown_name():
    with pytest.raises(ValueError) as info:
        get_model("resnet21", 10, (3, 32, 32))
    message = str(info.value)
    assert message.startswith("model: unknown 'resnet21'; choose one of [")
    assert all(repr(n) in message for n in NAMES)
    with pytest.raises(ValueError, match="model: unknown None"):
        get_model(None, 10, (3, 32, 32))


@pytest.mark.parametrize(
    ("name", "shape", "needs"),
    [
        ("conv2", (784,), "(channels, height, width)"),
        ("conv6", (3, 4, 4), "at least 8x8 pixels"),
        ("resnet20", (32, 32), "(channels, height, width)"),
        ("vgg16", (3, 8, 8), "at least 16x16 pixels"),
        ("mobilenetv2", (1, 3, 32, 32), "(channels, height, width)"),
        ("resnet18", (3, 16, 16), "at least 32x32 pixels"),
        ("resnet50", (1, 64, 64), "3-channel images"),
        ("lenet_300_100", (), "non-empty tuple of positive ints"),
        ("mnist1d_mlp", (40, 0), "non-empty tuple of positive ints"),
        ("conv4", (3, 32.0, 32), "non-empty tuple of positive ints"),
    ],
)
def test_bad_input_shape(name, shape, needs):
    with pytest.raises(ValueError) as info:
        get_model(name, 10, shape)
    message = str(info.value)
    assert message.startswith(f"input_shape: {name} ")
    assert needs in message
    assert repr(tuple(shape)) in message


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True, "10"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match=r"num_classes: resnet20 needs a positive int, got"):
        get_model("resnet20", num_classes, (3, 32, 32))


def test_torchvision_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match="resnet18 needs torchvision"):
        get_model("resnet18", 10, (3, 64, 64))
    # The models that do not need torchvision still build.
    assert get_model("resnet20", 10, (3, 32, 32)).fc.out_features == 10
