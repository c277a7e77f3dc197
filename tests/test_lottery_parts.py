"""The driver's parts that need no training: hyperparameters and their hash, durations, the
learning-rate schedule, checkpoints (atomic, checksummed, refused when corrupt or foreign),
presets and the CLI's flags."""

import dataclasses
import json

import pytest
import torch

from sparse_lottery.lottery import checkpoint, cli
from sparse_lottery.lottery.hparams import (
    Experiment,
    PruningHparams,
    TrainingHparams,
    parse_duration,
    parse_rates,
    seeds,
)
from sparse_lottery.lottery.presets import PRESETS, apply_preset
from sparse_lottery.lottery.schedule import learning_rate


# --------------------------------------------------------------------------- hashing
def test_hash_is_stable_across_versions():
    # Literal values: a change here renames every existing run folder, so it must be deliberate.
    assert Experiment().hash() == HASH_DEFAULT
    assert Experiment(training=TrainingHparams(lr=0.1)).hash() == HASH_LR


def test_hash_depends_only_on_non_default_values():
    a = Experiment(training=TrainingHparams(lr=0.1, optimizer="sgd"))
    b = Experiment(training=TrainingHparams(optimizer="sgd", lr=0.1))
    assert a.hash() == b.hash()
    assert (
        Experiment(training=TrainingHparams(lr=TrainingHparams().lr)).hash() == Experiment().hash()
    )
    assert a.hash() != Experiment(training=TrainingHparams(lr=0.2, optimizer="sgd")).hash()
    assert a.non_default() == {"training": {"lr": 0.1, "optimizer": "sgd"}}
    # A branch's settings go into the hash too.
    assert a.hash({"kind": "reinit"}) != a.hash()


def test_round_trip_and_unknown_fields():
    exp = apply_preset("resnet20_cifar10")
    assert Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        Experiment.from_dict({"training": {"lr": 1.0, "nope": 2}})


@pytest.mark.parametrize(
    "change, flag",
    [
        ({"training": {"optimizer": "rmsprop"}}, "--optimizer"),
        ({"training": {"steps": "10 epochs"}}, "--steps"),
        ({"training": {"lr": -1.0}}, "--lr"),
        ({"pruning": {"rewind": "theta0"}}, "--rewind"),
        ({"pruning": {"prune_fraction": 1.5}}, "--prune-fraction"),
        ({"pruning": {"prune_rates": "fc3:0.1"}}, "--prune-rates"),
        ({"dataset": {"batch_size": 0}}, "--batch-size"),
    ],
)
def test_validation_names_the_flag(change, flag):
    with pytest.raises(ValueError, match=flag):
        apply_preset("mnist1d_mlp", change).validate()


def test_durations_rates_and_seeds():
    assert parse_duration("3ep", 50) == 150 and parse_duration(" 7it ", 50) == 7
    with pytest.raises(ValueError, match="--warmup"):
        parse_duration("5", 10, "--warmup")
    assert parse_rates("fc3=0.1, conv*=0.15") == {"fc3": 0.1, "conv*": 0.15}
    assert seeds(TrainingHparams(), 3) == {"init": 3, "data": 3, "augment": 3}
    assert seeds(TrainingHparams(data_seed=9), 3) == {"init": 3, "data": 9, "augment": 3}


def test_presets_are_valid_and_differ():
    hashes = {name: apply_preset(name).validate().hash() for name in PRESETS}
    assert len(set(hashes.values())) == len(PRESETS)
    assert hashes["mnist1d_mlp"] == Experiment().hash()
    with pytest.raises(ValueError, match="--preset"):
        apply_preset("lenet_cifar")


# --------------------------------------------------------------------------- schedule
def test_learning_rate_schedules():
    step = TrainingHparams(lr=1.0, schedule="step", milestones="2ep,3ep", gamma=0.5)
    assert [learning_rate(step, s, 40, 10) for s in (0, 19, 20, 29, 30, 39)] == [
        1.0, 1.0, 0.5, 0.5, 0.25, 0.25
    ]  # fmt: skip
    cosine = TrainingHparams(lr=2.0, schedule="cosine")
    assert learning_rate(cosine, 0, 100, 1) == 2.0
    assert learning_rate(cosine, 50, 100, 1) == pytest.approx(1.0)
    warm = TrainingHparams(lr=1.0, warmup="4it")
    assert [learning_rate(warm, s, 10, 1) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_header(tmp_path):
    path = tmp_path / "a.ckpt"
    payload = {"w": torch.randn(3, 4), "step": 7, "metrics": [{"acc": 0.5}]}
    checkpoint.save(path, payload, experiment="e1", kind="resume", model="m1", step=7)
    back = checkpoint.load(path, "e1", "resume", "m1")
    assert torch.equal(back["w"], payload["w"]) and back["step"] == 7
    assert checkpoint.read_header(path)["step"] == 7
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_checkpoint_is_refused(tmp_path, damage):
    path = tmp_path / "a.ckpt"
    checkpoint.save(path, {"w": torch.randn(100)}, experiment="e", kind="final")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="delete it"):
        checkpoint.load(path, "e", "final")


@pytest.mark.parametrize(
    "field, value", [("experiment", "other"), ("kind", "init"), ("model", "x")]
)
def test_foreign_checkpoint_is_refused(tmp_path, field, value):
    path = tmp_path / "a.ckpt"
    checkpoint.save(path, {"w": torch.ones(1)}, experiment="e", kind="final", model="m")
    want = {"experiment": "e", "kind": "final", "model": "m", field: value}
    with pytest.raises(checkpoint.CheckpointError, match=f"belongs to {field}"):
        checkpoint.load(path, **want)


def test_metrics_files_append_and_reset_to_the_checkpointed_metrics(tmp_path):
    from sparse_lottery.lottery.trainer import _append_metrics, _reset_metrics

    rows = [{"step": s, "lr": 0.1, "test_accuracy": s / 10} for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text('{"step": 99}\n{"ste')  # a killed run's leftovers
    (tmp_path / "metrics.csv").write_text("step\n99\n")
    _reset_metrics(tmp_path, rows[:2])  # resumed from a checkpoint that holds two evaluations
    _append_metrics(tmp_path, rows[2])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,lr,test_accuracy", "10,0.1,1.0", "20,0.1,2.0", "30,0.1,3.0"
    ]  # fmt: skip
    _reset_metrics(tmp_path, [])  # a fresh start
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "metrics.csv").exists()


def test_evaluate_runs_cpu_chunks_and_matches_one_pass():
    import contextlib

    import torch.nn.functional as F

    from sparse_lottery.data import ArrayData
    from sparse_lottery.lottery.trainer import eval_chunk, evaluate

    data = ArrayData(torch.randn(600, 5), torch.randint(0, 3, (600,)), 3)
    model = torch.nn.Linear(5, 3)
    sizes = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    loss, accuracy = evaluate(model, data, "cpu", contextlib.nullcontext)
    assert eval_chunk("cpu") == 256 and eval_chunk("cuda", (3, 32, 32)) == 1000
    assert eval_chunk("cpu", (3, 32, 32)) == 64  # images: a conv net's activations fit in cache
    assert sizes == [256, 256, 88]
    with torch.no_grad():
        out = model(data.x)
    assert loss == pytest.approx(F.cross_entropy(out, data.y).item(), rel=1e-5)
    assert accuracy == (out.argmax(-1) == data.y).sum().item() / 600


def test_model_signature_tracks_shapes_not_values():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    assert checkpoint.model_signature(a) == checkpoint.model_signature(b)
    assert checkpoint.model_signature(a) != checkpoint.model_signature(torch.nn.Linear(4, 2))


# --------------------------------------------------------------------------- CLI flags
def test_every_hyperparameter_is_a_flag():
    parser = cli.argparse.ArgumentParser()
    cli.imp_arguments(parser)
    text = parser.format_help()
    for section in (Experiment().dataset, Experiment().training, Experiment().pruning):
        for f in dataclasses.fields(section):
            assert "--" + f.name.replace("_", "-") in text
    args = parser.parse_args(["--preset", "lenet_mnist", "--lr", "0.05", "--no-progress"])
    exp, runtime = cli.experiment_from_args(args)
    assert exp.training.lr == 0.05 and exp.training.optimizer == "sgd"  # flag over preset
    assert exp.pruning == dataclasses.replace(PruningHparams(), prune_output_fraction=0.1)
    assert runtime.progress is False


def test_retrain_overrides():
    bases = {"training": TrainingHparams(), "dataset": Experiment().dataset}
    changed = cli.parse_overrides("lr=0.001,steps=50it,nesterov=true", "--retrain", **bases)
    hp = changed["training"]
    assert (hp.lr, hp.steps, hp.nesterov) == (0.001, "50it", True) and "dataset" not in changed
    changed = cli.parse_overrides("dataset=digits, batch_size=32", "--retrain", **bases)
    assert (changed["dataset"].dataset, changed["dataset"].batch_size) == ("digits", 32)
    with pytest.raises(SystemExit, match=r"--retrain: expected 'field=value' .*'learning_rate=1'"):
        cli.parse_overrides("learning_rate=1", "--retrain", **bases)
    with pytest.raises(SystemExit, match=r"--retrain: lr: expected float, got 'abc'"):
        cli.parse_overrides("lr=abc", "--retrain", **bases)
    with pytest.raises(SystemExit, match=r"--retrain: nesterov: expected bool, got 'maybe'"):
        cli.parse_overrides("nesterov=maybe", "--retrain", **bases)


HASH_DEFAULT = "d0b2be2632e9fab9"
HASH_LR = "0be356557f0e8a9d"


def test_report_includes_every_analysis_result(tmp_path):
    from sparse_lottery.lottery.report import analysis_sections

    level = tmp_path / "lottery_ab" / "replicate_0" / "level_3" / "stability_k0"
    level.mkdir(parents=True)
    (level / "stability.md").write_text("# Stability of level 3\n\n| k | barrier |\n|---|---|\n")
    (level / "stability.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "overlap.md").write_text("# Mask overlap\n")  # no plot beside it
    md, body = analysis_sections(tmp_path, tmp_path / "out")
    text = "\n".join(md)
    assert text.index("## stability: `lottery_ab/replicate_0/level_3/stability_k0`") < text.index(
        "## overlap: `report`"
    )
    assert "### Stability of level 3" in text and "\n# Stability" not in text
    copied = (
        tmp_path / "out" / "analyses" / "lottery_ab_replicate_0_level_3_stability_k0_stability.png"
    )
    assert copied.read_bytes() == b"\x89PNG fake"
    assert f"]({copied.relative_to(tmp_path / 'out')})" in text
    assert sum("<img" in part for part in body) == 1
    assert analysis_sections(
        tmp_path / "lottery_ab" / "replicate_0" / "level_3" / "x", tmp_path
    ) == (
        [],
        [],
    )


def test_auto_plans_are_measured_once_per_mask(tmp_path, monkeypatch):
    """'auto' measures the first training of a mask and records the plan under the root; the
    same masks (batch shape, optimiser, device, threads) reuse it without measuring, other masks
    measure again, and 'dense'/'sparse' are neither read nor recorded."""
    import sparse_lottery as sl
    from sparse_lottery.lottery import plans

    measured = []
    real = plans.set_execution

    def spy(model, mode, **kw):
        measured.append(mode == "auto")
        return real(model, mode, **kw)

    monkeypatch.setattr(plans, "set_execution", spy)
    torch.manual_seed(0)
    model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 5)))
    model[0].set_mask(torch.rand(40, 30) < 0.05)
    x = torch.randn(8, 30)
    key = plans.plan_key(model, x, "sgd")
    first = plans.choose(model, "auto", x, "sgd", tmp_path)
    sl.set_execution(model, "dense")
    assert plans.choose(model, "auto", x, "sgd", tmp_path) == first
    assert measured == [True, False]
    sl.set_execution(model, "dense")
    assert [p.name for p in (tmp_path / plans.FOLDER).iterdir()] == [f"{key}.json"]
    keys = {plans.plan_key(model, x, "sgd"), plans.plan_key(model, x[:4], "sgd"),
            plans.plan_key(model, x, "adamw")}  # fmt: skip
    model[0].set_mask(torch.rand(40, 30) < 0.05)
    keys.add(plans.plan_key(model, x, "sgd"))
    assert len(keys) == 4
    plans.choose(model, "auto", x, "sgd", tmp_path)
    assert measured == [True, False, True]
    sl.set_execution(model, "dense")
    assert plans.choose(model, "sparse", x, "sgd", tmp_path) == {"0": "sparse", "1": "sparse"}
    assert len(list((tmp_path / plans.FOLDER).iterdir())) == 2
