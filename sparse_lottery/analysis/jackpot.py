"""Lottery jackpots (Zhang/Lin et al. 2021; RESEARCH.md §4): a mask search on the pretrained
(level 0, dense-trained) network of a run, with every weight, bias and norm parameter frozen.

Per density: the initial mask keeps the largest pretrained |w| (one global threshold over the
prunable layers, or the same density in each: `layer_density`; the experiment's
`--prune-exclude` layers are never pruned, the output layer only with `prune_output`); one score per
prunable weight starts at `kept_score` / `pruned_score`; each search step forwards a minibatch
of the run's data order through W_eff = mask ⊙ W, takes an SGD step on the scores with the
straight-through gradient, then swaps a fraction r of each layer's candidate pairs (the short
restriction; `jackpot_search`). The density here is that of the prunable layers together.
Every `--eval-every` the test accuracy of the masked network and the IoU between the initial
(magnitude) mask and the current one are recorded. BatchNorm running statistics stay frozen
(those layers in eval mode) unless `norm_stats="update"`.

Files, under `level_0/jackpot_<hash>/` (`<hash>` names the non-default `JackpotHparams`):

    density_<d>/checkpoint.ckpt   the search so far (scores, optimiser, masks; while running)
    density_<d>/found_mask.ckpt   the mask found (packed)
    density_<d>/summary.json      its result: a finished density is never searched again
    jackpot.json, .md, .png       the results of the last call (`jackpot_report`)

A killed search resumes from its checkpoint (written every `--checkpoint-every`) and ends as an
uninterrupted one would (bitwise on the CPU, for models without dropout). Single process only.

Example:
    >>> from sparse_lottery.lottery import Experiment, Run, Runtime
    >>> run = Run(Experiment(), Runtime(root="runs"))  # doctest: +SKIP
    >>> rows = lottery_jackpot(run, [0.01], JackpotHparams(steps="10ep"))  # doctest: +SKIP
    >>> [(r["magnitude_accuracy"], r["test_accuracy"], round(r["iou"], 3)) for r in rows]
    ... # doctest: +SKIP
    [(0.391, 0.643, 0.338)]
"""

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..execution import set_execution
from ..lottery import checkpoint, distributed
from ..lottery.hparams import Experiment, parse_duration
from ..lottery.progress import Progress
from ..lottery.runner import Run
from ..lottery.schedule import learning_rate
from ..lottery.trainer import _autocast, _checkpoint_cadence, evaluate, make_optimizer
from .jackpot_hparams import JackpotHparams, excluded_layers
from .jackpot_report import format_table, plot, write_results
from .jackpot_search import (
    initial_scores,
    magnitude_masks,
    prunable_layers,
    scored_forward,
    short_restriction,
    swap_fraction,
)
from .overlap import iou

log = logging.getLogger("sparse_lottery")


def _pretrained(run: Run) -> tuple[torch.nn.Module, float]:
    """(the run's model with level 0's trained weights, frozen; level 0's test accuracy),
    level 0 trained first if needed."""
    dense_accuracy = run.level(0)["test_accuracy"]
    model = run.build(0)
    model.load_state_dict(run.weights(run.level_dir(0) / "final.ckpt", "final", model))
    set_execution(model, "dense")
    model.requires_grad_(False)
    return model.to(run.device), dense_accuracy


def _set_mode(model: torch.nn.Module, norm_stats: str) -> None:
    """Train mode; norm layers with running statistics in eval mode when they are frozen."""
    model.train()
    if norm_stats == "frozen":
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._NormBase):
                module.eval()


class _Search:
    """One density's search state: the frozen model (its layers' masks are the current mask),
    the scores and their optimiser, and the progress counters (`state`, checkpointed)."""

    def __init__(self, run: Run, density: float, hp: JackpotHparams) -> None:
        self.run, self.hp = run, hp
        self.model, self.dense_accuracy = _pretrained(run)
        self.exclude = excluded_layers(run, hp)
        self.layers = prunable_layers(self.model, self.exclude)
        self.initial = magnitude_masks(self.model, density, hp.layer_density, self.exclude)
        for name, mask in self.initial.items():
            self.layers[name].set_mask(mask)
        scores = initial_scores(self.initial, hp.kept_score, hp.pruned_score)
        # Parameters: a ParameterList would wrap plain tensors into new objects
        self.scores = {n: torch.nn.Parameter(s) for n, s in scores.items()}
        self.training = hp.training()
        params = torch.nn.ParameterList(self.scores.values())
        self.opt = make_optimizer(params, Experiment(training=self.training))
        self.autocast = _autocast(run.runtime, run.device)
        self.total = parse_duration(hp.steps, run.data.steps_per_epoch, "steps")
        self.state = {"step": 0, "metrics": [], "loss_sum": 0.0, "loss_count": 0, "seconds": 0.0}
        self.t0 = time.perf_counter()

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: layer.mask for name, layer in self.layers.items()}

    def seconds(self) -> float:
        return self.state["seconds"] + time.perf_counter() - self.t0

    def step(self) -> None:
        """One search step: SGD on the scores, then the short restriction in every layer."""
        run, hp, step = self.run, self.hp, self.state["step"]
        lr = learning_rate(self.training, step, self.total, run.data.steps_per_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x, y = run.data.minibatch(step, run.seeds, run.device)
        _set_mode(self.model, hp.norm_stats)
        with self.autocast():
            loss = F.cross_entropy(scored_forward(self.model, self.scores, x).float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"search step {step}: loss {loss.item()}; lower --search-lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        r = swap_fraction(hp.swap_fraction, hp.swap_schedule, step, self.total)
        for name, layer in self.layers.items():
            new, swapped = short_restriction(self.scores[name].detach(), layer.mask, r)
            if swapped:
                layer.set_mask(new)
        self.state.update(step=step + 1, lr=lr, swap_fraction=r)
        self.state["loss_sum"] += loss.item()
        self.state["loss_count"] += 1

    def record(self) -> None:
        """Append the test loss and accuracy of the current mask and its IoU with the initial."""
        state, run = self.state, self.run
        loss, accuracy = evaluate(self.model, run.data.test, run.device, self.autocast)
        count = state["loss_count"]
        state["metrics"].append({
            "step": state["step"], "epoch": state["step"] / run.data.steps_per_epoch,
            "lr": state.get("lr", 0.0), "swap_fraction": state.get("swap_fraction", 0.0),
            "train_loss": state["loss_sum"] / count if count else None,
            "test_loss": loss, "test_accuracy": accuracy,
            "iou_initial": iou(self.initial, self.masks()), "seconds": self.seconds(),
        })  # fmt: skip
        state["loss_sum"], state["loss_count"] = 0.0, 0

    def save(self, path) -> None:
        checkpoint.save(path, {
            "scores": {n: s.detach().cpu() for n, s in self.scores.items()},
            "masks": {n: layer.weight_mask_packed.cpu() for n, layer in self.layers.items()},
            "optimizer": self.opt.state_dict(),
            "state": {**self.state, "seconds": self.seconds()},
        }, experiment=self.run.tag, kind="jackpot")  # fmt: skip

    def resume(self, path) -> None:
        saved = checkpoint.load(path, self.run.tag, "jackpot", map_location=self.run.device)
        with torch.no_grad():
            for name, score in self.scores.items():
                score.copy_(saved["scores"][name])
                self.layers[name].weight_mask_packed.copy_(saved["masks"][name])
        self.opt.load_state_dict(saved["optimizer"])
        self.state, self.t0 = saved["state"], time.perf_counter()
        log.info("%s: resuming at search step %d", path.parent, self.state["step"])


def search(run: Run, density: float, hp: JackpotHparams, folder: Path) -> dict:
    """One density's search in `folder` (resumed from its checkpoint, or its summary read
    back when finished); returns the summary (see `lottery_jackpot`).

    Example:
        >>> row = search(run, 0.1, JackpotHparams(steps="100it"), run.dir / "jp")  # doctest: +SKIP
    """
    done, ckpt_path = folder / "summary.json", folder / "checkpoint.ckpt"
    if done.exists():
        return checkpoint.read_json(done)
    s = _Search(run, density, hp)
    if ckpt_path.exists():
        s.resume(ckpt_path)
    else:
        s.record()  # step 0: the magnitude mask itself
    spe = run.data.steps_per_epoch
    eval_every = max(1, parse_duration(run.runtime.eval_every, spe, "--eval-every"))
    ckpt_seconds, ckpt_every = _checkpoint_cadence(run.runtime.checkpoint_every, spe)
    last_ckpt, main = time.perf_counter(), distributed.is_main()
    bar = Progress(s.total, f"jackpot density {density:g}", start=s.state["step"],
                   enabled=run.runtime.progress and main)  # fmt: skip
    while s.state["step"] < s.total:
        s.step()
        step = s.state["step"]
        bar.update(1, loss=s.state["loss_sum"] / s.state["loss_count"], lr=s.state["lr"])
        if step % eval_every == 0 or step == s.total:
            s.record()
        since = time.perf_counter() - last_ckpt
        due = step % ckpt_every == 0 if ckpt_every else since >= ckpt_seconds
        if due and step < s.total and main:
            s.save(ckpt_path)
            last_ckpt = time.perf_counter()
    bar.close()
    found, metrics = s.masks(), s.state["metrics"]
    summary = {
        "density": density,
        "layer_density": {n: float(m.float().mean()) for n, m in found.items()},
        "excluded": s.exclude,
        "dense_accuracy": s.dense_accuracy,
        "magnitude_accuracy": metrics[0]["test_accuracy"],
        "test_accuracy": metrics[-1]["test_accuracy"],
        "best_test_accuracy": max(m["test_accuracy"] for m in metrics),
        "iou": iou(s.initial, found),
        "iou_per_layer": iou(s.initial, found, per_layer=True),
        "steps": s.total,
        "seconds": metrics[-1]["seconds"],
        "metrics": metrics,
        "hparams": dataclasses.asdict(hp),
        "directory": str(folder),
    }
    if main:
        run.save_masks(folder / "found_mask.ckpt", s.model, found)
        checkpoint.atomic_write_json(done, summary)
        ckpt_path.unlink(missing_ok=True)
    return summary


def lottery_jackpot(
    run: Run, densities: Sequence[float], hp: JackpotHparams | None = None, write: bool = True
) -> list[dict]:
    """Search a mask at each of `densities` (fractions of the prunable weights kept) on the
    pretrained level 0 of `run` (trained first if needed); returns one summary per density:
    "density", "layer_density" (per layer, found mask), "excluded", "dense_accuracy",
    "magnitude_accuracy" (the initial mask, no search), "test_accuracy" (after the search),
    "best_test_accuracy", "iou" (initial vs found mask) and "iou_per_layer", "steps",
    "seconds", "metrics" (per evaluation: step, lr, swap_fraction, train/test loss,
    test_accuracy, iou_initial), "hparams", "directory". With `write`, also writes
    jackpot.json, .md and .png (see the module doc).

    Example:
        >>> rows = lottery_jackpot(run, [0.2, 0.05])  # doctest: +SKIP
    """
    hp = (hp or JackpotHparams()).validate()
    if distributed.world()[1] > 1:
        raise ValueError(
            "jackpot: expected one process (the search is not distributed), "
            f"got {distributed.world()[1]}; launch it without torchrun"
        )
    if isinstance(densities, int | float):
        densities = [densities]
    if not densities:
        raise ValueError(f"densities: expected at least one density, got {densities!r}")
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1:
            raise ValueError(f"densities: expected fractions in (0, 1], got {d!r}")
    tag = Experiment().hash({"jackpot": hp.non_default()})
    folder = run.level_dir(0) / f"jackpot_{tag}"
    rows = []
    for i, d in enumerate(densities, 1):
        log.info("jackpot %d/%d: density %g", i, len(densities), d)
        rows.append(search(run, float(d), hp, folder / f"density_{float(d):g}"))
    for row in rows:
        log.info(
            "jackpot: density %g: magnitude %.4f -> searched %.4f (dense %.4f), IoU %.3f",
            row["density"],
            row["magnitude_accuracy"],
            row["test_accuracy"],
            row["dense_accuracy"],
            row["iou"],
        )
    if write and distributed.is_main():
        write_results(rows, folder)
    return rows


__all__ = [
    "JackpotHparams",
    "excluded_layers",
    "format_table",
    "lottery_jackpot",
    "plot",
    "search",
    "write_results",
]
