"""Lottery jackpots: known answers of the search's parts (initial magnitude masks, scores, the
straight-through gradient against a pure-PyTorch reference, the short restriction), the
invariants of a search on a tiny run (frozen parameters, exact densities, r = 0 / r = 1,
resuming), and the `jackpot` command end to end on MNIST-1D."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import cli_error

import sparse_lottery as sl
from sparse_lottery.__main__ import main
from sparse_lottery.analysis import JackpotHparams, iou, lottery_jackpot
from sparse_lottery.analysis.jackpot import _Search, search
from sparse_lottery.analysis.jackpot_search import (
    initial_scores,
    magnitude_masks,
    scored_forward,
    short_restriction,
    swap_fraction,
)
from sparse_lottery.lottery import Experiment, Run, Runtime
from sparse_lottery.lottery.hparams import DatasetHparams, ModelHparams, TrainingHparams


def _mlp(seed=0):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 9), torch.nn.ReLU()]
    return sl.sparsify(torch.nn.Sequential(*layers, torch.nn.Linear(9, 4)))


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.reshape(-1).topk(k).indices] = True
    return mask.view_as(scores)


# --------------------------------------------------------------------------- initial masks
def test_initial_masks_are_the_global_and_uniform_magnitude_masks():
    model = _mlp()
    weights = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    kept = round(0.3 * flat.numel())
    threshold = flat.sort(descending=True).values[kept - 1]  # distinct random magnitudes
    masks = magnitude_masks(model, 0.3, exclude=["4"])
    assert list(masks) == list(weights)  # the output layer "4" is not pruned
    for name, w in weights.items():
        assert torch.equal(masks[name], w.detach().abs() >= threshold), name
    assert sum(int(m.sum()) for m in masks.values()) == kept
    uniform = magnitude_masks(model, 0.25, "uniform", exclude=["4"])
    for name, w in weights.items():
        assert torch.equal(uniform[name], _top_k(w.detach().abs(), round(0.25 * w.numel())))
    assert iou(masks, masks) == 1.0


def test_initial_masks_and_scores_refuse_bad_input():
    model = _mlp()
    with pytest.raises(ValueError, match=r"density: expected a fraction in \(0, 1\], got 1.5"):
        magnitude_masks(model, 1.5)
    with pytest.raises(ValueError, match="layer_density: expected one of"):
        magnitude_masks(model, 0.5, "layerwise")
    with pytest.raises(ValueError, match="exclude: leaves no masked layer"):
        magnitude_masks(model, 0.5, exclude=["*"])
    with pytest.raises(ValueError, match="kept_score: expected at least pruned_score"):
        initial_scores({"w": torch.ones(2, dtype=torch.bool)}, 0.5, 0.9)


def test_scores_start_at_the_kept_and_pruned_values():
    mask = torch.tensor([[True, False, True]])
    scores = initial_scores({"w": mask}, 1.0, 0.99)["w"]
    assert scores.dtype == torch.float32
    assert scores.tolist() == [[1.0, torch.tensor(0.99).item(), 1.0]]


# --------------------------------------------------------------------------- straight-through
def _reference_grads(layers, masks, x, y, conv: bool):
    """∂L/∂W_eff ⊙ W with W_eff = W ⊙ m as leaf tensors, plain torch functional ops."""
    effs = [(lay.weight.detach() * m).requires_grad_() for lay, m in zip(layers, masks)]
    if conv:
        h = F.relu(F.conv2d(x, effs[0], layers[0].bias, padding=1))
        out = F.linear(h.flatten(1), effs[1], layers[1].bias)
    else:
        h = F.relu(F.linear(x, effs[0], layers[0].bias))
        h = F.relu(F.linear(h, effs[1], layers[1].bias))
        out = F.linear(h, layers[2].weight, layers[2].bias)
    loss = F.cross_entropy(out, y)
    loss.backward()
    return out.detach(), [e.grad * lay.weight.detach() for e, lay in zip(effs, layers)]


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
def test_straight_through_gradient_is_the_pure_pytorch_reference(conv, device):
    torch.manual_seed(1)
    if conv:
        model = sl.sparsify(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1),
                                                torch.nn.ReLU(), torch.nn.Flatten(),
                                                torch.nn.Linear(3 * 5 * 5, 4)))  # fmt: skip
        layers, names, x = [model[0], model[3]], ["0.weight", "3.weight"], torch.randn(8, 2, 5, 5)
    else:
        model = _mlp(1)
        layers, names, x = [model[0], model[2], model[4]], ["0.weight", "2.weight"], None
        x = torch.randn(8, 6)
    y = torch.randint(0, 4, (8,))
    masks = [torch.rand(lay.weight.shape) < 0.4 for lay in layers[:2]]
    model, x, y = model.to(device).requires_grad_(False), x.to(device), y.to(device)
    masks = [m.to(device) for m in masks]
    for lay, m in zip(layers, masks):
        lay.set_mask(m)
    scores = {n: torch.nn.Parameter(s) for n, s in initial_scores(dict(zip(names, masks))).items()}
    out = scored_forward(model, scores, x)
    F.cross_entropy(out, y).backward()
    ref_out, ref_grads = _reference_grads(layers, masks, x, y, conv)
    tol = {"rtol": 1e-5, "atol": 1e-7} if device == "cpu" else {"rtol": 2e-3, "atol": 1e-5}
    torch.testing.assert_close(out.detach(), ref_out, **tol)
    torch.testing.assert_close(out.detach(), model(x), **tol)  # the masked network's forward
    for name, m, ref in zip(names, masks, ref_grads):
        torch.testing.assert_close(scores[name].grad, ref, **tol)
        assert scores[name].grad[~m].abs().sum() > 0, "pruned weights' scores must move"
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- short restriction
@pytest.mark.parametrize("seed", range(5))
def test_short_restriction_with_r_1_is_the_plain_top_k_of_the_scores(seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(13, 7, generator=gen)  # distinct
    mask = torch.rand(13, 7, generator=gen) < 0.3
    new, swapped = short_restriction(scores, mask, 1.0)
    assert torch.equal(new, _top_k(scores, int(mask.sum())))
    assert swapped == int((new & ~mask).sum())


def test_short_restriction_swaps_the_best_pairs_and_keeps_the_density():
    scores = torch.tensor([0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.0, 0.6])
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    # k = 4: top 4 = {0, 4, 5, 7}; revive 4, 5, 7 (0.8, 0.7, 0.6), prune 1, 2, 3 (0.1, 0.2, 0.3)
    new, swapped = short_restriction(scores, mask, 0.5)  # ceil(0.5 × 3) = 2 pairs
    assert swapped == 2
    assert new.tolist() == [True, False, False, True, True, True, False, False]
    for r in (0.0, 0.1, 0.5, 1.0):
        assert int(short_restriction(scores, mask, r)[0].sum()) == 4
    assert short_restriction(scores, mask, 0.0) == (mask, 0)
    ties = torch.tensor([1.0, 1.0, 1.0, 1.0])  # ties at the k-th score: the kept stay kept
    assert short_restriction(ties, torch.tensor([False, True, False, True]), 1.0)[1] == 0
    with pytest.raises(ValueError, match="fraction: expected a fraction in"):
        short_restriction(scores, mask, 1.5)


def test_swap_fraction_schedules():
    assert [swap_fraction(0.8, "constant", s, 4) for s in range(4)] == [0.8] * 4
    assert swap_fraction(1.0, "cosine", 0, 4) == 1.0
    assert swap_fraction(1.0, "cosine", 2, 4) == pytest.approx(0.5)
    assert swap_fraction(1.0, "linear", 4, 4) == 0.0
    with pytest.raises(ValueError, match="swap_schedule: expected one of"):
        swap_fraction(1.0, "step", 0, 4)


# --------------------------------------------------------------------------- searches on a run
def _run(root, data_dir, **runtime) -> Run:
    exp = Experiment(training=TrainingHparams(steps="20it"))
    options = {"device": "cpu", "progress": False, "eval_every": "4it", "execution": "dense"}
    return Run(exp, Runtime(root=str(root), data_dir=str(data_dir), **{**options, **runtime}))


@pytest.fixture(scope="module")
def mnist1d_run(tmp_path_factory, data_dir):
    return _run(tmp_path_factory.mktemp("runs"), data_dir)


_FAST = JackpotHparams(steps="6it", lr=1.0, schedule="constant")  # masks move within 6 steps


def _check_steps(s: _Search, steps: int, r: float) -> None:
    """Run `steps` search steps checking the invariants after each."""
    frozen = {k: v.clone() for k, v in s.model.state_dict().items() if "mask" not in k}
    counts = {n: int(m.sum()) for n, m in s.initial.items()}
    previous = s.masks()
    for _ in range(steps):
        s.step()
        masks = s.masks()
        state = s.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in frozen.items()), "a parameter moved"
        assert {n: int(m.sum()) for n, m in masks.items()} == counts
        for name, m in masks.items():
            score = s.scores[name].detach()
            if r == 0:
                assert torch.equal(m, previous[name])
            else:  # r = 1: a top-k set of the scores (any tie-break)
                assert score[m].min() >= score[~m].max()
        previous = masks


def test_search_freezes_the_weights_keeps_densities_and_r_1_is_re_top_k(mnist1d_run):
    s = _Search(mnist1d_run, 0.1, _FAST)
    assert torch.equal(torch.cat([m.reshape(-1) for m in s.initial.values()]).sum(),
                       torch.tensor(round(0.1 * (40 * 500 + 500 * 500))))  # fmt: skip
    assert "fc3.weight" not in s.initial and s.model.fc3.density == 1.0
    _check_steps(s, 6, 1.0)
    assert iou(s.initial, s.masks()) < 1.0  # the search moved the mask


def test_search_with_r_0_never_changes_the_mask(mnist1d_run):
    s = _Search(mnist1d_run, 0.2, JackpotHparams(steps="5it", swap_fraction=0.0))
    _check_steps(s, 5, 0.0)
    assert iou(s.initial, s.masks()) == 1.0


def test_search_freezes_norm_parameters_and_statistics(tmp_path, data_dir):
    exp = Experiment(dataset=DatasetHparams(dataset="digits"), model=ModelHparams("resnet20"),
                     training=TrainingHparams(steps="2it"))  # fmt: skip
    run = Run(exp, Runtime(root=str(tmp_path), data_dir=str(data_dir), device="cpu",
                           progress=False, execution="dense"))  # fmt: skip
    s = _Search(run, 0.2, JackpotHparams(steps="2it"))
    assert len(s.layers) == 21 and s.exclude == ["fc"]
    _check_steps(s, 2, 1.0)


def test_killed_search_resumes_to_the_uninterrupted_result(tmp_path, data_dir, monkeypatch):
    hp = dataclasses.replace(_FAST, steps="10it")
    whole = search(_run(tmp_path / "a", data_dir), 0.1, hp, tmp_path / "a" / "jp")
    run = _run(tmp_path / "b", data_dir, checkpoint_every="1it")
    run.level(0)  # trained before the search is made to die
    real = run.data.minibatch

    def dies_at_step_7(step, *args):
        if step == 7:
            raise KeyboardInterrupt
        return real(step, *args)

    monkeypatch.setattr(run.data, "minibatch", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        search(run, 0.1, hp, tmp_path / "b" / "jp")
    assert (tmp_path / "b" / "jp" / "checkpoint.ckpt").exists()
    monkeypatch.setattr(run.data, "minibatch", real)
    resumed = search(run, 0.1, hp, tmp_path / "b" / "jp")
    drop = lambda rows: [{k: v for k, v in m.items() if k != "seconds"} for m in rows]
    assert drop(resumed["metrics"]) == drop(whole["metrics"])
    assert resumed["iou"] == whole["iou"] < 1.0
    assert not (tmp_path / "b" / "jp" / "checkpoint.ckpt").exists()
    assert search(run, 0.1, hp, tmp_path / "b" / "jp") == resumed  # finished: read back


def test_lottery_jackpot_refuses_bad_input(mnist1d_run):
    with pytest.raises(ValueError, match=r"densities: expected fractions in \(0, 1\], got 0"):
        lottery_jackpot(mnist1d_run, [0.1, 0])
    with pytest.raises(ValueError, match="swap_fraction: expected a fraction in"):
        lottery_jackpot(mnist1d_run, [0.1], JackpotHparams(swap_fraction=2.0))
    with pytest.raises(ValueError, match="layer_density: expected one of"):
        JackpotHparams(layer_density="layerwise").validate()


# --------------------------------------------------------------------------- command line
def test_jackpot_cli_writes_results(tmp_path, data_dir, capsys):
    flags = ["--steps", "20it", "--root", str(tmp_path), "--data-dir", str(data_dir),
             "--device", "cpu", "--no-progress", "--eval-every", "4it"]  # fmt: skip
    argv = ["-q", "jackpot", "--density", "0.1,0.05", "--search-steps", "8it", *flags]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| density | steps |" in out
    path = next(tmp_path.glob("lottery_*/replicate_0/level_0/jackpot_*/jackpot.json"))
    for name in ("jackpot.md", "jackpot.png"):
        assert (path.parent / name).stat().st_size > 0, name
    rows = json.loads(path.read_text())["results"]
    assert [r["density"] for r in rows] == [0.1, 0.05]
    for row in rows:
        assert [m["step"] for m in row["metrics"]] == [0, 4, 8]
        assert row["metrics"][0]["iou_initial"] == 1.0
        assert row["metrics"][0]["test_accuracy"] == row["magnitude_accuracy"]
        assert row["metrics"][-1]["iou_initial"] == row["iou"]
        assert (path.parent / f"density_{row['density']:g}" / "found_mask.ckpt").exists()
    assert "0.0500" in (path.parent / "jackpot.md").read_text()
    err = cli_error(capsys, ["-q", "jackpot", "--swap-fraction", "2", *flags])
    assert "--swap-fraction: expected a fraction in" in err
    assert "--density: expected fractions" in cli_error(
        capsys, ["-q", "jackpot", "--density", "0.1,x", *flags]
    )


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["jackpot", "--help"])
    text = capsys.readouterr().out
    for flag in ("--density", "--search-steps", "--search-lr", "--search-momentum",
                 "--search-weight-decay", "--search-schedule", "--kept-score", "--pruned-score",
                 "--swap-fraction", "--swap-schedule", "--layer-density", "--prune-output",
                 "--norm-stats", "--steps", "--root"):  # fmt: skip
        assert flag in text, flag
