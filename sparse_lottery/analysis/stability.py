"""Instability analysis (linear mode connectivity, Frankle et al. 2020) of the levels of a run.

For a finished level L and a rewind point k: start from the level's mask applied to θk (θ0 for
k = 0, else the dense network trained k iterations from θ0 with the run's data order — the
weights level 0 passes through; `rewind.ckpt` is reused when it holds that k), train two copies
W1, W2 over iterations [k, T) with the run's schedule, differing only in their data-order and
augmentation seeds (copy "b" adds `seed_offset` to both), and evaluate along the linear path
E_α = test error of αW1 + (1−α)W2 at `alphas` evenly spaced α in [0, 1] (α = 0 is W2, α = 1 is
W1). Per (level, k):

- barrier (instability) = max_α E_α − ½(E_0 + E_1); *stable* when below `threshold` (2% test
  error, as in the paper);
- *matching* when the copies' mean test accuracy is at least the dense level 0's minus
  `tolerance` (default 0.2 points, the literature's value; RESEARCH.md §2);
- the L2 distance between the masked weights of W1 and W2.

Norm layers: the running statistics of a BatchNorm layer are not a linear function of the
weights, so for every interpolated network (the endpoints included) they are recomputed: reset,
then `norm_batches` training minibatches (the run's first iterations, with their augmentation,
the same for every α and k) are forwarded in train mode with `momentum=None` (a cumulative
average), without gradients. Models without running-statistics norm layers skip this, and then
E_0 and E_1 are exactly the copies' own test errors.

The pure parts (`interpolate`, `barrier`, `recompute_norm_stats`, `masked_distance`) are in
`interpolation.py`, the table and plot in `stability_report.py`; all are importable from here.

Files, under the level's folder (every step is skipped when its file exists; a killed training
resumes from its checkpoint):

    level_<L>/stability_<hash>/k_<k>/copy_a/, copy_b/    the two copies (training segments)
    level_<L>/stability_<hash>/k_<k>/path_<hash>.json   E_α for one evaluation setting
    level_<L>/stability_<hash>/stability.json, .md, .png  the results of the last call
    level_0/rewind_<k>it/final.ckpt                     θk when rewind.ckpt does not hold it

`<hash>` of the folder names `seed_offset` (what changes the copies); that of a path file names
`alphas` and `norm_batches`.

Example:
    >>> from sparse_lottery.lottery import Experiment, Run, Runtime
    >>> run = Run(Experiment(), Runtime(root="runs"))  # doctest: +SKIP
    >>> rows = instability(run, level=3, k_list=[0, 100])  # doctest: +SKIP
    >>> [(r["k"], round(r["barrier"], 3), r["stable"]) for r in rows]  # doctest: +SKIP
    [(0, 0.081, False), (100, 0.004, True)]
"""

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..lottery import checkpoint, distributed
from ..lottery.hparams import Experiment, parse_duration
from ..lottery.runner import Run
from ..lottery.trainer import Segment, _autocast, evaluate, train_segment
from ..model import load_masks
from .interpolation import barrier, interpolate, masked_distance, recompute_norm_stats
from .stability_report import format_table, plot_paths, write_results

log = logging.getLogger("sparse_lottery")

COPIES = ("a", "b")


# --------------------------------------------------------------------------- run steps
def _tag(settings: dict) -> str:
    return Experiment().hash(settings)


def _parse_k(run: Run, k_list) -> list[int]:
    if isinstance(k_list, (int, str)):
        k_list = [k_list]
    ks = []
    for item in k_list:
        k = (
            item
            if isinstance(item, int)
            else parse_duration(
                f"{item}it" if str(item).strip().isdigit() else item,
                run.data.steps_per_epoch,
                "k_list",
            )
        )
        if not 0 <= k < run.total:
            raise ValueError(
                f"k_list: expected rewind points in [0, {run.total}) (the run's "
                f"iterations), got {item!r}"
            )
        if k not in ks:
            ks.append(k)
    if not ks:
        raise ValueError(f"k_list: expected at least one rewind point, got {k_list!r}")
    return ks


def _train_or_load(run: Run, model: nn.Module, seg: Segment, what: str) -> tuple[dict, dict]:
    """(summary, final weights) of a segment, trained (and `what` logged) unless its summary
    exists."""
    done = seg.directory / "summary.json"
    if not done.exists():
        log.info("training %s", what)
        train_segment(model.to(run.device), seg, run.data, run.runtime, run.device)
    summary = checkpoint.read_json(done)
    return summary, run.weights(seg.directory / "final.ckpt", "final", model)


def rewind_weights(run: Run, k: int, model: nn.Module) -> dict:
    """θk of the run's dense network: θ0 for k = 0, `rewind.ckpt` when it was saved at k,
    otherwise trained from θ0 for k iterations (the run's seeds and schedule) into
    `level_0/rewind_<k>it/` — the weights level 0 passes through at iteration k."""
    if k == 0:
        return run.init_weights(model)
    saved = run.dir / "rewind.ckpt"
    if saved.exists() and checkpoint.read_header(saved).get("step") == k:
        return run.weights(saved, "rewind", model)
    dense = run.build(0)
    dense.load_state_dict(run.init_weights(dense))
    seg = Segment(run.level_dir(0) / f"rewind_{k}it", run.tag, run.exp, run.seeds, 0, k, run.total)
    return _train_or_load(run, dense, seg, f"the dense network to its rewind point k={k}")[1]


def copy_seeds(run: Run, seed_offset: int) -> dict[str, dict]:
    """The seeds of the two copies: the run's, and the run's with data and augmentation seeds
    moved by `seed_offset` (the init seed is unused: both start from the same weights)."""
    if not isinstance(seed_offset, int) or seed_offset == 0:
        raise ValueError(f"seed_offset: expected a non-zero int, got {seed_offset!r}")
    b = dict(
        run.seeds, data=run.seeds["data"] + seed_offset, augment=run.seeds["augment"] + seed_offset
    )
    return {"a": dict(run.seeds), "b": b}


def error_path(
    run: Run,
    state1: Mapping[str, torch.Tensor],
    state2: Mapping[str, torch.Tensor],
    alphas: Sequence[float],
    norm_batches: int = 50,
) -> tuple[list[float], bool]:
    """(test errors of α·state1 + (1−α)·state2 for each α, whether norm statistics were
    recomputed) on the run's test set; see the module doc for the norm-layer handling."""
    model = run.build(0).to(run.device)
    autocast = _autocast(run.runtime, run.device)
    errors, recomputed = [], False
    for alpha in alphas:
        model.load_state_dict(interpolate(state1, state2, float(alpha)))
        batches = (run.data.minibatch(i, run.seeds, run.device)[0] for i in range(norm_batches))
        recomputed = recompute_norm_stats(model, batches, autocast)
        _, accuracy = evaluate(model, run.data.test, run.device, autocast)
        errors.append(1.0 - accuracy)
    return errors, recomputed


def instability(
    run: Run,
    level: int,
    k_list: Sequence[int | str],
    alphas: int = 30,
    *,
    threshold: float = 0.02,
    tolerance: float = 0.002,
    seed_offset: int = 1,
    norm_batches: int = 50,
    write: bool = True,
) -> list[dict]:
    """Instability of level `level` of `run` at each rewind point in `k_list` (iterations, or
    durations such as "2ep"); trains the level (and its predecessors) first if needed. Returns
    one dict per k: "level", "k", "density", "alphas", "errors" (E_α), "barrier", "stable",
    "threshold", "accuracies" (the copies' own final test accuracies), "mean_accuracy",
    "dense_accuracy" (level 0), "matching", "tolerance", "l2_distance", "norm_recomputed",
    "norm_batches", "seeds" and "directory". With `write`, also writes stability.json, .md and
    .png into the analysis folder (see the module doc).

    Example:
        >>> rows = instability(run, 2, [0, 50], alphas=11)  # doctest: +SKIP
    """
    if not isinstance(level, int) or level < 0:
        raise ValueError(f"level: expected a level number >= 0, got {level!r}")
    if not isinstance(alphas, int) or alphas < 2:
        raise ValueError(f"alphas: expected an int >= 2 (points on the path), got {alphas!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: expected a test-error fraction in (0, 1], got {threshold}")
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"tolerance: expected an accuracy fraction in [0, 1], got {tolerance}")
    if not isinstance(norm_batches, int) or norm_batches < 1:
        raise ValueError(f"norm_batches: expected a positive int, got {norm_batches!r}")
    ks = _parse_k(run, k_list)
    summary = run.level(level)
    dense_accuracy = run.level(0)["test_accuracy"]
    seeds = copy_seeds(run, seed_offset)
    folder = run.level_dir(level) / f"stability_{_tag({'seed_offset': seed_offset})}"
    path_tag = _tag({"alphas": alphas, "norm_batches": norm_batches})
    points = torch.linspace(0.0, 1.0, alphas, dtype=torch.float64).tolist()
    reference = run.build(0)  # names the checkpoints' model; never trained
    level_masks = {k: m.clone() for k, m in run.level_masks(level, reference).items()}
    params = [name for name, _ in reference.named_parameters()]
    rows = []
    for i, k in enumerate(ks, 1):
        start = rewind_weights(run, k, reference)
        states, accuracies = {}, []
        for name in COPIES:
            model = run.build(0)
            model.load_state_dict(start)
            load_masks(model, level_masks)
            seg = Segment(
                folder / f"k_{k}" / f"copy_{name}",
                run.tag,
                run.exp,
                seeds[name],
                k,
                run.total,
                run.total,
            )
            what = f"stability copy {name} of level {level} from k={k} ({i}/{len(ks)})"
            copy_summary, states[name] = _train_or_load(run, model, seg, what)
            accuracies.append(copy_summary["test_accuracy"])
        path_file = folder / f"k_{k}" / f"path_{path_tag}.json"
        if path_file.exists():
            cached = checkpoint.read_json(path_file)
            errors, recomputed = cached["errors"], cached["norm_recomputed"]
        else:
            errors, recomputed = error_path(run, states["a"], states["b"], points, norm_batches)
            record = {"alphas": points, "errors": errors, "norm_recomputed": recomputed}
            if distributed.is_main():  # under torchrun every rank evaluates, rank 0 writes
                checkpoint.atomic_write_json(path_file, {**record, "norm_batches": norm_batches})
        mean_accuracy = sum(accuracies) / len(accuracies)
        height = barrier(errors)
        rows.append(
            {
                "level": level,
                "k": k,
                "density": summary["density"],
                "alphas": points,
                "errors": errors,
                "barrier": height,
                "stable": height < threshold,
                "threshold": threshold,
                "accuracies": accuracies,
                "mean_accuracy": mean_accuracy,
                "dense_accuracy": dense_accuracy,
                "matching": mean_accuracy >= dense_accuracy - tolerance,
                "tolerance": tolerance,
                "l2_distance": masked_distance(states["a"], states["b"], level_masks, params),
                "norm_recomputed": recomputed,
                "norm_batches": norm_batches,
                "seeds": [seeds[c] for c in COPIES],
                "directory": str(folder),
            }
        )
        log.info(
            "stability: level %d, k=%d: barrier %.4f, mean accuracy %.4f",
            level,
            k,
            height,
            mean_accuracy,
        )
    if write and distributed.is_main():
        write_results(rows, folder)
    return rows


__all__ = [
    "interpolate",
    "barrier",
    "recompute_norm_stats",
    "masked_distance",
    "rewind_weights",
    "copy_seeds",
    "error_path",
    "instability",
    "format_table",
    "plot_paths",
    "write_results",
]
