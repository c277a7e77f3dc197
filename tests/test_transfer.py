"""Ticket transfer: the transfer model's known answers (new head, masks, start weights of each
reset, random tickets' per-layer densities, a frozen body and a fixed mask after training),
input-shape conversion, and the `transfer` command end to end on MNIST-1D → its shifted
variant (20 iterations per training)."""

import dataclasses
import json

import pytest
import torch
from conftest import cli_error

import sparse_lottery as sl
from sparse_lottery.__main__ import build_parser, main
from sparse_lottery.analysis import transfer, transfer_model
from sparse_lottery.analysis.transfer import segment_dir
from sparse_lottery.analysis.transfer_model import (
    Target,
    as_input_shape,
    freeze_body,
    source_masks,
)
from sparse_lottery.data import ArrayData
from sparse_lottery.lottery import Run
from sparse_lottery.lottery.cli import experiment_from_args
from sparse_lottery.lottery.trainer import Segment, train_segment

HEAD = "fc3"


def _flags(root, data_dir):
    return ["--steps", "20it", "--prune-fraction", "0.5", "--root", str(root), "--data-dir",
            str(data_dir), "--device", "cpu", "--no-progress", "--eval-every", "10it"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """`transfer` via the CLI: level 1, late reset, both freeze modes, both baselines."""
    root = tmp_path_factory.mktemp("runs")
    flags = _flags(root, data_dir)
    argv = ["-q", "transfer", "--target", "mnist1d_shifted", "--levels", "1", "--resets",
            "late", *flags]  # fmt: skip
    assert main(argv) == 0
    exp, runtime = experiment_from_args(build_parser().parse_args(argv[1:]))
    run = Run(exp, runtime, 0)
    return run, Target(run, "mnist1d_shifted")


def _body(state):
    return {k: v for k, v in state.items() if not k.startswith(HEAD + ".")}


def test_cli_writes_results_and_resumes_nothing_twice(finished):
    run, target = finished
    for name in ("transfer.json", "transfer.md", "transfer.png"):
        assert (target.folder / name).stat().st_size > 0, name
    result = json.loads((target.folder / "transfer.json").read_text())
    got = [(r["level"], r["kind"], r["reset"], r["freeze"]) for r in result["rows"]]
    assert got == [
        (0, "dense", "late", "frozen"),
        (0, "dense", "late", "finetune"),
        (1, "ticket", "late", "frozen"),
        (1, "random", "late", "frozen"),
        (1, "ticket", "late", "finetune"),
        (1, "random", "late", "finetune"),
    ]
    assert result["target"] == "mnist1d_shifted" and result["steps"] == 20
    for r in result["rows"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["density"] == (1.0 if r["kind"] == "dense" else run.level(1)["density"])
    assert "| frozen | 1 | 0.5" in (target.folder / "transfer.md").read_text()
    done = segment_dir(target, 1, "ticket", "late", "frozen") / "final.ckpt"
    before = done.stat().st_mtime_ns
    again = transfer(run, "mnist1d_shifted", [1], resets=["late"], write=False)
    assert done.stat().st_mtime_ns == before  # nothing retrained
    assert again["rows"] == result["rows"]


def test_head_is_replaced_and_resets_start_from_the_right_weights(finished):
    run, target = finished
    reference = run.build(0)
    level_masks = run.level_masks(1, reference)
    late = run.weights(run.level_dir(1) / "final.ckpt", "final", reference)
    theta0 = run.init_weights(reference)
    starts = {}
    for reset in ("late", "init", "fresh"):
        model = transfer_model(run, target, 1, "ticket", reset, "finetune")
        assert model.fc3.out_features == target.classes and sl.masks(model)["fc3.weight"].all()
        body = _body(model.state_dict())
        masks = sl.masks(model)
        for key, mask in level_masks.items():
            if key.startswith(HEAD):
                continue
            assert torch.equal(masks[key], mask), key  # the ticket's mask, bitwise
            assert not body[key][~mask].any(), key  # pruned entries are zero
        starts[reset] = body
    for reset, source in (("late", late), ("init", theta0)):
        for key, value in starts[reset].items():
            if key in level_masks:
                value_want = torch.where(level_masks[key], source[key], 0.0)
                assert torch.equal(value, value_want), (reset, key)
            elif not key.endswith("_packed"):
                assert torch.equal(value, source[key]), (reset, key)
    for key in ("fc1.weight", "fc2.weight", "fc1.bias"):
        assert not torch.equal(starts["fresh"][key], starts["late"][key])
        assert not torch.equal(starts["fresh"][key], starts["init"][key])
    heads = [transfer_model(run, target, 1, "ticket", r, "frozen").fc3.weight for r in starts]
    assert all(torch.equal(h, heads[0]) for h in heads)  # one head init for every configuration


def test_random_ticket_has_the_levels_per_layer_densities(finished):
    run, target = finished
    ticket, random = source_masks(run, 1, "ticket"), source_masks(run, 1, "random")
    assert list(ticket) == list(random) == ["fc1.weight", "fc2.weight"]
    for key in ticket:
        assert int(ticket[key].sum()) == int(random[key].sum()), key
        assert not torch.equal(ticket[key], random[key]), key
    model = transfer_model(run, target, 1, "random", "late", "finetune")
    dense_trained = run.weights(run.level_dir(0) / "final.ckpt", "final", run.build(0))
    masks = sl.masks(model)
    for key in ticket:
        assert torch.equal(masks[key], random[key])
        want = torch.where(random[key], dense_trained[key], 0.0)
        assert torch.equal(model.state_dict()[key], want), key
    assert all(m.all() for m in source_masks(run, 1, "dense").values())


@pytest.mark.parametrize("freeze", ["frozen", "finetune"])
def test_training_keeps_the_mask_and_a_frozen_body(finished, tmp_path, freeze):
    run, target = finished
    model = transfer_model(run, target, 1, "ticket", "init", freeze)
    before_masks = sl.masks(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seg = Segment(target.folder / f"check_{freeze}", run.tag, target.exp, run.seeds, 0, 10, 10)
    runtime = run.runtime
    if freeze == "frozen":  # as `train_transfer` does
        runtime = dataclasses.replace(runtime, execution="dense")
    train_segment(model, seg, target.data, runtime, torch.device("cpu"))
    after = model.state_dict()
    for key, mask in before_masks.items():
        assert torch.equal(sl.masks(model)[key], mask), key  # bitwise, every masked layer
        assert not after[key][~mask].any(), key
    assert not torch.equal(after["fc3.weight"], before["fc3.weight"])  # the head trained
    changed = [k for k, v in _body(after).items() if not torch.equal(v, before[k])]
    if freeze == "frozen":
        assert changed == []  # the body is bitwise unchanged
    else:
        assert {"fc1.weight", "fc2.weight"} <= set(changed)


def test_input_shapes_are_converted_or_refused(finished):
    grey = ArrayData(torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2]), 3)
    x, y = as_input_shape(grey, (3, 32, 32)).batch(torch.arange(3), "cpu")
    assert x.shape == (3, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2]) and y.tolist() == [0, 1, 2]
    assert as_input_shape(grey, (1, 28, 28)) is grey
    with pytest.raises(ValueError, match=r"target: expected samples of shape \(40,\).*got \(1, 28"):
        as_input_shape(grey, (40,))
    run, _ = finished
    with pytest.raises(ValueError, match="target: expected a dataset in"):
        Target(run, "mnist2d")
    with pytest.raises(ValueError, match="target: expected samples of shape"):
        Target(run, "digits")  # (1, 8, 8) images cannot feed a (40,) MLP


def test_bad_arguments_name_the_argument(finished, capsys):
    run, target = finished
    with pytest.raises(ValueError, match=r"levels: expected IMP levels >= 1.*got \[0\]"):
        transfer(run, "mnist1d_shifted", [0])
    with pytest.raises(ValueError, match=r"resets: expected .*'late'.*got \['late', 'rewind'\]"):
        transfer(run, "mnist1d_shifted", [1], resets=["late", "rewind"])
    with pytest.raises(ValueError, match="freeze: expected one of"):
        transfer_model(run, target, 1, "ticket", "late", "partly")
    flags = ["--root", str(run.runtime.root), "--data-dir", run.runtime.data_dir]
    assert "--target: required" in cli_error(capsys, ["transfer", "--levels", "1", *flags])
    err = cli_error(capsys, ["transfer", "--target", "mnist1d_shifted", "--levels", "1",
                             "--freeze", "x"])  # fmt: skip
    assert "--freeze: expected distinct names" in err
    err = cli_error(capsys, ["-q", "transfer", "--target", "mnist1d_shifted", "--levels", "1",
                             "--target-training", "speed=3", *flags])  # fmt: skip
    assert "--target-training: expected 'field=value'" in err
    err = cli_error(capsys, ["-q", "transfer", "--target", "mnist1d_shifted", "--levels", "1",
                             "--target-training", "steps=abc", *flags])  # fmt: skip
    assert "--target-training: --steps: expected '<n>it' or '<n>ep'" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["transfer", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--target", "--levels", "--resets", "--freeze", "--baselines",
                 "--target-training", "--root", "--steps"):  # fmt: skip
        assert flag in text, flag


def test_shifted_variant_differs_from_mnist1d(data_dir):
    source, _ = sl.data.load_dataset("mnist1d", data_dir)
    shifted, test = sl.data.load_dataset("mnist1d_shifted", data_dir)
    assert shifted.input_shape == source.input_shape == (40,) and shifted.num_classes == 10
    assert (len(shifted), len(test)) == (4000, 1000)
    assert not torch.equal(shifted.x, source.x)
    assert (data_dir / "mnist1d_shifted.npz").exists()


def test_frozen_norm_layers_keep_their_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 2))  # fmt: skip
    freeze_body(model, "2")
    stats = model[1].running_mean.clone(), model[1].running_var.clone()
    model.train()
    model(torch.randn(8, 3)).sum().backward()
    assert torch.equal(model[1].running_mean, stats[0])
    assert torch.equal(model[1].running_var, stats[1])
    assert model[0].weight.grad is None and model[2].weight.grad is not None


def test_results_files_keep_the_rows_of_earlier_calls(finished):
    """A second call into the same folder (same target training) with other resets adds its
    rows to transfer.json/.md; the earlier trainings' rows stay."""
    run, target = finished
    before = json.loads((target.folder / "transfer.json").read_text())["rows"]
    result = transfer(run, "mnist1d_shifted", [1], resets=["init"], freezes=["frozen"],
                      baselines=[])  # fmt: skip
    assert [(r["reset"], r["kind"]) for r in result["rows"]] == [("init", "ticket")]
    rows = json.loads((target.folder / "transfer.json").read_text())["rows"]
    key = lambda r: (r["level"], r["kind"], r["reset"], r["freeze"])  # noqa: E731
    assert [key(r) for r in rows] == [key(r) for r in before[:2]] + [
        (1, "ticket", "late", "frozen"),
        (1, "random", "late", "frozen"),
        (1, "ticket", "init", "frozen"),
        (1, "ticket", "late", "finetune"),
        (1, "random", "late", "finetune"),
    ]
    assert rows[4] == result["rows"][0]
