"""Pruning & fine-tuning vs lottery tickets (Liu et al. 2021): the mechanics with known answers
(every method trains the same iterations, starts from exactly m⊙θ0 / m⊙θ0' / m⊙θk / m⊙θT, keeps
its mask), the report, resuming a killed comparison, the errors, and the `finetune` command end
to end on a tiny MNIST-1D run (10 iterations per training)."""

import json
import re

import pytest
import torch
from conftest import cli_error

import sparse_lottery as sl
from sparse_lottery.__main__ import main
from sparse_lottery.analysis import finetune as ft
from sparse_lottery.analysis import finetune_report as report
from sparse_lottery.analysis.correlation import prunable_weights, r_p_table
from sparse_lottery.lottery import Run, Runtime, apply_preset, checkpoint, runner
from sparse_lottery.ops import unpack_mask

T, K = 10, 3


def _flags(root, data_dir):
    return ["--steps", f"{T}it", "--eval-every", f"{T}it", "--no-progress", "--device", "cpu",
            "--execution", "dense", "--root", str(root), "--data-dir", str(data_dir)]  # fmt: skip


def _run(root, data_dir, lr=0.01, replicate=0):
    exp = apply_preset("mnist1d_mlp", {"training": {"steps": f"{T}it", "lr": lr}})
    runtime = Runtime(root=str(root), data_dir=str(data_dir), device="cpu", eval_every=f"{T}it",
                      execution="dense", progress=False)  # fmt: skip
    return Run(exp, runtime, replicate)


class Recorder:
    """Wraps the trainer: per segment folder, the iterations it drew minibatches for, and the
    model's weights and masks when training began."""

    def __init__(self, monkeypatch):
        self.calls = {}
        self.real = runner.train_segment
        for module in (runner, sl.analysis.stability):
            monkeypatch.setattr(module, "train_segment", self)

    def __call__(self, model, seg, data, runtime, device):
        steps, draw = [], data.minibatch
        data.minibatch = lambda step, *a: (steps.append(step), draw(step, *a))[1]
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            summary = self.real(model, seg, data, runtime, device)
        finally:
            del data.minibatch
        # The first draw picks the execution forms (no training step).
        self.calls[str(seg.directory)] = {"steps": steps[1:], "state": state, "seg": seg,
                                          "masks": sl.masks(model)}  # fmt: skip
        return summary


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """`finetune` over 2 levels and 2 learning rates, every training recorded."""
    root = tmp_path_factory.mktemp("runs")
    argv = ["-q", "finetune", "--levels", "2", "--lrs", "0.01,0.02", "--k", str(K),
            *_flags(root, data_dir)]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        recorder = Recorder(mp)
        assert main(argv) == 0
    (folder,) = root.glob("finetune_*")
    return {"root": root, "folder": folder, "argv": argv, "calls": recorder.calls,
            "result": json.loads((folder / "finetune.json").read_text())}  # fmt: skip


def test_cli_writes_the_tables_and_files(finished, capsys):
    folder, result = finished["folder"], finished["result"]
    for name in ("finetune.json", "finetune.md", "finetune.png"):
        assert (folder / name).stat().st_size > 0, name
    assert result["lrs"] == [0.01, 0.02] and result["k"] == K and result["iterations"] == T
    assert [(r["lr"], r["level"]) for r in result["rows"]] == [
        (0.01, 1), (0.01, 2), (0.02, 1), (0.02, 2)]  # fmt: skip
    assert [round(r["density"], 2) for r in result["rows"]] == [0.8, 0.64] * 2
    text = (folder / "finetune.md").read_text()
    for label in ("LT", "RR", f"rewind (k={K})", "fine-tune", "fine-tuned vs pretrained θT",
                  "θ0 vs pretrained θT", "R_p(θ0, θT)"):  # fmt: skip
        assert label in text, label
    for row in result["rows"]:
        assert set(row["accuracy"]) == set(ft.METHODS)
        assert all(0 <= a <= 100 for a in row["accuracy"].values())
        for column in report.R_P_COLUMNS:
            assert set(row["r_p"][column]) == {"0.1", "0.2", "0.5"}
            assert all(0 <= v <= 1 for v in row["r_p"][column].values())
    # A second call trains nothing and writes the same results.
    before = (folder / "finetune.json").read_text()
    assert main(finished["argv"]) == 0
    assert "| sparsity | level | lr |" in capsys.readouterr().out
    assert (folder / "finetune.json").read_text() == before


def test_every_method_trains_the_same_iterations(finished):
    calls = finished["calls"]
    for row in finished["result"]["rows"]:
        assert row["iterations"] == dict.fromkeys(ft.METHODS, T)
        for method, directory in row["directories"].items():
            call = calls[directory]
            assert call["steps"] == list(range(T)), (method, row["level"])  # counted draws
            seg = call["seg"]
            assert (seg.start, seg.end, seg.total, seg.fixed_lr) == (0, T, T, None)
            assert seg.seeds == {"init": 0, "data": 0, "augment": 0}
    # LT is the level itself (IMP resets to θ0), RR the driver's reinit branch: reused.
    row = finished["result"]["rows"][0]
    assert row["directories"]["lt"].endswith("level_1")
    assert "branch_reinit_" in row["directories"]["rr"]


def _masked(state, masks):
    return {k: state[k] * m for k, m in masks.items()}


def test_each_method_starts_from_its_masked_weights(finished, data_dir):
    run = _run(finished["root"], data_dir)
    calls = finished["calls"]
    for level in (1, 2):
        masks = run.level_masks(level, run.build(0))
        pretrained = checkpoint.load(run.level_dir(level - 1) / "final.ckpt", run.tag, "final")
        want = {
            "lt": run.init_weights(run.build(0)),
            "rr": run.reinit_weights(0),
            "rewind": ft.rewind_weights(run, K, run.build(0)),
            "finetune": pretrained,  # m⊙θT: the previous level's trained weights
        }
        for method in ft.METHODS:
            start = ft.start_weights(run, level, method, K)
            for name, mask in masks.items():
                assert torch.equal(start[name], want[method][name] * mask), (method, name)
            # The trainer got exactly these weights and the level's masks.
            call = calls[str(ft.method_dir(run, level, method, K))]
            assert all(torch.equal(call["masks"][n], m) for n, m in masks.items())
            for name, value in _masked(call["state"], masks).items():
                assert torch.equal(value, start[name]), (method, name)
        # RR: the same mask, another init; rewinding: θk is not θ0.
        lt, rr = ft.start_weights(run, level, "lt"), ft.start_weights(run, level, "rr")
        rewound = ft.start_weights(run, level, "rewind", K)
        for name in masks:
            assert not torch.equal(lt[name], rr[name]) and not torch.equal(lt[name], rewound[name])
            assert torch.equal(lt[name] != 0, rr[name] != 0)


def test_masks_are_unchanged_by_training(finished, data_dir):
    run = _run(finished["root"], data_dir, lr=0.02)
    for row in finished["result"]["rows"][2:]:
        masks = run.level_masks(row["level"], run.build(0))
        for method, directory in row["directories"].items():
            final = checkpoint.load(f"{directory}/final.ckpt", run.tag, "final")
            for name, mask in masks.items():
                packed = final[name.removesuffix("weight") + "weight_mask_packed"]
                assert torch.equal(unpack_mask(packed, mask.shape), mask), (method, name)
                assert not final[name][~mask].any()  # pruned weights stay zero


def test_r_p_known_answers_and_recorded_values(finished, data_dir):
    run = _run(finished["root"], data_dir)
    masks = run.level_masks(2, run.build(0))
    start = ft.start_weights(run, 2, "finetune")
    same = prunable_weights(start, masks)
    assert r_p_table(same, same, masks=masks) == {0.1: 1.0, 0.2: 1.0, 0.5: 1.0}
    # The recorded R_p(pretrained, fine-tuned) is recomputed from the files.
    row = finished["result"]["rows"][1]
    final = checkpoint.load(f"{row['directories']['finetune']}/final.ckpt", run.tag, "final")
    got = r_p_table(same, prunable_weights(final, masks), masks=masks)
    assert {repr(p): v for p, v in got.items()} == row["r_p"]["finetune"]
    assert got[0.1] < 1.0  # ten steps moved the weights


def test_a_killed_comparison_resumes_where_it_stopped(tmp_path, data_dir, monkeypatch):
    run = _run(tmp_path, data_dir)
    real = ft._train_or_load

    def killed(run_, model, seg, what):
        if seg.directory.name == "finetune":
            raise KeyboardInterrupt
        return real(run_, model, seg, what)

    monkeypatch.setattr(ft, "_train_or_load", killed)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune_comparison(run.exp, run.runtime, [0.01], 1, k=K)
    monkeypatch.setattr(ft, "_train_or_load", real)
    recorder = Recorder(monkeypatch)
    result = ft.finetune_comparison(run.exp, run.runtime, [0.01], 1, k=K, ps=(0.5,))
    assert [d.rsplit("/", 2)[-2:] for d in recorder.calls] == [["finetune_compare", "finetune"]]
    assert result["rows"][0]["iterations"]["finetune"] == T
    assert set(result["rows"][0]["r_p"]["lt"]) == {0.5}


def test_report_averages_replicates():
    accuracy = lambda r: {"lt": 90.0 + r, "rr": 89.0, "rewind": 90.0, "finetune": 95.0 - r}
    rows = [{"lr": 0.1, "replicate": r, "level": 1, "sparsity": 0.2, "accuracy": accuracy(r),
             "r_p": dict.fromkeys(report.R_P_COLUMNS, {0.5: 0.5 + 0.1 * r})}
            for r in (0, 2)]  # fmt: skip
    result = {"rows": rows, "dense": [{"lr": 0.1, "replicate": r, "accuracy": 96.0,
                                       "r_p": {0.5: 0.7}} for r in (0, 2)],
              "ps": [0.5], "k": 5, "methods": list(ft.METHODS), "lrs": [0.1]}  # fmt: skip
    text = report.format_markdown(result)
    assert "| 0.2000 | 1 | 0.1 | 91.00 ± 1.41 | 89.00 ± 0.00 | 90.00 ± 0.00 | 94.00 ± 1.41 | " \
           "fine-tune |" in text  # fmt: skip
    assert "| 0.1 | 96.00 ± 0.00 | 0.700 |" in text
    assert "| 0.2000 | 0.1 | 0.600 | 0.600 | 0.600 | 0.600 | 0.600 |" in text
    assert report.cell([90.0]) == "90.00"


def test_errors_name_the_argument(tmp_path, data_dir, capsys):
    flags = _flags(tmp_path, data_dir)
    bad = {
        ("--lrs", "0.1,-1"): "--lrs: expected distinct positive",
        ("--replicates", "0,x"): "--replicates: expected distinct replicate numbers",
        ("--levels", "0"): "--levels: expected a positive int, got 0",
        ("--ps", "0,2"): r"--ps: expected fractions in \(0, 1\]",
        ("--k", "10it"): r"finetune: error: --k: expected a rewind point in \[1, 10\).*got '10it'",
        ("--k", "3ms"): "k: expected '<n>it' or '<n>ep'",
    }
    for (flag, value), message in bad.items():
        assert re.search(message, cli_error(capsys, ["finetune", flag, value, *flags]))
    run = _run(tmp_path, data_dir)
    with pytest.raises(ValueError, match="method: expected one of"):
        ft.start_weights(run, 1, "prune")
    with pytest.raises(ValueError, match="level: expected a pruned level"):
        ft.start_weights(run, 0, "lt")
    with pytest.raises(ValueError, match="replicates: expected distinct ints"):
        ft.finetune_comparison(run.exp, run.runtime, [0.1], 1, replicates=[0, 0])
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--lrs" in out and "--k" in out and "--replicates" in out and "--lr " in out
