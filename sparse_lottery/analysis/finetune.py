"""Pruning & fine-tuning vs lottery tickets (Liu et al. 2021; `../RESEARCH.md` §3).

At each learning rate of a sweep, the experiment's IMP run (the driver's levels, `Run.level`)
gives θ0, the pretrained weights and the masks. At every level L ≥ 1, with the level's mask m,
four methods train the **same budget**: T iterations (the experiment's `--steps`), with the run's
schedule, data order and seeds from iteration 0; only their starting weights differ:

- "lt": the lottery ticket, m⊙θ0 (when the run rewinds to θ0 this is level L itself, reused);
- "rr": random reinitialisation, m⊙θ0' (the driver's "reinit" branch, reused);
- "rewind": rewinding, m⊙θk, θk being the dense network after k iterations
  (`stability.rewind_weights`); unlike Frankle et al., who train θk for the T − k iterations
  left, it gets the full T, so that every method has the same budget;
- "finetune": pruning & fine-tuning, m⊙θT: level L − 1's trained weights (those the mask was
  computed from: the dense network for L = 1), trained on with the schedule restarted at the
  sweep's learning rate (Liu et al. compare fine-tuning at lr 0.01 and 0.1).

Beside the accuracies it reports the weight-correlation indicator R_p (`correlation.r_p_table`,
over the level's surviving weights) between θ0 and the pretrained θT, and between the start
and the end of each method (for "finetune": between fine-tuned and pretrained weights).

Files: each method trains in its own segment, resumable, skipped when done:
`level_<L>/finetune_compare/{lt, rewind_<k>it, finetune}/` of the run (the reused level and
reinit branch keep their own folders); the results of a call go to `<root>/finetune_<hash>/`:
`finetune.json`, `finetune.md` and `finetune.png` (`finetune_report`).

Example:
    >>> from sparse_lottery.lottery import Experiment, Runtime
    >>> result = finetune_comparison(Experiment(), Runtime(), [0.002, 0.02], levels=3)  # doctest: +SKIP
    >>> [(r["lr"], r["level"], r["accuracy"]["finetune"]) for r in result["rows"]]  # doctest: +SKIP
"""  # noqa: E501

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..lottery import distributed
from ..lottery.hparams import TrainingHparams, parse_duration
from ..lottery.runner import Run
from ..lottery.trainer import Segment
from ..model import load_masks
from .correlation import DEFAULT_PS, _check_p, level_correlation, prunable_weights, r_p_table
from .sanity import METRICS, _check_lrs, with_lr
from .stability import _train_or_load, rewind_weights

log = logging.getLogger("sparse_lottery")

METHODS = ("lt", "rr", "rewind", "finetune")
"""The compared methods, in table order (see the module doc)."""

_FOLDER = "finetune_compare"


def parse_rewind_k(run: Run, k: int | str) -> int:
    """The rewind point of the "rewind" method in iterations: an int, "40", "40it" or "1ep";
    it must lie in [1, T) (k = 0 would be the lottery ticket itself).

    Example:
        >>> parse_rewind_k(run, "2ep")  # doctest: +SKIP
        80
    """
    if isinstance(k, bool):
        raise ValueError(f"k: expected iterations or a duration such as '1ep', got {k!r}")
    text = f"{k}it" if isinstance(k, int) or str(k).strip().isdigit() else str(k)
    value = parse_duration(text, run.data.steps_per_epoch, "k")
    if not 0 < value < run.total:
        raise ValueError(
            f"k: expected a rewind point in [1, {run.total}) iterations (after θ0, before the end "
            f"of training, {run.exp.training.steps}), got {k!r} ({value} it)"
        )
    return value


def start_weights(run: Run, level: int, method: str, k: int = 0) -> dict[str, torch.Tensor]:
    """The state dict `method` starts from at level `level` (≥ 1): the level's masks, and its
    starting weights with the pruned entries zeroed, i.e. exactly m⊙θ0 ("lt"), m⊙θ0' ("rr"),
    m⊙θk ("rewind") or m⊙θT ("finetune", θT = level L − 1's trained weights).

    Example:
        >>> state = start_weights(run, 2, "finetune")  # doctest: +SKIP
    """
    _check_method(method)
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f"level: expected a pruned level (an int >= 1), got {level!r}")
    model = run.build(0)
    level_masks = run.level_masks(level, model)
    if method == "lt":
        source = run.init_weights(model)
    elif method == "rr":
        source = run.reinit_weights(0)
    elif method == "rewind":
        source = rewind_weights(run, k, model)
    else:
        source = run.weights(run.level_dir(level - 1) / "final.ckpt", "final", model)
    model.load_state_dict(source)
    load_masks(model, level_masks)
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for name, mask in level_masks.items():
        state[name] = state[name] * mask
    return state


def _lt_is_the_level(run: Run) -> bool:
    """Whether the run's levels themselves train m⊙θ0 over [0, T) (IMP with reset to θ0)."""
    rewind = run.exp.pruning.rewind
    return rewind == "init" or (rewind == "step" and run.k == 0)


def method_dir(run: Run, level: int, method: str, k: int = 0) -> Path:
    """Where `method` trains at `level` (the level itself / the reinit branch when reused)."""
    _check_method(method)
    if method == "lt" and _lt_is_the_level(run):
        return run.level_dir(level)
    if method == "rr":
        return run.branch_dir(level, "reinit")
    name = f"rewind_{k}it" if method == "rewind" else method
    return run.level_dir(level) / _FOLDER / name


def train_method(run: Run, level: int, method: str, k: int = 0) -> dict:
    """Train (or load) `method` at `level`: {"summary", "start", "final", "directory"}, where
    start and final are state dicts (see `start_weights`); resumes a killed training.

    Example:
        >>> out = train_method(run, 1, "finetune")  # doctest: +SKIP
        >>> out["summary"]["end_step"] - out["summary"]["start_step"] == run.total  # doctest: +SKIP
        True
    """
    run.level(level)
    directory = method_dir(run, level, method, k)
    start = start_weights(run, level, method, k)
    model = run.build(0)
    if method == "lt" and _lt_is_the_level(run):
        summary = run.level(level)
    elif method == "rr":
        summary = run.branch(level, "reinit")
    else:
        model.load_state_dict(start)
        seg = Segment(directory, run.tag, run.exp, run.seeds, 0, run.total, run.total)
        what = f"finetune {method} of level {level}, iterations 0..{run.total}"
        summary = _train_or_load(run, model, seg, what)[0]
    final = run.weights(directory / "final.ckpt", "final", model)
    return {"summary": summary, "start": start, "final": final, "directory": str(directory)}


def compare_level(
    run: Run, level: int, k: int, ps: Sequence[float] = DEFAULT_PS, metric: str = METRICS[0]
) -> dict:
    """One row of the comparison: every method of `METHODS` at `level` of `run`.

    Returns {"level", "density", "sparsity", "accuracy" {method: percent}, "iterations"
    {method: n}, "r_p" {"init_vs_pretrained" and each method ("start_vs_final"): {p: R_p}},
    "directories" {method: folder}}.

    Example:
        >>> row = compare_level(run, 1, k=40)  # doctest: +SKIP
        >>> row["r_p"]["finetune"]  # R_p(pretrained, fine-tuned)  # doctest: +SKIP
        {0.1: 0.93, 0.2: 0.94, 0.5: 0.97}
    """
    model = run.build(0)
    level_masks = run.level_masks(level, model)
    survivors = lambda state: prunable_weights(state, level_masks)
    pretrained = run.weights(run.level_dir(level - 1) / "final.ckpt", "final", model)
    init_vs_pretrained = r_p_table(
        survivors(run.init_weights(model)), survivors(pretrained), ps, level_masks
    )
    row = {"level": level, "accuracy": {}, "iterations": {}, "directories": {},
           "r_p": {"init_vs_pretrained": init_vs_pretrained}}  # fmt: skip
    for method in METHODS:
        out = train_method(run, level, method, k)
        summary = out["summary"]
        row.setdefault("density", summary["density"])
        row["accuracy"][method] = 100.0 * summary[metric]
        row["iterations"][method] = summary["end_step"] - summary["start_step"]
        row["directories"][method] = out["directory"]
        row["r_p"][method] = r_p_table(
            survivors(out["start"]), survivors(out["final"]), ps, level_masks
        )
    row["sparsity"] = 1.0 - row["density"]
    return row


def finetune_folder(base_exp, runtime, lrs, levels, replicates, k) -> Path:
    """`<root>/finetune_<hash>`: hash of the experiment (its own lr ignored) and the settings."""
    neutral = with_lr(base_exp, TrainingHparams().lr)
    settings = {"lrs": list(lrs), "levels": levels, "replicates": list(replicates), "k": str(k)}
    return Path(runtime.root) / f"finetune_{neutral.hash({'finetune': settings})}"


def finetune_comparison(
    base_exp,
    runtime,
    lrs: Iterable[float],
    levels: int,
    replicates: Sequence[int] = (0,),
    k: int | str = "1ep",
    ps: Iterable[float] = DEFAULT_PS,
    metric: str = METRICS[0],
) -> dict:
    """Compare LT, RR, rewinding and pruning & fine-tuning at IMP levels 1..`levels` of
    `base_exp` at each learning rate of `lrs` (its own lr is replaced) and each replicate, at
    the same budget; write finetune.json/.md/.png to `finetune_folder(...)` (see the module
    doc). `k`: the rewind point (iterations or a duration such as "1ep"). Accuracies are
    `metric` × 100. Every training is an idempotent step: an interrupted call resumes.

    Returns {"folder", "experiment", "lrs", "levels", "replicates", "k", "iterations" (T),
    "metric", "ps", "methods", "dense" [{"lr", "replicate", "accuracy", "r_p"}], "rows"
    [{"lr", "replicate", **compare_level(...)}], "runs" {lr: folder}}.

    Example:
        >>> from sparse_lottery.lottery import Experiment, Runtime
        >>> result = finetune_comparison(Experiment(), Runtime(), [0.002, 0.02], 3)  # doctest: +SKIP
    """  # noqa: E501
    from .finetune_report import write_outputs

    lrs = _check_lrs(lrs)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected a positive int, got {levels!r}")
    replicates = list(replicates)
    bad = [r for r in replicates if isinstance(r, bool) or not isinstance(r, int) or r < 0]
    if not replicates or bad or len(set(replicates)) != len(replicates):
        raise ValueError(f"replicates: expected distinct ints >= 0, got {replicates!r}")
    ps = tuple(float(p) for p in ps)
    for p in ps:
        _check_p(p)
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    folder = finetune_folder(base_exp, runtime, lrs, levels, replicates, k)
    dense, rows, runs, k_it, total = [], [], {}, None, None
    pairs = [(lr, replicate) for lr in lrs for replicate in replicates]
    for i, (lr, replicate) in enumerate(pairs, 1):
        run = Run(with_lr(base_exp, lr), runtime, replicate)
        runs[lr] = str(run.root)
        k_it, total = parse_rewind_k(run, k), run.total
        log.info("finetune %d/%d: lr %g, replicate %d, levels 0..%d in %s", i, len(pairs),
                 lr, replicate, levels, run.dir)  # fmt: skip
        dense.append({"lr": lr, "replicate": replicate,
                      "accuracy": 100.0 * run.level(0)[metric],
                      "r_p": level_correlation(run, 0, ps)})  # fmt: skip
        for level in range(1, levels + 1):
            row = compare_level(run, level, k_it, ps, metric)
            rows.append({"lr": lr, "replicate": replicate, **row})
            log.info("finetune: lr %g, level %d: %s", lr, level,
                     ", ".join(f"{m} {a:.2f}" for m, a in row["accuracy"].items()))  # fmt: skip
    result = {
        "folder": str(folder),
        "experiment": with_lr(base_exp, TrainingHparams().lr).non_default(),
        "lrs": lrs,
        "levels": levels,
        "replicates": replicates,
        "k": k_it,
        "iterations": total,
        "metric": metric,
        "units": "percent",
        "ps": list(ps),
        "methods": list(METHODS),
        "dense": dense,
        "rows": rows,
        "runs": runs,
    }
    if distributed.is_main():
        write_outputs(result, folder)
    return result


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")


__all__ = [
    "METHODS",
    "compare_level",
    "finetune_comparison",
    "finetune_folder",
    "method_dir",
    "parse_rewind_k",
    "start_weights",
    "train_method",
]
