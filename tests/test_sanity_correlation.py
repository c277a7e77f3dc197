"""The weight-correlation indicator R_p (known answers, symmetry, masks, ties, errors), the
sanity-check verdicts on hand-made tables (every outcome, every condition failing), the
helpers of the sanity runner, and a tiny end-to-end `sanity` CLI run on MNIST-1D."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import cli_error

import sparse_lottery as sl
from sparse_lottery.analysis import correlation as corr
from sparse_lottery.analysis import sanity
from sparse_lottery.analysis.sanity import CONDITIONS, verdict
from sparse_lottery.lottery import Run, Runtime, apply_preset


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- R_p
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.37, 1.0])
def test_r_p_identical_weights_is_one(p):
    w = {"fc1.weight": randn(30, 7, seed=0), "fc2.weight": randn(5, 30, seed=1)}
    assert corr.r_p(w, w, p) == 1.0
    masks = {k: randn(*v.shape, seed=2) > 0 for k, v in w.items()}
    assert corr.r_p(w, w, p, masks) == 1.0
    # Only the magnitudes rank: a sign flip or a positive scale changes nothing.
    assert corr.r_p(w, {k: -3.0 * v for k, v in w.items()}, p, masks) == 1.0


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_r_p_independent_weights_is_p(p):
    a = {"l1.weight": randn(400, 300, seed=3), "l2.weight": randn(100_000, seed=4)}
    b = {"l1.weight": randn(400, 300, seed=5), "l2.weight": randn(100_000, seed=6)}
    n = 400 * 300 + 100_000
    # Overlap of two independent k-subsets of N: hypergeometric, sd of R_p = (1 - p) / sqrt(N).
    tol = 5 * max(math.sqrt(p * (1 - p) / n), (1 - p) / math.sqrt(n))
    assert abs(corr.r_p(a, b, p) - p) < tol
    # With masks, p is relative to the survivors: still ≈ p.
    masks = {k: randn(*v.shape, seed=7) > -0.5 for k, v in a.items()}
    survivors = sum(int(m.sum()) for m in masks.values())
    tol = 5 * max(math.sqrt(p * (1 - p) / survivors), (1 - p) / math.sqrt(survivors))
    assert abs(corr.r_p(a, b, p, masks) - p) < tol


def test_r_p_is_symmetric_and_between_chance_and_one():
    a = {"w": randn(200, 50, seed=8), "v": randn(77, seed=9)}
    b = {k: v + 0.7 * randn(*v.shape, seed=10 + i) for i, (k, v) in enumerate(a.items())}
    masks = {k: randn(*v.shape, seed=20) > -1.0 for k, v in a.items()}
    for p in (0.1, 0.2, 0.5):
        for m in (None, masks):
            r = corr.r_p(a, b, p, m)
            assert r == corr.r_p(b, a, p, m)
            assert p < r < 1.0  # correlated weights: above chance
    assert corr.r_p_table(a, b, masks=masks) == {
        p: corr.r_p(a, b, p, masks) for p in corr.DEFAULT_PS
    }


def test_r_p_with_masks_only_survivors_count():
    # The pruned positions 0 and 1 have the largest magnitudes: they must not count.
    a = {"w": torch.tensor([100.0, 100.0, 3.0, 2.0, 1.0, 0.5])}
    b = {"w": torch.tensor([100.0, 100.0, 0.5, 1.0, 2.0, 3.0])}
    mask = {"w": torch.tensor([False, False, True, True, True, True])}
    assert corr.top_p_indices(a["w"], 0.5, mask["w"]).tolist() == [2, 3]
    assert corr.overlap_counts(a, b, 0.5, mask) == {"w": (0, 2, 4)}  # N_l = survivors
    assert corr.r_p(a, b, 0.5, mask) == 0.0
    assert corr.r_p(a, b, 0.5) == pytest.approx(2 / 3)  # unmasked: k = 3, {0, 1} shared
    # Pruned values do not matter at all.
    c = {"w": torch.tensor([-7.0, 0.0, 0.5, 1.0, 2.0, 3.0])}
    assert corr.r_p(a, c, 0.5, mask) == corr.r_p(a, b, 0.5, mask)
    # Layers sum: a fully pruned layer adds nothing.
    a2 = {**a, "z": torch.ones(3)}
    b2 = {**b, "z": torch.ones(3)}
    m2 = {**mask, "z": torch.zeros(3, dtype=torch.bool)}
    assert corr.r_p(a2, b2, 0.5, m2) == 0.0


def test_rounding_and_ties_are_deterministic():
    assert [corr.top_k_count(p, n) for p, n in [(0.5, 5), (0.5, 3), (0.25, 2), (0.1, 4)]] == [
        3, 2, 1, 0,
    ]  # fmt: skip
    w = torch.tensor([[1.0, -2.0], [2.0, 2.0]])
    assert corr.top_p_indices(w, 0.5).tolist() == [1, 2]  # |2| x3: the earlier indices win
    assert corr.top_p_indices(w, 0.75).tolist() == [1, 2, 3]
    # k_l rounds per layer; the denominator is Σ k_l: 5 weights at p = 0.5 select 3.
    a = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    b = {"w": torch.tensor([5.0, 4.0, 0.0, 2.0, 1.0])}
    assert corr.overlap_counts(a, b, 0.5) == {"w": (2, 3, 5)}
    assert corr.r_p(a, b, 0.5) == pytest.approx(2 / 3)


def test_r_p_errors_name_the_argument():
    w = {"w": torch.ones(4)}
    with pytest.raises(ValueError, match=r"p: expected a fraction in \(0, 1\], got 0"):
        corr.r_p(w, w, 0)
    with pytest.raises(ValueError, match="p: expected a fraction.*got 1.5"):
        corr.r_p(w, w, 1.5)
    with pytest.raises(ValueError, match=r"weights_b: expected the keys of weights_a \['w'\]"):
        corr.r_p(w, {"v": torch.ones(4)}, 0.5)
    with pytest.raises(ValueError, match=r"weights_b\['w'\]: expected shape \[4\].*got \[2, 2\]"):
        corr.r_p(w, {"w": torch.ones(2, 2)}, 0.5)
    with pytest.raises(TypeError, match=r"masks\['w'\]: expected a torch.bool tensor"):
        corr.r_p(w, w, 0.5, {"w": torch.ones(4)})
    with pytest.raises(ValueError, match=r"masks: expected the keys"):
        corr.r_p(w, w, 0.5, {})
    with pytest.raises(ValueError, match="p: round.*is 0 in every layer.*got 0.1"):
        corr.r_p(w, w, 0.1)
    with pytest.raises(ValueError, match="weight: expected finite values"):
        corr.r_p({"w": torch.tensor([1.0, math.nan])}, {"w": torch.ones(2)}, 0.5)
    with pytest.raises(ValueError, match="weights_a: expected a non-empty dict"):
        corr.r_p({}, {}, 0.5)
    with pytest.raises(KeyError, match=r"state: expected the masked weights"):
        corr.prunable_weights({"a.bias": torch.ones(1)}, {"a.weight": torch.ones(1).bool()})


# --------------------------------------------------------------------------- verdict
LRS = (0.01, 0.1)


def jackpot_table():
    """Jackpot at lr 0.01 only; at 0.1 LT falls short of RR (condition 3 fails there)."""
    return {
        "sparsity": 0.8,
        "dense": {0.01: 91.0, 0.1: 92.0},
        "small_dense": {0.01: 88.0, 0.1: 89.0},
        "lt": {0.01: 91.9, 0.1: 91.6},
        "rr": {0.01: 90.0, 0.1: 91.2},
        "omp": {0.01: 1.0, 0.1: 2.0},  # not judged
    }


def test_verdict_jackpot():
    v = verdict(jackpot_table())
    assert v["outcome"] == "jackpot" and v["lr"] == 0.01 and v["failed"] == []
    assert v["conditions"] == dict.fromkeys(CONDITIONS, True)
    per_lr = {r["lr"]: r for r in v["per_lr"]}
    assert per_lr[0.01]["outcome"] == "jackpot"
    assert per_lr[0.1]["outcome"] == "none" and per_lr[0.1]["failed"] == ["lt_beats_rr"]
    assert per_lr[0.01]["margins"]["lt_minus_best_rr"] == pytest.approx(0.7)
    assert v["held_at_some_lr"] == dict.fromkeys(CONDITIONS, True)
    assert v["best"] == {"dense": 92.0, "small_dense": 89.0, "rr": 91.2}


def test_verdict_secondary_prize_when_only_condition_5_fails():
    t = jackpot_table()
    t["lt"] = {0.01: 91.2, 0.1: 91.0}  # ≥ dense(0.01) − 0.5, < best dense 92 − 0.5
    t["rr"] = {0.01: 90.0, 0.1: 90.5}
    v = verdict(t)
    assert v["outcome"] == "secondary prize" and v["lr"] == 0.01
    assert v["failed"] == ["lt_matches_best_dense"]
    assert not v["held_at_some_lr"]["lt_matches_best_dense"]
    # A looser "similar" makes it a jackpot; a stricter gap nothing.
    assert verdict(t, similar=1.0)["outcome"] == "jackpot"
    assert verdict(t, gap=1.0)["outcome"] == "none"


def _fail_sparsity(t):
    t["sparsity"] = 0.55


def _fail_too_short(t):
    t["long_enough"] = False


def _fail_small_dense(t):
    t["small_dense"] = {0.01: 88.0, 0.1: 91.6}  # within 0.5 of the best dense (92)


def _fail_rr(t):
    t["rr"] = {0.01: 90.0, 0.1: 91.5}  # LT(0.01) = 91.9 beats RR at 0.01 but not at 0.1


@pytest.mark.parametrize(
    "change, failed",
    [
        (_fail_sparsity, "sparsity"),
        (_fail_too_short, "sparsity"),
        (_fail_small_dense, "small_dense_worse"),
        (_fail_rr, "lt_beats_rr"),
    ],
)
def test_verdict_each_condition_failing_alone_gives_none(change, failed):
    t = jackpot_table()
    change(t)
    v = verdict(t)
    assert v["outcome"] == "none"
    assert v["lr"] == 0.01 and v["failed"] == [failed]
    assert not v["held_at_some_lr"][failed]


def test_verdict_condition_4_fails_with_5():
    t = jackpot_table()
    t["dense"] = {0.01: 92.5, 0.1: 92.0}  # LT(0.01) = 91.9 < 92.5 − 0.5
    t["lt"] = {0.01: 91.9, 0.1: 90.0}
    v = verdict(t)
    assert v["outcome"] == "none"
    assert v["failed"] == ["lt_matches_dense_at_lr", "lt_matches_best_dense"]
    # Condition 5 implies condition 4: it never fails alone.
    for row in v["per_lr"]:
        c = row["conditions"]
        assert not c["lt_matches_best_dense"] or c["lt_matches_dense_at_lr"]


def test_verdict_boundaries_and_percent_units():
    t = {"sparsity": 0.6, "dense": {1: 90.0}, "small_dense": {1: 80.0}, "lt": {1: 89.5},
         "rr": {1: 89.0}}  # fmt: skip
    v = verdict(t)
    assert not v["conditions"]["sparsity"]  # strictly above min_sparsity
    assert not v["conditions"]["lt_beats_rr"]  # strictly more than the gap
    assert v["conditions"]["lt_matches_best_dense"]  # within `similar` counts as similar
    assert verdict(t, min_sparsity=0.5, gap=0.4)["outcome"] == "jackpot"
    frac = {"sparsity": 0.9, "dense": {1: 0.9}, "small_dense": {1: 0.8}, "lt": {1: 0.9},
            "rr": {1: 0.5}}  # fmt: skip
    with pytest.warns(UserWarning, match="expects percent"):
        verdict(frac)


def test_verdict_errors_name_the_argument():
    t = jackpot_table()
    with pytest.raises(ValueError, match=r"table\['rr'\]: expected a non-empty dict"):
        verdict({k: v for k, v in t.items() if k != "rr"})
    with pytest.raises(ValueError, match=r"table\['lt'\]\[0.1\]: expected an accuracy in percent"):
        verdict({**t, "lt": {0.01: 91.0, 0.1: 101.0}})
    with pytest.raises(ValueError, match=r"table\['dense'\]: expected the learning rates.*\[0.1\]"):
        verdict({**t, "dense": {0.01: 91.0}})
    with pytest.raises(ValueError, match=r"table\['sparsity'\]: expected a fraction"):
        verdict({**t, "sparsity": 80})
    with pytest.raises(ValueError, match="similar: expected percentage points"):
        verdict(t, similar=-1)
    with pytest.raises(ValueError, match="min_sparsity: expected a fraction"):
        verdict(t, min_sparsity=60)
    with pytest.raises(TypeError, match="table: expected a dict"):
        verdict([1, 2])


# --------------------------------------------------------------------------- runner helpers
def test_one_shot_experiment_matches_imp_densities():
    exp = apply_preset("lenet_mnist", {"pruning": {"prune_rates": "fc2=0.5"}})
    assert sanity.one_shot_experiment(exp, 1) is exp
    omp = sanity.one_shot_experiment(exp, 3)
    assert omp.pruning.prune_fraction == pytest.approx(1 - 0.8**3)
    assert omp.pruning.prune_output_fraction == pytest.approx(1 - 0.9**3)
    assert omp.pruning.prune_rates == "fc2=0.875"
    assert omp.training == exp.training and omp.validate()
    default = sanity.one_shot_experiment(apply_preset("mnist1d_mlp"), 2)
    assert default.pruning.prune_output_fraction == -1.0
    # Layerwise: one-shot pruning of a model reaches IMP's per-layer kept counts.
    model = sl.sparsify(sl.models.get_model("lenet_300_100", 10, (1, 28, 28)))
    imp = sl.sparsify(sl.models.get_model("lenet_300_100", 10, (1, 28, 28)))
    for _ in range(3):
        sl.prune(imp, 0.2, "layerwise_magnitude", rates={"fc3": 0.1, "fc2": 0.5})
    sl.prune(model, omp.pruning.prune_fraction, "layerwise_magnitude",
             rates={"fc3": omp.pruning.prune_output_fraction, "fc2": 0.875})  # fmt: skip
    for name, mask in sl.masks(imp).items():
        assert abs(int(mask.sum()) - int(sl.masks(model)[name].sum())) <= 2
    with pytest.raises(ValueError, match="levels: expected a positive int, got 0"):
        sanity.one_shot_experiment(exp, 0)


@pytest.mark.parametrize("model, shape", [("mnist1d_mlp", (40,)), ("lenet_300_100", (1, 28, 28))])
def test_small_dense_has_about_the_ticket_parameter_count(model, shape):
    full = sum(p.numel() for p in sl.models.get_model(model, 10, shape).parameters())
    n_in = math.prod(shape)
    for density in (0.8, 0.2, 0.05):
        target = int(full * density)
        hidden = sanity.small_dense_hidden(model, target, n_in, 10)
        net = sanity.small_dense_model(model, hidden, 10, shape)
        count = sum(p.numel() for p in net.parameters())
        assert count == sanity.mlp_parameters(model, hidden, n_in, 10)
        assert abs(count - target) / target < 0.05
        assert net(torch.zeros(3, *shape)).shape == (3, 10)
        assert type(sl.sparsify(net).fc1).__name__ == "MaskedLinear"
    with pytest.raises(ValueError, match=r"model: small-dense training is implemented for"):
        sanity.small_dense_hidden("resnet20", 1000, 3072, 10)


def test_format_markdown_and_jsonable():
    t = jackpot_table()
    row = {"level": 5, "density": 0.2, "sparsity": 0.8, "accuracy": t, "verdict": verdict(t)}
    text = sanity.format_markdown({"densities": [row], "lrs": list(LRS)})
    assert "| 0.2000 | 0.01 | 91.00 | 88.00 | 91.90 | 90.00 | – | 1.00 | ✓✓✓✓✓ | jackpot |" in text
    assert "| 0.2000 | 0.1 |" in text and "**jackpot**" in text
    assert sanity._jsonable({0.01: {1: [0.5]}}) == {"0.01": {"1": [0.5]}}


# --------------------------------------------------------------------------- end to end
def test_cli_sanity_end_to_end(tmp_path, data_dir, capsys):
    from sparse_lottery.__main__ import main

    argv = ["sanity", "--steps", "10it", "--levels", "1", "--lrs", "0.01,0.02",
            "--eval-every", "10it", "--no-progress", "--device", "cpu", "--root", str(tmp_path),
            "--data-dir", str(data_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    (folder,) = tmp_path.glob("sanity_*")
    assert f"results: {folder}" in out
    for name in ("sanity.json", "sanity.md", "sanity.png"):
        assert (folder / name).stat().st_size > 0, name
    result = json.loads((folder / "sanity.json").read_text())
    assert result["lrs"] == [0.01, 0.02] and result["levels"] == 1
    (row,) = result["densities"]
    assert row["density"] == pytest.approx(0.8, abs=0.01)
    assert row["ticket_parameters"] < 276010 and row["small_dense_parameters"] < 276010
    for method in sanity.REPORTED:
        assert set(row["accuracy"][method]) == {"0.01", "0.02"}, method
        assert all(0 <= a <= 100 for a in row["accuracy"][method].values())
        assert sanity._LABELS[method] in out and sanity._LABELS[method] in (
            folder / "sanity.md").read_text()  # fmt: skip
    assert row["accuracy"]["omp"] == row["accuracy"]["lt"]  # one level: OMP is IMP
    assert row["verdict"]["outcome"] in sanity.OUTCOMES
    assert row["verdict"]["failed"][0] == "sparsity"  # 20% sparsity is trivial
    assert {r["lr"] for r in row["verdict"]["per_lr"]} == {0.01, 0.02}
    for levels in result["correlation"].values():
        assert set(levels) == {"0", "1"}
        assert all(0 < r <= 1 for values in levels.values() for r in values.values())
    # R_p of the trained run from the Python API: against θ0 (as in the JSON) and level 0.
    exp = apply_preset("mnist1d_mlp", {"training": {"steps": "10it", "lr": 0.01}})
    runtime = Runtime(root=str(tmp_path), data_dir=str(data_dir), device="cpu", progress=False)
    run = Run(exp, runtime)
    assert {repr(p): r for p, r in corr.level_correlation(run, 1).items()} == (
        result["correlation"]["0.01"]["1"]
    )
    previous = corr.level_correlation(run, 1, (0.2,), reference="previous")
    assert 0.2 < previous[0.2] <= 1.0
    with pytest.raises(ValueError, match="reference: expected 'init' or 'previous'"):
        corr.level_correlation(run, 1, reference="theta0")
    # Every step is done: a second call trains nothing and writes the same table.
    before = (folder / "sanity.json").read_text()
    assert main(argv) == 0
    assert (folder / "sanity.json").read_text() == before
    err = cli_error(capsys, [*argv[:6], "0.01,-1", *argv[7:]])
    assert "--lrs: expected distinct positive" in err


def test_cli_sanity_help_and_list(capsys):
    from sparse_lottery.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sanity", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--lrs" in out and "--min-sparsity" in out and "--lr " in out
    assert main(["sanity", "--list"]) == 0
    assert "mnist1d_mlp" in capsys.readouterr().out


def test_sanity_checks_api_two_levels_omp_reaches_the_ticket_density(tmp_path, data_dir):
    exp = apply_preset("mnist1d_mlp", {"training": {"steps": "10it"}})
    runtime = Runtime(root=str(tmp_path), data_dir=str(data_dir), device="cpu",
                      eval_every="10it", progress=False)  # fmt: skip
    result = sanity.sanity_checks(exp, runtime, [0.01], 2, gap=0.1, ps=(0.5,))
    assert [row["level"] for row in result["densities"]] == [1, 2]
    assert [round(row["density"], 3) for row in result["densities"]] == [0.8, 0.64]
    for row in result["densities"]:
        assert row["omp_density"] == pytest.approx(row["density"], abs=1e-4)
        assert row["small_dense_parameters"] == pytest.approx(row["ticket_parameters"], rel=0.02)
        assert row["verdict"]["thresholds"]["gap"] == 0.1
    assert set(result["correlation"][0.01]) == {0, 1, 2}
    assert (tmp_path / Path(result["folder"]).name / "sanity.json").exists()
    # OMP of level 2 is its own experiment (one 36% step), level 1 the IMP run itself.
    assert len(list(tmp_path.glob("lottery_*"))) == 2
    with pytest.raises(ValueError, match="model: small-dense training is implemented for"):
        sanity.sanity_checks(apply_preset("resnet20_cifar10"), runtime, [0.1], 1)
    with pytest.raises(ValueError, match=r"lrs: expected distinct learning rates"):
        sanity.sanity_checks(exp, runtime, [0.1, 0.1], 1)
    with pytest.raises(ValueError, match="levels: expected a positive int, got 0"):
        sanity.sanity_checks(exp, runtime, [0.1], 0)
