"""Lottery jackpots (Zhang/Lin et al. 2021; RESEARCH.md §4): a mask search on the pretrained
(level 0, dense-trained) network of a run, with every weight, bias and norm parameter frozen.

Per density: the initial mask keeps the largest pretrained |w| (one global threshold over the
prunable layers, or the same density in each: `layer_density`; the output layer and the
experiment's `--prune-exclude` layers are not pruned unless `prune_output`); one score per
prunable weight starts at `kept_score` / `pruned_score`; each search step forwards a minibatch
of the run's data order through W_eff = mask ⊙ W, takes an SGD step on the scores with the
straight-through gradient, then swaps a fraction r of each layer's candidate pairs (the short
restriction; `jackpot_search`). The density here is that of the prunable layers together.
Every `--eval-every` the test accuracy of the masked network and the IoU between the initial
(magnitude) mask and the current one are recorded.

Files, under `level_0/jackpot_<hash>/` (`<hash>` names the non-default `JackpotHparams`):

    density_<d>/checkpoint.ckpt   the search so far (scores, optimiser, masks; while running)
    density_<d>/found_mask.ckpt   the mask found (packed)
    density_<d>/summary.json      its result: a finished density is never searched again
    jackpot.json, .md, .png       the results of the last call (`jackpot_report`)

A killed search resumes from its checkpoint (written every `--checkpoint-every`) and ends as an
uninterrupted one would (bitwise on the CPU).

Example:
    >>> from sparse_lottery.lottery import Experiment, Run, Runtime
    >>> run = Run(Experiment(), Runtime(root="runs"))  # doctest: +SKIP
    >>> rows = lottery_jackpot(run, [0.1], JackpotHparams(steps="10ep"))  # doctest: +SKIP
    >>> [(r["density"], r["magnitude_accuracy"], r["test_accuracy"], r["iou"]) for r in rows]
    ... # doctest: +SKIP
    [(0.1, 0.312, 0.905, 0.71)]
"""

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import models
from ..execution import set_execution
from ..lottery import checkpoint, distributed
from ..lottery.hparams import SCHEDULES, Experiment, TrainingHparams, parse_duration
from ..lottery.progress import Progress
from ..lottery.runner import Run
from ..lottery.schedule import learning_rate
from ..lottery.trainer import _autocast, _checkpoint_cadence, evaluate, make_optimizer
from .jackpot_report import format_table, plot, write_results
from .jackpot_search import (
    LAYER_DENSITIES,
    SWAP_SCHEDULES,
    initial_scores,
    magnitude_masks,
    prunable_layers,
    scored_forward,
    short_restriction,
    swap_fraction,
)
from .overlap import iou

log = logging.getLogger("sparse_lottery")
NORM_STATS = ("frozen", "update")


@dataclass
class JackpotHparams:
    """Settings of the search (the paper's defaults; RESEARCH.md §4)."""

    steps: str = field(default="10ep", metadata={"help": "search length: '<n>it' or '<n>ep'"})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate of the scores"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of the scores"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay on the scores"})
    schedule: str = field(default="cosine", metadata={"help": f"lr schedule, one of {SCHEDULES}"})
    kept_score: float = field(default=1.0, metadata={"help": "initial score of kept weights"})
    pruned_score: float = field(default=0.99, metadata={"help": "initial score of pruned ones"})
    swap_fraction: float = field(
        default=1.0, metadata={"help": "r: fraction of candidate pairs swapped (1: re-top-k)"}
    )
    swap_schedule: str = field(
        default="constant", metadata={"help": f"r over the search, one of {SWAP_SCHEDULES}"}
    )
    layer_density: str = field(
        default="global",
        metadata={"help": f"per-layer keep ratios, one of {LAYER_DENSITIES}"},
    )
    prune_output: bool = field(default=False, metadata={"help": "prune the output layer too"})
    norm_stats: str = field(
        default="frozen",
        metadata={"help": f"BatchNorm running statistics, one of {NORM_STATS}"},
    )

    def validate(self) -> "JackpotHparams":
        """Raise ValueError naming the field for unusable values; return self."""
        parse_duration(self.steps, 1, "steps")
        for name, choices in (
            ("schedule", SCHEDULES),
            ("swap_schedule", SWAP_SCHEDULES),
            ("layer_density", LAYER_DENSITIES),
            ("norm_stats", NORM_STATS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name}: expected one of {list(choices)}, got {getattr(self, name)!r}"
                )
        checks = (
            ("lr", self.lr > 0, "a positive learning rate"),
            ("momentum", 0 <= self.momentum < 1, "a value in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "a value >= 0"),
            ("swap_fraction", 0 <= self.swap_fraction <= 1, "a fraction in [0, 1]"),
            (
                "kept_score",
                self.kept_score >= self.pruned_score,
                f"at least pruned_score ({self.pruned_score})",
            ),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")
        return self

    def non_default(self) -> dict:
        default = dataclasses.asdict(JackpotHparams())
        return {k: v for k, v in dataclasses.asdict(self).items() if v != default[k]}

    def training(self) -> TrainingHparams:
        """The scores' optimiser and schedule, as the driver's training hyperparameters."""
        return TrainingHparams(
            optimizer="sgd",
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            steps=self.steps,
            schedule=self.schedule,
        )


def excluded_layers(run: Run, hp: JackpotHparams) -> list[str]:
    """Module-name globs not pruned: the experiment's `--prune-exclude`, and the output layer
    unless `hp.prune_output`."""
    exclude = [g.strip() for g in run.exp.pruning.prune_exclude.split(",") if g.strip()]
    if not hp.prune_output:
        exclude.append(models.MODELS[run.exp.model.model].output_layer)
    return exclude


def _pretrained(run: Run, hp: JackpotHparams):
    """The run's model with level 0's trained weights (trained first if needed), frozen."""
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


def search(run: Run, density: float, hp: JackpotHparams, folder) -> dict:
    """One density's search in `folder` (resumed from its checkpoint, or its summary read
    back when finished); returns the summary (see `lottery_jackpot`).

    Example:
        >>> row = search(run, 0.1, JackpotHparams(steps="100it"), run.dir / "jp")  # doctest: +SKIP
    """
    done = folder / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    model, dense_accuracy = _pretrained(run, hp)
    exclude = excluded_layers(run, hp)
    layers = prunable_layers(model, exclude)
    initial = magnitude_masks(model, density, hp.layer_density, exclude)
    for name, mask in initial.items():
        layers[name].set_mask(mask)
    scores = {  # Parameters: a ParameterList would wrap plain tensors into new objects
        n: torch.nn.Parameter(s)
        for n, s in initial_scores(initial, hp.kept_score, hp.pruned_score).items()
    }
    training = hp.training()
    opt = make_optimizer(torch.nn.ParameterList(scores.values()), Experiment(training=training))
    spe, autocast = run.data.steps_per_epoch, _autocast(run.runtime, run.device)
    total = parse_duration(hp.steps, spe, "steps")
    state = {"step": 0, "metrics": [], "loss_sum": 0.0, "loss_count": 0, "seconds": 0.0}
    ckpt_path = folder / "checkpoint.ckpt"
    if ckpt_path.exists():
        saved = checkpoint.load(ckpt_path, run.tag, "jackpot", map_location=run.device)
        for name, score in scores.items():
            score.data.copy_(saved["scores"][name])
            layers[name].weight_mask_packed.copy_(saved["masks"][name])
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log.info("%s: resuming at search step %d", folder, state["step"])

    def record(lr: float, r: float) -> None:
        loss, accuracy = evaluate(model, run.data.test, run.device, autocast)
        found = {name: layer.mask for name, layer in layers.items()}
        train_loss = state["loss_sum"] / state["loss_count"] if state["loss_count"] else math.nan
        state["metrics"].append(
            {
                "step": state["step"],
                "epoch": state["step"] / spe,
                "lr": lr,
                "swap_fraction": r,
                "train_loss": train_loss,
                "test_loss": loss,
                "test_accuracy": accuracy,
                "iou_initial": iou(initial, found),
                "seconds": state["seconds"] + time.perf_counter() - t0,
            }
        )
        state["loss_sum"], state["loss_count"] = 0.0, 0

    t0 = time.perf_counter()
    if not state["metrics"]:
        record(0.0, hp.swap_fraction)  # the magnitude mask itself
    eval_every = max(1, parse_duration(run.runtime.eval_every, spe, "--eval-every"))
    ckpt_seconds, ckpt_every = _checkpoint_cadence(run.runtime.checkpoint_every, spe)
    last_ckpt = time.perf_counter()
    bar = Progress(
        total,
        f"jackpot density {density:g}",
        start=state["step"],
        enabled=run.runtime.progress and distributed.is_main(),
    )
    while state["step"] < total:
        step = state["step"]
        lr = learning_rate(training, step, total, spe)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = run.data.minibatch(step, run.seeds, run.device)
        _set_mode(model, hp.norm_stats)
        with autocast():
            loss = F.cross_entropy(scored_forward(model, scores, x).float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"search step {step}: loss {loss.item()}; lower --search-lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        r = swap_fraction(hp.swap_fraction, hp.swap_schedule, step, total)
        for name, layer in layers.items():
            new, swapped = short_restriction(scores[name].detach(), layer.mask, r)
            if swapped:
                layer.set_mask(new)
        state["step"] += 1
        state["loss_sum"] += loss.item()
        state["loss_count"] += 1
        bar.update(1, loss=state["loss_sum"] / state["loss_count"], lr=lr)
        if state["step"] % eval_every == 0 or state["step"] == total:
            record(lr, r)
        due = (
            (state["step"] % ckpt_every == 0)
            if ckpt_every
            else (time.perf_counter() - last_ckpt >= ckpt_seconds)
        )
        if due and state["step"] < total and distributed.is_main():
            last_ckpt = time.perf_counter()
            checkpoint.save(
                ckpt_path,
                {
                    "scores": {n: s.detach().cpu() for n, s in scores.items()},
                    "masks": {n: layer.weight_mask_packed.cpu() for n, layer in layers.items()},
                    "optimizer": opt.state_dict(),
                    "state": {**state, "seconds": state["seconds"] + time.perf_counter() - t0},
                },
                experiment=run.tag,
                kind="jackpot",
            )
    bar.close()
    found = {name: layer.mask for name, layer in layers.items()}
    metrics = state["metrics"]
    summary = {
        "density": density,
        "layer_density": {n: float(m.float().mean()) for n, m in found.items()},
        "excluded": exclude,
        "dense_accuracy": dense_accuracy,
        "magnitude_accuracy": metrics[0]["test_accuracy"],
        "test_accuracy": metrics[-1]["test_accuracy"],
        "best_test_accuracy": max(m["test_accuracy"] for m in metrics),
        "iou": iou(initial, found),
        "iou_per_layer": iou(initial, found, per_layer=True),
        "steps": total,
        "seconds": metrics[-1]["seconds"],
        "metrics": metrics,
        "hparams": dataclasses.asdict(hp),
        "directory": str(folder),
    }
    if distributed.is_main():
        run.save_masks(folder / "found_mask.ckpt", model, found)
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
    folder = run.level_dir(0) / f"jackpot_{Experiment().hash(hp.non_default())}"
    rows = [search(run, float(d), hp, folder / f"density_{float(d):g}") for d in densities]
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
