"""Instability (linear mode connectivity) and mask overlap: known answers of the pure helpers,
BatchNorm statistics recomputation, and the `stability` / `overlap` commands end to end on a
tiny MNIST-1D run (20 iterations per level)."""

import json
import math

import pytest
import torch
from conftest import cli_error

from sparse_lottery.__main__ import build_parser, main
from sparse_lottery.analysis import (
    barrier,
    collect_masks,
    error_path,
    hamming,
    instability,
    interpolate,
    iou,
    overlap_matrix,
    recompute_norm_stats,
)
from sparse_lottery.analysis.stability import rewind_weights
from sparse_lottery.lottery import Run
from sparse_lottery.lottery.cli import experiment_from_args
from sparse_lottery.lottery.report import collect


# --------------------------------------------------------------------------- pure helpers
def _state(seed):
    gen = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(7, 3, generator=gen),
        "b": torch.randn(3, generator=gen, dtype=torch.float64),
        "count": torch.tensor(5),
        "mask": torch.tensor([1, 0, 255], dtype=torch.uint8),
    }


def test_interpolate_endpoints_are_exact_and_midpoint_is_the_mean():
    s1, s2 = _state(0), _state(1)
    for alpha, want in ((1.0, s1), (0.0, s2), (1, s1), (0, s2)):
        got = interpolate(s1, s2, alpha)
        assert all(torch.equal(got[k], want[k]) for k in s1), alpha
    mid = interpolate(s1, s2, 0.5)
    torch.testing.assert_close(mid["w"], (s1["w"] + s2["w"]) / 2)
    assert mid["b"].dtype == torch.float64 and torch.equal(mid["count"], s1["count"])
    assert mid["w"].data_ptr() != s1["w"].data_ptr()  # copies, not views of the inputs


def test_interpolate_refuses_what_cannot_be_interpolated():
    s1, s2 = _state(0), _state(1)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(s1, s2, 1.5)
    with pytest.raises(KeyError, match="state2"):
        interpolate(s1, {k: v for k, v in s2.items() if k != "w"}, 0.5)
    with pytest.raises(ValueError, match=r"state2\['w'\].*shape"):
        interpolate(s1, {**s2, "w": torch.zeros(3, 7)}, 0.5)
    with pytest.raises(ValueError, match="same masks"):
        interpolate(s1, {**s2, "mask": torch.tensor([1, 1, 255], dtype=torch.uint8)}, 0.5)


def test_barrier_known_answers():
    assert barrier([0.2] * 30) == 0.0
    assert barrier([0.10, 0.30, 0.12]) == pytest.approx(0.19)
    # The definition's max includes the endpoints: unequal endpoints give half their gap.
    assert barrier([0.3, 0.2, 0.1]) == pytest.approx(0.1)
    assert barrier([0.1, 0.05, 0.1]) == pytest.approx(0.0)  # below the endpoints: no barrier
    for bad in ([0.1], [0.1, math.nan]):
        with pytest.raises(ValueError, match="errors"):
            barrier(bad)


def test_recompute_norm_stats_is_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model.eval()
    batches = [torch.randn(8, 3) for _ in range(3)]
    assert recompute_norm_stats(model, batches)
    bn = model[1]
    with torch.no_grad():
        feats = [model[0](x) for x in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean(0) for f in feats]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([f.var(0) for f in feats]).mean(0))
    assert bn.momentum == 0.1 and not model.training and bn.num_batches_tracked.item() == 3
    assert not recompute_norm_stats(torch.nn.Linear(3, 2), batches)
    with pytest.raises(ValueError, match="batches"):
        recompute_norm_stats(model, [])


def _m(*bits):
    return {"a": torch.tensor(bits[:3], dtype=torch.bool), "b": torch.tensor(bits[3:]).bool()}


def test_iou_and_hamming_known_answers():
    x, y = _m(1, 1, 0, 1, 0), _m(0, 1, 1, 1, 1)
    disjoint = {k: ~v for k, v in x.items()}
    assert iou(x, x) == 1.0 and hamming(x, x) == 0.0 and hamming(x, x, normalized=False) == 0
    assert iou(x, y) == iou(y, x) == pytest.approx(2 / 5)
    assert hamming(x, y) == hamming(y, x) == pytest.approx(3 / 5)
    assert iou(x, disjoint) == 0.0 and hamming(x, disjoint) == 1.0
    assert iou(x, y, per_layer=True) == {"a": pytest.approx(1 / 3), "b": 0.5}
    assert hamming(x, y, per_layer=True, normalized=False) == {"a": 2, "b": 1}
    empty = {k: torch.zeros_like(v) for k, v in x.items()}
    assert iou(empty, empty) == 1.0  # identical (empty) masks
    with pytest.raises(KeyError, match="m2"):
        iou(x, {"a": x["a"]})
    with pytest.raises(ValueError, match=r"m2\['a'\].*shape"):
        iou(x, {**x, "a": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"m1\['a'\].*torch.bool"):
        hamming({**x, "a": x["a"].float()}, x)


def test_overlap_matrix_matches_the_pairwise_measures():
    gen = torch.Generator().manual_seed(3)
    named = {f"m{i}": {"w": torch.rand(9, 5, generator=gen) < 0.4,
                       "v": torch.rand(11, generator=gen) < 0.7} for i in range(4)}  # fmt: skip
    names, ious, hams = overlap_matrix(named)
    assert names == list(named)
    assert torch.equal(ious, ious.T) and torch.equal(hams, hams.T)
    assert torch.all(ious.diagonal() == 1) and torch.all(hams.diagonal() == 0)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert ious[i, j].item() == pytest.approx(iou(named[a], named[b]))
            assert hams[i, j].item() == pytest.approx(hamming(named[a], named[b]))
    with pytest.raises(ValueError, match="named_masks"):
        overlap_matrix({})


# --------------------------------------------------------------------------- end to end
def _flags(root, data_dir):
    # Dense execution: the copies' own evaluation and the path's use the same arithmetic, so
    # the path's endpoints reproduce the copies' test errors exactly.
    return ["--steps", "20it", "--prune-fraction", "0.5", "--root", str(root), "--data-dir",
            str(data_dir), "--device", "cpu", "--no-progress", "--eval-every", "10it",
            "--execution", "dense"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """A 1-level IMP run with a random-pruning baseline, then `stability` on it via the CLI."""
    root = tmp_path_factory.mktemp("runs")
    flags = _flags(root, data_dir)
    assert main(["-q", "imp", "--levels", "1", "--baselines", "random_prune", *flags]) == 0
    argv = ["-q", "stability", "--level", "1", "--k", "0,5", "--alphas", "5", *flags]
    assert main(argv) == 0
    exp, runtime = experiment_from_args(build_parser().parse_args(argv[1:]))
    return Run(exp, runtime, 0), root


def test_stability_cli_writes_results_with_known_endpoints(finished):
    run, _ = finished
    folders = list(run.level_dir(1).glob("stability_*"))
    assert len(folders) == 1
    for name in ("stability.json", "stability.md", "stability.png"):
        assert (folders[0] / name).stat().st_size > 0, name
    rows = json.loads((folders[0] / "stability.json").read_text())["results"]
    assert [(r["level"], r["k"]) for r in rows] == [(1, 0), (1, 5)]
    dense = run.level(0)["test_accuracy"]
    for r in rows:
        acc_a, acc_b = r["accuracies"]
        assert r["alphas"] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
        # No BatchNorm in the MLP: the path's endpoints are the copies themselves.
        assert not r["norm_recomputed"]
        assert r["errors"][-1] == pytest.approx(1 - acc_a, abs=1e-12)
        assert r["errors"][0] == pytest.approx(1 - acc_b, abs=1e-12)
        assert r["barrier"] == pytest.approx(barrier(r["errors"]))
        assert r["stable"] == (r["barrier"] < 0.02)
        assert r["matching"] == ((acc_a + acc_b) / 2 >= dense - 0.002)
        assert r["dense_accuracy"] == dense and r["density"] == run.level(1)["density"]
        assert r["l2_distance"] > 0  # different SGD noise: different weights
        assert r["seeds"][0]["data"] + 1 == r["seeds"][1]["data"]
    # θ5 was trained once, from θ0, for 5 iterations, in level 0's folder.
    summary = json.loads((run.level_dir(0) / "rewind_5it" / "summary.json").read_text())
    assert (summary["start_step"], summary["end_step"]) == (0, 5)
    # The report's tables list the ticket and the baseline, not the analysis's trainings.
    assert {r["method"] for r in collect(finished[1])[0]["rows"]} == {"ticket", "random_prune"}


def test_instability_is_idempotent_and_identical_copies_have_no_barrier(finished):
    run, _ = finished
    copy = next(run.level_dir(1).glob("stability_*")) / "k_5" / "copy_b" / "final.ckpt"
    before = copy.stat().st_mtime_ns
    rows = instability(run, 1, ["5"], alphas=5, write=False)
    assert copy.stat().st_mtime_ns == before  # nothing retrained
    cached = json.loads((copy.parents[2] / "stability.json").read_text())["results"][1]
    assert rows[0]["errors"] == cached["errors"]
    state = run.weights(copy, "final", run.build(0))
    errors, recomputed = error_path(run, state, state, [0.0, 0.3, 0.7, 1.0])
    assert barrier(errors) == 0.0 and len(set(errors)) == 1 and not recomputed
    with pytest.raises(ValueError, match="k_list"):
        instability(run, 1, [20], alphas=5)
    with pytest.raises(ValueError, match="alphas"):
        instability(run, 1, [0], alphas=1)


def test_overlap_cli_writes_heat_map_and_tables(finished, capsys):
    run, root = finished
    assert main(["-q", "overlap", str(root), "--include-dense"]) == 0
    for name in ("overlap.png", "overlap.md", "overlap.json"):
        assert (root / "report" / name).stat().st_size > 0, name
    result = json.loads((root / "report" / "overlap.json").read_text())
    assert result["names"] == ["L0", "L1", "L1/random_prune"]
    ious = torch.tensor(result["iou"])
    assert torch.equal(ious, ious.T) and torch.all(ious.diagonal() == 1)
    # Level 0 keeps everything: its IoU with a mask is that mask's density.
    assert ious[0, 1].item() == pytest.approx(run.level(1)["density"])
    assert "| L1 |" in (root / "report" / "overlap.md").read_text()
    masks = collect_masks(root)
    assert list(masks) == ["L1", "L1/random_prune"]
    level_masks = run.level_masks(1, run.build(0))
    assert all(torch.equal(masks["L1"][k], level_masks[k]) for k in level_masks)
    assert iou(masks["L1"], masks["L1/random_prune"]) < 1.0
    assert "root" in cli_error(capsys, ["-q", "overlap", str(root / "nothing")])


def test_cli_help_documents_every_flag(capsys):
    for command, flags in (
        ("stability", ["--level", "--k", "--alphas", "--threshold", "--tolerance",
                       "--seed-offset", "--norm-batches", "--root", "--steps"]),
        ("overlap", ["root", "--out", "--branches", "--include-dense"]),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags), command
    assert "--level" in cli_error(capsys, ["stability", "--k", "0"])


def test_rewind_point_trained_from_init_is_level_0s_weights_at_k(tmp_path, data_dir):
    argv = ["stability", "--rewind", "step", "--rewind-step", "5it", *_flags(tmp_path, data_dir)]
    exp, runtime = experiment_from_args(build_parser().parse_args(argv))
    run = Run(exp, runtime, 0)
    run.level(0)  # saves θ5 as rewind.ckpt on its way
    model = run.build(0)
    saved = rewind_weights(run, 5, model)  # read from rewind.ckpt
    assert not (run.level_dir(0) / "rewind_5it").exists()
    (run.dir / "rewind.ckpt").rename(run.dir / "elsewhere.ckpt")
    trained = rewind_weights(run, 5, model)  # trained from θ0 for 5 iterations
    assert (run.level_dir(0) / "rewind_5it" / "final.ckpt").exists()
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[k], trained[k]) for k in saved), "θ5 differs from level 0's"
