"""Ticket transfer (Mehta 2019; Sabatelli et al. 2020; RESEARCH.md §6): train the tickets IMP
found on a source dataset on a target dataset, with a new classifier head.

For each IMP level of the source run, each reset ("late": the level's trained weights, "init":
θ0, "fresh": a new initialisation) and each freeze mode ("frozen": only the new head trains,
"finetune": every surviving weight trains, the mask fixed), the level's ticket is trained on
the target with the target's training hyperparameters (default: the source's). Baselines: the
dense transfer (the source's trained dense level 0, per freeze mode) and a random ticket per
(level, reset, freeze) with the level's per-layer densities (the driver's `random_prune`
masks; "late" then starts from the dense level 0's trained weights). The model pieces are in
`transfer_model.py`, the table and plot in `transfer_report.py`.

Files, under the replicate's folder (a finished training is skipped, a killed one resumes from
its checkpoint):

    replicate_<r>/transfer_<target>_<hash>/level_<L>/<kind>_<reset>_<freeze>/   a training
    replicate_<r>/transfer_<target>_<hash>/dense/<freeze>/                      dense transfer
    replicate_<r>/transfer_<target>_<hash>/transfer.json, .md, .png             the results

`<hash>` names the target's training hyperparameters.

Pairs that work (the target's samples must fit the source model's input, see
`transfer_model.as_input_shape`): `mnist1d` → `mnist1d_shifted` (offline; `mnist1d_mlp`);
`mnist` ↔ `fashionmnist` (`lenet_300_100`); `cifar10` → `fashionmnist`, `smallnorb`, `mnist`,
`digits` with the CIFAR models (conv2/4/6, ResNets, VGGs, MobileNetV2): grey images are
repeated to 3 channels and resized bilinearly to 32×32; `cifar10` ↔ `cifar100`. Not: between
MNIST-1D and images, or MLPs across different feature counts (a ValueError says so).

Example:
    >>> from sparse_lottery.lottery import Experiment, Run, Runtime
    >>> run = Run(Experiment(), Runtime(root="runs"))  # doctest: +SKIP
    >>> result = transfer(run, "mnist1d_shifted", levels=[1, 2])  # doctest: +SKIP
    >>> [(r["level"], r["kind"], r["reset"], r["freeze"]) for r in result["rows"]][:2]  # doctest: +SKIP
    [(0, 'dense', 'late', 'frozen'), (0, 'dense', 'late', 'finetune')]
"""  # noqa: E501

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from ..lottery import checkpoint, distributed
from ..lottery.hparams import TrainingHparams
from ..lottery.runner import Run
from ..lottery.trainer import Segment, train_segment
from .transfer_model import FREEZES, KINDS, RESETS, Target, transfer_model
from .transfer_report import format_markdown, plot, write_results

# A merged results file that does not parse: this call rewrites its own rows; an earlier call's
# rows come back when it is rerun (its trainings are kept).
MERGED_FIX = "delete it and rerun the transfer calls whose rows it held (their trainings are kept)"

log = logging.getLogger("sparse_lottery")

BASELINES = ("dense", "random")


def segment_dir(target: Target, level: int, kind: str, reset: str, freeze: str) -> Path:
    """The folder of one transfer training (see the module doc)."""
    if kind == "dense":
        return target.folder / "dense" / freeze
    return target.folder / f"level_{level}" / f"{kind}_{reset}_{freeze}"


def train_transfer(run: Run, target: Target, level: int, kind: str, reset: str,
                   freeze: str) -> dict:  # fmt: skip
    """Train one transfer configuration (`transfer_model`) on the target, or read its summary
    when it is finished; resumes a killed training. Frozen bodies train in the dense execution
    form (a sparse form would make their weights trainable parameters again).

    Example:
        >>> summary = train_transfer(run, target, 1, "ticket", "init", "finetune")  # doctest: +SKIP
    """  # noqa: E501
    directory = segment_dir(target, level, kind, reset, freeze)
    done = directory / "summary.json"
    if done.exists():
        return checkpoint.read_json(done)
    model = transfer_model(run, target, level, kind, reset, freeze)
    seg = Segment(directory, run.tag, target.exp, run.seeds, 0, target.total, target.total)
    runtime = run.runtime
    if freeze == "frozen":
        runtime = dataclasses.replace(runtime, execution="dense")
    return train_segment(model.to(run.device), seg, target.data, runtime, run.device)


def plan(levels: Sequence[int], resets: Sequence[str], freezes: Sequence[str],
         baselines: Sequence[str]) -> list[tuple[int, str, str, str]]:  # fmt: skip
    """The (level, kind, reset, freeze) trainings of a transfer, dense transfer first.

    Example:
        >>> plan([1], ["late"], ["frozen"], ["dense", "random"])
        [(0, 'dense', 'late', 'frozen'), (1, 'ticket', 'late', 'frozen'), (1, 'random', 'late', 'frozen')]
    """  # noqa: E501
    jobs = [(0, "dense", "late", f) for f in freezes if "dense" in baselines]
    kinds = ["ticket"] + (["random"] if "random" in baselines else [])
    for level in levels:
        jobs += [(level, k, r, f) for f in freezes for r in resets for k in kinds]
    return jobs


def transfer(
    run: Run,
    target: str,
    levels: Sequence[int],
    resets: Sequence[str] = RESETS,
    freezes: Sequence[str] = FREEZES,
    baselines: Sequence[str] = BASELINES,
    training: TrainingHparams | None = None,
    write: bool = True,
) -> dict:
    """Transfer the tickets of `levels` (≥ 1; trained first if needed) of `run` to the dataset
    `target`, with every reset in `resets` and freeze mode in `freezes`, plus `baselines`
    ("dense", "random"); `training`: the target's hyperparameters (default: the source's).
    Returns {"source", "target", "steps", "rows", "folder"}, one row per training: "level",
    "kind" (ticket/random/dense), "reset", "freeze", "density" (the source level's),
    "test_accuracy", "best_test_accuracy", "directory". With `write`, also writes
    transfer.json, .md and .png into the folder: this call's rows and those of earlier calls
    into the same folder that it did not repeat.

    Example:
        >>> result = transfer(run, "mnist1d_shifted", [1, 2], resets=["late"])  # doctest: +SKIP
    """
    levels = _check_levels(levels)
    for what, values, choices in (("resets", resets, RESETS), ("freezes", freezes, FREEZES),
                                  ("baselines", baselines, BASELINES)):  # fmt: skip
        _check_subset(what, values, choices, allow_empty=what == "baselines")
    goal = Target(run, target, training)
    jobs = plan(levels, resets, freezes, baselines)
    rows = []
    for i, (level, kind, reset, freeze) in enumerate(jobs, 1):
        source = run.level(level)
        log.info("transfer %d/%d: level %d (density %.4f), %s, reset %s, %s", i, len(jobs),
                 level, source["density"], kind, reset, freeze)  # fmt: skip
        summary = train_transfer(run, goal, level, kind, reset, freeze)
        rows.append({"level": level, "kind": kind, "reset": reset, "freeze": freeze,
                     "density": source["density"], "test_accuracy": summary["test_accuracy"],
                     "best_test_accuracy": summary["best_test_accuracy"],
                     "directory": str(segment_dir(goal, level, kind, reset, freeze))})  # fmt: skip
    result = {
        "source": {
            "experiment": run.tag,
            "dataset": run.exp.dataset.dataset,
            "model": run.exp.model.model,
            "replicate": run.replicate,
            "dense_accuracy": run.level(0)["test_accuracy"],
        },  # fmt: skip
        "target": target,
        "steps": goal.total,
        "rows": rows,
        "folder": str(goal.folder),
    }
    if write and distributed.is_main():
        write_results(_with_earlier_rows(result, goal.folder / "transfer.json"), goal.folder)
    return result


def _with_earlier_rows(result: dict, path: Path) -> dict:
    """`result` with the rows of the folder's earlier calls that this one did not repeat (other
    levels, resets, freeze modes or baselines, same target training), so that the folder's
    files keep every training in it."""
    if not path.exists():
        return result
    key = lambda r: (r["level"], r["kind"], r["reset"], r["freeze"])  # noqa: E731
    rows = {key(r): r for r in checkpoint.read_json(path, MERGED_FIX).get("rows", [])}
    rows.update({key(r): r for r in result["rows"]})
    levels = sorted({level for level, *_ in rows if level > 0})
    order = {job: i for i, job in enumerate(plan(levels, RESETS, FREEZES, BASELINES))}
    return {**result, "rows": [rows[job] for job in sorted(rows, key=order.__getitem__)]}


def _check_levels(levels) -> list[int]:
    if isinstance(levels, int):
        levels = [levels]
    levels = list(levels)
    if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in levels):
        raise ValueError(f"levels: expected IMP levels >= 1 (ints), got {levels!r}")
    return sorted(set(levels))


def _check_subset(what: str, values, choices, allow_empty: bool = False) -> None:
    bad = [v for v in values if v not in choices]
    if bad or (not values and not allow_empty) or isinstance(values, str):
        raise ValueError(f"{what}: expected a list of names from {list(choices)}, got "
                         f"{values!r}")  # fmt: skip


__all__ = ["BASELINES", "FREEZES", "KINDS", "RESETS", "segment_dir", "train_transfer", "plan",
           "transfer", "format_markdown", "plot", "write_results"]  # fmt: skip
