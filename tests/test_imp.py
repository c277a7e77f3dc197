"""The IMP driver end to end on MNIST-1D (few iterations): levels, rewinding variants, branches,
kill-and-resume equality, refusal of corrupt or foreign checkpoints, DDP over gloo, the CLI."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_error

import sparse_lottery as sl
from sparse_lottery.lottery import CheckpointError, Experiment, Run, Runtime, checkpoint, run_imp
from sparse_lottery.lottery.hparams import PruningHparams, TrainingHparams
from sparse_lottery.lottery.schedule import learning_rate

REPO = Path(__file__).resolve().parents[1]


def tiny(steps="30it", **pruning) -> Experiment:
    return Experiment(
        training=TrainingHparams(steps=steps, lr=5e-3),
        pruning=PruningHparams(**pruning),
    )


def runtime(root, data_dir, **kw) -> Runtime:
    kw = {"eval_every": "10it", "checkpoint_every": "7it", "progress": False, **kw}
    return Runtime(root=str(root), data_dir=str(data_dir), device="cpu", **kw)


def _payload(path: Path) -> dict:
    header = checkpoint.read_header(path)
    return checkpoint.load(path, header["experiment"], header["kind"])


def masks_of(level_dir: Path) -> dict:
    return _payload(level_dir / "mask.ckpt")["packed"]


def without_time(metrics_path: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# --------------------------------------------------------------------------- levels
def test_tiny_imp_end_to_end(tmp_path, data_dir):
    exp = tiny(prune_fraction=0.5, prune_output_fraction=0.25)
    rows = run_imp(exp, runtime(tmp_path, data_dir), levels=2, baselines=("reinit", "random_prune"))
    assert [r["level"] for r in rows] == [0, 1, 2]
    run_dir = tmp_path / f"lottery_{exp.hash()}"
    layers = rows[2]["ticket"]["layer_density"]
    # Layerwise 50% per level (output layer 25%): exact counts, densities 0.25 and 0.5625.
    assert layers["fc1"] == pytest.approx(0.25, abs=1e-4)
    assert layers[sl.models.MODELS["mnist1d_mlp"].output_layer] == pytest.approx(0.5625, abs=1e-3)
    for row in rows[1:]:
        for kind in ("reinit", "random_prune"):
            assert row[kind]["layer_density"] == pytest.approx(row["ticket"]["layer_density"])
    for level in range(3):
        d = run_dir / "replicate_0" / f"level_{level}"
        assert (d / "summary.json").exists() and (d / "final.ckpt").exists()
        assert not (d / "checkpoint.ckpt").exists()
        assert len(without_time(d / "metrics.jsonl")) == 3
        assert (d / "metrics.csv").read_text().startswith("step,")
    # The random-prune mask has the ticket's per-layer counts but is another mask.
    l1 = run_dir / "replicate_0" / "level_1"
    branch = next(l1.glob("branch_random_prune_*"))
    assert json.loads((branch / "summary.json").read_text())["density"] == rows[1]["density"]
    # Idempotent: a second call trains nothing and returns the same summaries.
    start = time.perf_counter()
    again = run_imp(exp, runtime(tmp_path, data_dir), levels=2, baselines=("reinit",))
    assert time.perf_counter() - start < 5
    assert again[2]["ticket"] == rows[2]["ticket"]


def test_conv_models_train_in_channels_last(tmp_path, data_dir, monkeypatch):
    """'on' puts a convolutional model's weights and image batches in channels-last memory
    format; 'off' keeps them contiguous; the results agree. 'auto' is 'on' for such models on
    the GPU, and on the CPU once the plan is made while at most half of the convolutions run
    sparse."""
    from sparse_lottery.lottery import trainer

    seen = []
    make = trainer.make_optimizer

    def spy(model, exp):
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        seen.append([m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs])
        return make(model, exp)

    monkeypatch.setattr(trainer, "make_optimizer", spy)
    exp = Experiment(
        dataset=sl.lottery.hparams.DatasetHparams(dataset="synthetic_cifar", batch_size=8),
        model=sl.lottery.hparams.ModelHparams(model="conv2"),
        training=TrainingHparams(steps="4it", lr=1e-3),
        pruning=PruningHparams(prune_fraction=0.5),
    )
    rows = {}
    for mode in ("on", "off", "auto"):
        rt = runtime(tmp_path / mode, data_dir, eval_every="4it", channels_last=mode,
                     execution="dense")  # fmt: skip
        rows[mode] = run_imp(exp, rt, levels=1)
    assert seen == [[True, True]] * 2 + [[False, False]] * 2 + [[True, True]] * 2  # two levels
    for a, b in zip(rows["on"], rows["off"]):
        assert a["ticket"]["test_loss"] == pytest.approx(b["ticket"]["test_loss"], rel=1e-4)
        assert a["density"] == b["density"]
    conv, mlp = sl.models.get_model("conv2", 10, (3, 32, 32)), torch.nn.Linear(4, 2)
    auto = Runtime(channels_last="auto")
    assert trainer._memory_format(auto, conv, "cuda") == torch.channels_last
    assert trainer._memory_format(auto, conv, "cpu") == torch.contiguous_format  # measuring
    masked = sl.sparsify(conv)
    first, second = [n for n, m in masked.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for sparse, expected in (([], True), ([first], True), ([first, second], False)):
        sl.set_execution(masked, {name: "sparse" for name in sparse})
        on = trainer._memory_format(auto, masked, "cpu", planned=True) == torch.channels_last
        assert on == expected, sparse
    assert trainer._memory_format(auto, mlp, "cuda") == torch.contiguous_format
    with pytest.raises(ValueError, match="--channels-last"):
        Runtime(channels_last="yes")


def test_tensorboard_events_carry_the_metrics(tmp_path, data_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tiny(prune_fraction=0.5)
    run_imp(exp, runtime(tmp_path, data_dir, tensorboard=True), levels=1)
    for level in range(2):
        d = tmp_path / f"lottery_{exp.hash()}" / "replicate_0" / f"level_{level}"
        events = EventAccumulator(str(d / "tensorboard"))
        events.Reload()
        rows = without_time(d / "metrics.jsonl")
        for key in ("test_accuracy", "test_loss", "train_loss", "lr"):
            got = [(e.step, e.value) for e in events.Scalars(key)]
            assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]


def test_tensorboard_without_its_package_says_so(tmp_path, monkeypatch):
    from sparse_lottery.lottery import trainer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ImportError, match="--tensorboard: needs the tensorboard package"):
        trainer._event_writer(tmp_path, 0)


def test_random_prune_masks_differ_between_replicates(tmp_path, data_dir):
    """Each replicate's random-pruning baseline draws its own masks (same per-layer counts)."""
    from sparse_lottery.lottery.runner import Run

    exp = tiny(prune_fraction=0.5)
    draws = []
    for replicate in (0, 1):
        run = Run(exp, runtime(tmp_path, data_dir), replicate)
        model = run.build(0)
        level = {k: torch.rand(m.shape, generator=torch.Generator().manual_seed(3)) < 0.3
                 for k, m in sl.masks(model).items()}  # fmt: skip
        draws.append(run._random_masks(model, level, 0, 1))
        again = run._random_masks(run.build(0), level, 0, 1)
        assert all(torch.equal(again[k], draws[-1][k]) for k in level)  # reproducible
        assert {k: int(m.sum()) for k, m in draws[-1].items()} == {
            k: int(m.sum()) for k, m in level.items()
        }
    assert any(not torch.equal(draws[0][k], draws[1][k]) for k in draws[0])


def test_masks_only_shrink_and_pruned_weights_are_zero_after_training(tmp_path, data_dir):
    exp = tiny(prune_method="global_magnitude", prune_fraction=0.6)
    run_imp(exp, runtime(tmp_path, data_dir), levels=2)
    rep = tmp_path / f"lottery_{exp.hash()}" / "replicate_0"
    m1 = sl.unpack_mask(masks_of(rep / "level_1")["fc1.weight"], (500, 40))
    m2 = sl.unpack_mask(masks_of(rep / "level_2")["fc1.weight"], (500, 40))
    assert not (m2 & ~m1).any() and m2.sum() < m1.sum()
    final = _payload(rep / "level_2" / "final.ckpt")
    model = Run(exp, runtime(tmp_path, data_dir)).build(0)
    model.load_state_dict(final)
    dense = sl.export_dense(model)
    assert (dense.fc1.weight[~m2] == 0).all()


# --------------------------------------------------------------------------- rewinding
@pytest.mark.parametrize("rewind", ["init", "step", "lr", "none"])
def test_rewinding_starts_from_the_right_weights_and_iteration(tmp_path, data_dir, rewind):
    exp = tiny(steps="40it", rewind=rewind, rewind_step="12it", prune_fraction=0.5)
    exp = dataclasses.replace(
        exp, training=dataclasses.replace(exp.training, schedule="step", milestones="20it")
    )
    rt = runtime(tmp_path, data_dir)
    run = Run(exp, rt)
    run.level(0)
    model = run.build(0)
    start, fixed_lr, state = run.start_point(1, model)
    init = _payload(run.dir / "init.ckpt")
    final0 = _payload(run.level_dir(0) / "final.ckpt")
    expect_state = {"init": init, "lr": final0, "none": final0}.get(rewind)
    if rewind == "step":
        # θ12 equals the weights of a 12-iteration training of the same replicate.
        short_exp = dataclasses.replace(
            exp, pruning=PruningHparams(), training=dataclasses.replace(exp.training, steps="12it")
        )
        short = Run(short_exp, runtime(tmp_path / "short", data_dir))  # fmt: skip
        short.level(0)
        expect_state = _payload(short.level_dir(0) / "final.ckpt")
        assert (run.dir / "rewind.ckpt").exists()
    for key, value in expect_state.items():
        assert torch.equal(state[key], value), key
    assert start == (0 if rewind == "init" else 12)
    if rewind == "none":
        assert fixed_lr == pytest.approx(learning_rate(exp.training, 39, 40, 40))
        assert fixed_lr == pytest.approx(exp.training.lr * 0.1)
    else:
        assert fixed_lr is None
    summary = run.level(1)
    assert summary["start_step"] == start and summary["end_step"] == 40
    lrs = [m["lr"] for m in without_time(run.level_dir(1) / "metrics.jsonl")]
    assert lrs[-1] == pytest.approx(exp.training.lr * 0.1)


# --------------------------------------------------------------------------- reliability
def _imp_command(root, data_dir, *extra):
    return [sys.executable, "-m", "sparse_lottery", "-q", "imp", "--root", str(root),
            "--data-dir", str(data_dir), "--device", "cpu", "--threads", "1", "--lr", "0.005",
            "--checkpoint-every", "5it", "--eval-every", "25it", "--no-progress",
            *extra]  # fmt: skip


@pytest.mark.parametrize("execution", ["dense", "sparse"])
def test_killed_run_resumes_to_the_same_result(tmp_path, data_dir, execution):
    # A fixed execution form: "auto" picks forms by timing, so two uninterrupted runs can differ
    # in the last bits too (a resumed run reuses the plan its first start saved).
    args = ("--levels", "2", "--steps", "300it", "--prune-fraction", "0.5",
            "--execution", execution)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref = subprocess.run(_imp_command(tmp_path / "ref", data_dir, *args), env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    root = tmp_path / "killed"
    kills = 0
    for target in ("level_0", "level_1", "level_2"):  # kill once inside each level
        proc = subprocess.Popen(_imp_command(root, data_dir, *args), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if list(root.glob(f"lottery_*/replicate_0/{target}/checkpoint.ckpt")):
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the run finished before it could be killed: lengthen it"
    done = subprocess.run(_imp_command(root, data_dir, *args), env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (a,), (b,) = (tmp_path / "ref").glob("lottery_*"), root.glob("lottery_*")
    for level in range(3):
        da, db = (x / "replicate_0" / f"level_{level}" for x in (a, b))
        assert without_time(da / "metrics.jsonl") == without_time(db / "metrics.jsonl")
        wa, wb = _payload(da / "final.ckpt"), _payload(db / "final.ckpt")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"level {level}: weights differ"
        if level:
            assert masks_of(da).keys() == masks_of(db).keys()
            assert all(torch.equal(masks_of(da)[k], masks_of(db)[k]) for k in masks_of(da))


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, data_dir):
    exp = tiny(prune_fraction=0.5)
    rt = runtime(tmp_path, data_dir)
    run_imp(exp, rt, levels=1)
    rep = tmp_path / f"lottery_{exp.hash()}" / "replicate_0"
    # A corrupt final checkpoint of level 0: level 1's mask cannot be recomputed from it.
    (rep / "level_1" / "mask.ckpt").unlink()
    (rep / "level_1" / "summary.json").unlink()
    data = bytearray((rep / "level_0" / "final.ckpt").read_bytes())
    data[len(data) // 2] ^= 0x55
    (rep / "level_0" / "final.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        run_imp(exp, rt, levels=1)
    # A checkpoint of another experiment copied in is refused by its hash.
    other = tiny(prune_fraction=0.3)
    run_imp(other, runtime(tmp_path, data_dir), levels=0)
    other_final = tmp_path / f"lottery_{other.hash()}" / "replicate_0" / "level_0" / "final.ckpt"
    (rep / "level_0" / "final.ckpt").write_bytes(other_final.read_bytes())
    with pytest.raises(CheckpointError, match="belongs to experiment"):
        run_imp(exp, rt, levels=1)
    # A config.json of another experiment in the folder is refused.
    cfg = tmp_path / f"lottery_{exp.hash()}" / "config.json"
    cfg.write_text(json.dumps({"hash": "0" * 16, "non_default": {}}))
    with pytest.raises(CheckpointError, match="another experiment"):
        Run(exp, rt)


def test_deleting_a_corrupt_checkpoint_redoes_the_step_that_wrote_it(tmp_path, data_dir):
    """The advice of the checksum error holds: delete the file and rerun. The step that wrote
    it is redone (bitwise as the first time, on the CPU) and the command goes on."""
    exp = tiny(prune_fraction=0.5, rewind="step", rewind_step="10it")
    rt = runtime(tmp_path, data_dir)
    run_imp(exp, rt, levels=2)
    rep = tmp_path / f"lottery_{exp.hash()}" / "replicate_0"
    retrain = dataclasses.replace(exp.training, lr=1e-3)
    commands = {  # a file, and a command that reads it
        "level_1/final.ckpt": lambda: Run(exp, rt).branch(2, "random_prune", seed=1),
        "level_2/mask.ckpt": lambda: Run(exp, rt).branch(2, "random_prune", seed=2),
        "rewind.ckpt": lambda: Run(exp, rt).branch(2, "retrain", retrain),
    }
    shutil.rmtree(rep / "level_2")  # level 2's mask is made again from level 1's weights
    for name, command in commands.items():
        if name.startswith("level_2"):
            run_imp(exp, rt, levels=2)
        before = _payload(rep / name)
        data = bytearray((rep / name).read_bytes())
        data[len(data) // 2] ^= 0x55
        (rep / name).write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=f"{name}: checksum mismatch.*delete it"):
            command() if name != "level_1/final.ckpt" else run_imp(exp, rt, levels=2)
        (rep / name).unlink()
        command() if name != "level_1/final.ckpt" else run_imp(exp, rt, levels=2)
        after = _payload(rep / name)
        for key, value in before.items():
            if key == "packed":
                assert all(torch.equal(after[key][k], v) for k, v in value.items()), name
            elif isinstance(value, torch.Tensor):
                assert torch.equal(after[key], value), (name, key)


def test_a_cut_short_json_file_is_refused_naming_it(tmp_path, data_dir):
    """A summary or config JSON cut short (or edited into invalid JSON) is refused with its path
    and what to do, by the driver and the report; deleting it and rerunning redoes the step."""
    from sparse_lottery.lottery.report import collect

    exp = tiny(prune_fraction=0.5)
    rt = runtime(tmp_path, data_dir)
    run_imp(exp, rt, levels=1)
    folder = tmp_path / f"lottery_{exp.hash()}"
    summary = folder / "replicate_0" / "level_1" / "summary.json"
    before = json.loads(summary.read_text())
    summary.write_text(summary.read_text()[: len(summary.read_text()) // 2])
    fix = "not valid JSON .*; delete it and rerun"
    with pytest.raises(CheckpointError, match=f"level_1/summary.json: {fix}: the step"):
        run_imp(exp, rt, levels=1)
    with pytest.raises(CheckpointError, match=f"level_1/summary.json: {fix} the experiment"):
        collect(tmp_path)
    summary.unlink()
    run_imp(exp, rt, levels=1)
    after = json.loads(summary.read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {
        k: v for k, v in before.items() if k != "seconds"
    }
    (folder / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=f"config.json: {fix}"):
        run_imp(exp, rt, levels=1)


def test_retrain_branch_trains_with_its_own_settings(tmp_path, data_dir):
    """A retrain branch uses its learning rate (also when fine-tuning at the schedule's end),
    its data and augmentation seeds and its dataset; the report keeps branches with other
    settings apart; settings a branch cannot use are refused."""
    from sparse_lottery.lottery.report import collect

    exp = tiny(steps="20it", prune_fraction=0.5, rewind="none")
    exp = dataclasses.replace(exp, training=dataclasses.replace(exp.training, schedule="cosine"))
    run = Run(exp, runtime(tmp_path, data_dir))
    ticket = run.level(1)
    faster = dataclasses.replace(exp.training, lr=0.5)
    summary = run.branch(1, "retrain", faster)
    folder = run.branch_dir(1, "retrain", faster)
    config = json.loads((folder / "config.json").read_text())
    final_lr = learning_rate(faster, run.total - 1, run.total, run.data.steps_per_epoch)
    assert config["fixed_lr"] == pytest.approx(final_lr) and final_lr > 1e-3
    assert {m["lr"] for m in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())} \
        == {config["fixed_lr"]}  # fmt: skip
    assert summary["test_loss"] != ticket["test_loss"]
    # Data order and augmentation seeds reach the training.
    losses = []
    for seed in (5, 7):
        hp = dataclasses.replace(exp.training, data_seed=seed, augment_seed=seed)
        losses.append(run.branch(1, "retrain", hp)["test_loss"])
        config = json.loads((run.branch_dir(1, "retrain", hp) / "config.json").read_text())
        assert config["seeds"] == {"init": 0, "data": seed, "augment": seed}
    assert losses[0] != losses[1]
    # Another dataset of the same shapes; one of other shapes is refused.
    shifted = dataclasses.replace(exp.dataset, dataset="mnist1d_shifted")
    moved = run.branch(1, "retrain", None, dataset=shifted)
    assert moved["experiment"]["dataset"]["dataset"] == "mnist1d_shifted"
    assert moved["test_loss"] != ticket["test_loss"]
    with pytest.raises(ValueError, match=r"dataset: 'digits' has samples of shape \(1, 8, 8\)"):
        run.branch(1, "retrain", None, dataset=dataclasses.replace(shifted, dataset="digits"))
    with pytest.raises(ValueError, match="init_seed: a retrain branch starts from the level"):
        run.branch(1, "retrain", dataclasses.replace(exp.training, init_seed=3))
    with pytest.raises(ValueError, match="the other kinds take none"):
        run.branch(1, "reinit", faster)
    with pytest.raises(ValueError, match="--optimizer: expected one of"):
        run.branch(1, "retrain", dataclasses.replace(exp.training, optimizer="lion"))
    methods = {row["method"] for row in collect(tmp_path)[0]["rows"] if row["level"] == 1}
    assert methods == {"ticket", "retrain (lr=0.5)", "retrain (augment_seed=5, data_seed=5)",
                       "retrain (augment_seed=7, data_seed=7)",
                       "retrain (dataset=mnist1d_shifted)"}  # fmt: skip


def test_resume_checkpoint_of_another_model_is_refused(tmp_path, data_dir):
    exp = tiny()
    rt = runtime(tmp_path, data_dir)
    run = Run(exp, rt)
    level0 = run.level_dir(0)
    checkpoint.save(level0 / "checkpoint.ckpt", {"signature": "feedbeef"}, experiment=run.tag,
                    kind="resume", model="feedbeef")  # fmt: skip
    with pytest.raises(CheckpointError, match="another model"):
        run.level(0)


# --------------------------------------------------------------------------- DDP
def test_two_process_gloo_run_matches_one_process(tmp_path, data_dir):
    args = ("--levels", "2", "--steps", "20it", "--prune-fraction", "0.5",
            "--prune-method", "global_magnitude")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_imp_command(tmp_path / "one", data_dir, *args), env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr
    cmd = _imp_command(tmp_path / "two", data_dir, *args)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", *cmd[1:]]  # fmt: skip
    two = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    (a,), (b,) = (tmp_path / "one").glob("lottery_*"), (tmp_path / "two").glob("lottery_*")
    for level in (1, 2):
        ma = masks_of(a / "replicate_0" / f"level_{level}")
        mb = masks_of(b / "replicate_0" / f"level_{level}")
        agree = sum((ma[k] == mb[k]).all().item() for k in ma)
        assert agree == len(ma), f"level {level}: masks differ between 1 and 2 processes"
    wa = _payload(a / "replicate_0" / "level_2" / "final.ckpt")
    wb = _payload(b / "replicate_0" / "level_2" / "final.ckpt")
    for key in wa:  # same maths, another summation order
        torch.testing.assert_close(wa[key].float(), wb[key].float(), atol=1e-4, rtol=1e-3)


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("command", ["train", "imp", "branch", "report", "bench"])
def test_cli_help(command):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "sparse_lottery", command, "--help"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_cli_train_imp_branch_report(tmp_path, data_dir, capsys):
    from sparse_lottery.__main__ import main

    common = ["--root", str(tmp_path), "--data-dir", str(data_dir), "--device", "cpu",
              "--steps", "20it", "--eval-every", "10it", "--no-progress"]  # fmt: skip
    assert main(["imp", "--list"]) == 0
    assert "mnist1d_mlp" in capsys.readouterr().out
    assert main(["train", *common]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["imp", "--levels", "1", "--baselines", "reinit", *common]) == 0
    table = capsys.readouterr().out
    assert "| level | density | ticket acc | reinit acc |" in table
    assert main(["branch", "--level", "1", "--kind", "retrain", "--retrain", "lr=0.001",
                 *common]) == 0  # fmt: skip
    assert "retrain at level 1" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| level | density | ticket acc |" in md and "accuracy_vs_density.png" in md
    assert "data:image/png;base64" in (tmp_path / "report" / "report.html").read_text()
    assert "--baselines: expected names" in cli_error(
        capsys, ["imp", "--baselines", "magic", *common]
    )
    for argv in (["--traceback", "imp"], ["imp", "--traceback"]):  # before or after the command
        with pytest.raises(ValueError, match="--optimizer"):
            main([*argv, "--optimizer", "lion", *common])


BAD_INPUT = [
    (["--prune-fraction", "-0.1"], r"--prune-fraction: expected a fraction in \[0, 1\], got -0.1"),
    (["--steps", "5x"], r"--steps: expected '<n>it' or '<n>ep' .*got '5x'"),
    (["--steps", "0it"], r"--steps: expected at least one iteration, got '0it'"),
    (["--optimizer", "lion"], r"--optimizer: expected one of \['sgd', 'adam', 'adamw'\], "
                              r"got 'lion'"),
    (["--dataset", "mnist2"], r"--dataset: expected one of \[.*'mnist1d'.*\], got 'mnist2'"),
    (["--augmentation", "jitter"], r"--augmentation: expected one of \[.*'crop_flip'.*"
                                   r"got 'jitter'"),
    (["--model", "resnet21"], r"--model: expected one of \[.*'resnet20'.*\], got 'resnet21'"),
    (["--execution", "fast"], r"--execution: expected one of \['auto', 'dense', 'sparse'\]"),
    (["--precision", "fp8"], r"--precision: expected one of"),
    (["--checkpoint-every", "5x"], r"--checkpoint-every: expected '<n>s', '<n>it' or '<n>ep'"),
    (["--prune-rates", "fc9=0.1"], r"--prune-rates: 'fc9' matches no layer; the layers are "
                                   r"\['fc1', 'fc2', 'fc3'\]"),
    (["--prune-exclude", "conv*"], r"--prune-exclude: 'conv\*' matches no layer"),
    (["--dataset", "mnist", "--model", "lenet_300_100"], r"mnist.*(--download|download)"),
    (["--device", "bogus"], r"--device: expected a torch device \('cpu', 'cuda', 'cuda:1'\)"),
    (["--device", "cuda:7"], r"--device: 'cuda:7' asked for, but this process sees \d CUDA"),
    (["--root", "/dev/null"], r"Not a directory: '/dev/null/lottery_"),
]  # fmt: skip


@pytest.mark.parametrize("flags, message", BAD_INPUT, ids=[" ".join(f) for f, _ in BAD_INPUT])
def test_cli_bad_input_is_one_line_naming_the_flag(flags, message, tmp_path, capsys):
    """Bad input ends the command with status 2 and one line on stderr that names the flag,
    what was expected and what came; nothing is trained and no experiment folder is left."""
    common = ["--root", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
              "--device", "cpu", "--no-progress"]  # fmt: skip
    err = cli_error(capsys, ["-q", "imp", "--levels", "1", *common, *flags])
    assert re.search(message, err), err
    assert not list((tmp_path / "runs").glob("lottery_*/replicate_*/level_*"))
