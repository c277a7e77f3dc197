"""Sanity checks for lottery tickets (Ma et al., NeurIPS 2021; `../RESEARCH.md` §5).

`verdict` applies the five conditions to the accuracies of one density; `sanity_checks` trains
everything they need with the lottery driver, at each learning rate:

- "dense": the dense network (level 0 of IMP at that learning rate);
- "lt": the IMP ticket (mask of level L, weights rewound as the experiment says);
- "rr": random reinitialisation (the ticket's mask, fresh θ0');
- "random_prune": a random mask with the ticket's per-layer densities;
- "omp": one-shot magnitude pruning to the ticket's density (`one_shot_experiment`);
- "small_dense": a narrower dense network with about the ticket's parameter count
  (`small_dense_hidden`; MLPs only: `mnist1d_mlp`, `lenet_300_100`).

"random_prune" and "omp" are reported but take no part in the five conditions.

Accuracies are in **percent** (0–100) and `similar` / `gap` in percentage points (the paper's
0.5 points for CIFAR-10: 1 for CIFAR-100, 1.5 for ImageNet).

Example:
    >>> table = {"sparsity": 0.8,
    ...          "dense": {0.01: 90.0, 0.1: 92.0}, "small_dense": {0.01: 85.0, 0.1: 86.0},
    ...          "lt": {0.01: 91.0, 0.1: 90.0}, "rr": {0.01: 88.0, 0.1: 90.2}}
    >>> v = verdict(table)
    >>> v["outcome"], v["lr"], v["failed"]
    ('secondary prize', 0.01, ['lt_matches_best_dense'])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..lottery import checkpoint
from ..lottery.report import markdown_table, save_figure
from ..models import mlp
from ._output import write_files

log = logging.getLogger("sparse_lottery")

CONDITIONS = (
    "sparsity",  # 1. sparsity above `min_sparsity` (and training long enough)
    "small_dense_worse",  # 2. best small-dense clearly worse than the best dense
    "lt_beats_rr",  # 3. LT at this lr beats RR at every lr by more than `gap`
    "lt_matches_dense_at_lr",  # 4. LT similar to or better than the dense net at this lr
    "lt_matches_best_dense",  # 5. LT similar to or better than the best dense net
)
"""The five conditions of Ma et al., in order (names used in every result)."""

OUTCOMES = ("jackpot", "secondary prize", "none")
METHODS = ("dense", "small_dense", "lt", "rr")
REPORTED = ("dense", "small_dense", "lt", "rr", "random_prune", "omp")
SMALL_DENSE_MODELS = ("lenet_300_100", "mnist1d_mlp")
METRICS = ("test_accuracy", "best_test_accuracy")
_EPS = 1e-9  # slack of the "similar or better" comparisons (accuracies are in percent)
_SMALL_SALT = 0x5A11


# --------------------------------------------------------------------------- verdict
def verdict(
    table: Mapping, similar: float = 0.5, min_sparsity: float = 0.6, gap: float = 0.5
) -> dict:
    """The sanity-check outcome of one density: "jackpot", "secondary prize" or "none".

    Args:
        table: {"sparsity": s, "dense": {lr: acc}, "small_dense": {lr: acc}, "lt": {lr: acc},
            "rr": {lr: acc}} with accuracies in percent; optional "long_enough": bool
            (default True), the caller's judgement that training was long enough (part of
            condition 1). Other keys (e.g. "omp") are ignored. The learning rates judged are
            those of "lt"; "dense" must have each of them.
        similar: "similar" tolerance, percentage points (conditions 2, 4, 5).
        min_sparsity: condition 1 needs sparsity > min_sparsity (a fraction).
        gap: condition 3 needs LT − max over lrs of RR > gap (percentage points).

    Conditions at a learning rate η (RESEARCH.md §5; the "well-trained" networks are the best
    over all the table's learning rates):

    1. "sparsity": sparsity > min_sparsity (and "long_enough");
    2. "small_dense_worse": best dense − best small-dense > similar;
    3. "lt_beats_rr": LT(η) − best RR > gap;
    4. "lt_matches_dense_at_lr": LT(η) ≥ dense(η) − similar;
    5. "lt_matches_best_dense": LT(η) ≥ best dense − similar.

    1–5 at some η: "jackpot"; else 1–4 at some η: "secondary prize"; else "none".
    Condition 5 implies 4 (dense(η) ≤ best dense), so 4 never fails alone.

    Returns {"outcome", "lr" (the deciding learning rate: the one reaching the outcome, or for
    "none" the one meeting the most conditions, ties to the higher LT accuracy), "conditions"
    and "failed" (at that lr), "held_at_some_lr" {condition: bool}, "per_lr" [{"lr", "outcome",
    "conditions", "failed", "margins"}], "best" {"dense", "small_dense", "rr"}, "thresholds"}.

    Example:
        >>> t = {"sparsity": 0.9, "dense": {0.1: 92.0}, "small_dense": {0.1: 88.0},
        ...      "lt": {0.1: 91.8}, "rr": {0.1: 90.0}}
        >>> verdict(t)["outcome"]
        'jackpot'
        >>> verdict(t, gap=2.0)["failed"]
        ['lt_beats_rr']
    """
    _check_thresholds(similar, min_sparsity, gap)
    t = _check_table(table)
    best_dense = max(t["dense"].values())
    best_small = max(t["small_dense"].values())
    best_rr = max(t["rr"].values())
    global_held = {
        "sparsity": t["sparsity"] > min_sparsity and t["long_enough"],
        "small_dense_worse": best_dense - best_small > similar,
    }
    per_lr = []
    for lr, lt in t["lt"].items():
        held = {
            **global_held,
            "lt_beats_rr": lt - best_rr > gap,
            "lt_matches_dense_at_lr": lt >= t["dense"][lr] - similar - _EPS,
            "lt_matches_best_dense": lt >= best_dense - similar - _EPS,
        }
        conditions = {name: bool(held[name]) for name in CONDITIONS}
        per_lr.append({
            "lr": lr,
            "outcome": _outcome(conditions),
            "conditions": conditions,
            "failed": [name for name in CONDITIONS if not conditions[name]],
            "margins": {
                "lt_minus_best_rr": lt - best_rr,
                "lt_minus_dense_at_lr": lt - t["dense"][lr],
                "lt_minus_best_dense": lt - best_dense,
                "best_dense_minus_best_small_dense": best_dense - best_small,
            },
        })  # fmt: skip
    rank = {name: i for i, name in enumerate(OUTCOMES)}
    decisive = min(
        per_lr,
        key=lambda r: (
            rank[r["outcome"]],
            -sum(r["conditions"].values()),
            -t["lt"][r["lr"]],
        ),
    )
    return {
        "outcome": decisive["outcome"],
        "lr": decisive["lr"],
        "conditions": decisive["conditions"],
        "failed": decisive["failed"],
        "held_at_some_lr": {n: any(r["conditions"][n] for r in per_lr) for n in CONDITIONS},
        "per_lr": per_lr,
        "best": {"dense": best_dense, "small_dense": best_small, "rr": best_rr},
        "sparsity": t["sparsity"],
        "thresholds": {"similar": similar, "min_sparsity": min_sparsity, "gap": gap},
    }


def _outcome(conditions: Mapping[str, bool]) -> str:
    first_four = all(conditions[name] for name in CONDITIONS[:4])
    if first_four and conditions[CONDITIONS[4]]:
        return "jackpot"
    return "secondary prize" if first_four else "none"


def _check_thresholds(similar, min_sparsity, gap) -> None:
    for name, value in (("similar", similar), ("gap", gap)):
        if not _is_number(value) or not 0 <= value <= 100:
            raise ValueError(f"{name}: expected percentage points in [0, 100], got {value!r}")
    if not _is_number(min_sparsity) or not 0 <= min_sparsity <= 1:
        raise ValueError(f"min_sparsity: expected a fraction in [0, 1], got {min_sparsity!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_table(table: Mapping) -> dict:
    if not isinstance(table, Mapping):
        raise TypeError(f"table: expected a dict, got {type(table).__name__}")
    sparsity = table.get("sparsity")
    if not _is_number(sparsity) or not 0 <= sparsity <= 1:
        raise ValueError(f"table['sparsity']: expected a fraction in [0, 1], got {sparsity!r}")
    out = {"sparsity": float(sparsity), "long_enough": bool(table.get("long_enough", True))}
    values = []
    for method in METHODS:
        accs = table.get(method)
        if not isinstance(accs, Mapping) or not accs:
            raise ValueError(
                f"table[{method!r}]: expected a non-empty dict learning rate → accuracy (%), "
                f"got {accs!r}"
            )
        for lr, acc in accs.items():
            if not _is_number(acc) or not 0 <= acc <= 100:
                raise ValueError(
                    f"table[{method!r}][{lr!r}]: expected an accuracy in percent [0, 100], "
                    f"got {acc!r}"
                )
            values.append(acc)
        out[method] = dict(accs)
    missing = [lr for lr in out["lt"] if lr not in out["dense"]]
    if missing:
        raise ValueError(
            f"table['dense']: expected the learning rates of table['lt'] {list(out['lt'])}, "
            f"missing {missing}"
        )
    if max(values) <= 1.0:
        warnings.warn(
            "table: every accuracy is ≤ 1; verdict expects percent (0–100), not fractions",
            stacklevel=3,
        )
    return out


# --------------------------------------------------------------------------- experiments
def with_lr(exp, lr: float):
    """`exp` with learning rate `lr`.

    Example:
        >>> from sparse_lottery.lottery import Experiment
        >>> with_lr(Experiment(), 0.1).training.lr
        0.1
    """
    return dataclasses.replace(exp, training=dataclasses.replace(exp.training, lr=lr))


def one_shot_experiment(exp, levels: int):
    """The one-shot (OMP) counterpart of level `levels` of `exp`'s IMP: an experiment whose
    level 1 prunes the trained dense network once, to the density IMP reaches after `levels`
    levels. Every fraction r (--prune-fraction, --prune-output-fraction, --prune-rates) becomes
    1 − (1 − r)^levels (rounded to 12 digits), so layerwise methods keep each layer's density
    and global ones the overall density (up to the per-level rounding of counts). Its level 0
    is the same dense training as `exp`'s (trained again: the run folder differs).
    `levels` = 1 returns `exp` itself.

    Example:
        >>> from sparse_lottery.lottery import apply_preset
        >>> omp = one_shot_experiment(apply_preset("lenet_mnist"), 3)
        >>> omp.pruning.prune_fraction, omp.pruning.prune_output_fraction
        (0.488, 0.271)
    """
    from ..lottery.hparams import parse_rates

    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected a positive int, got {levels!r}")
    if levels == 1:
        return exp
    p = exp.pruning
    once = lambda r: round(1.0 - (1.0 - r) ** levels, 12)
    rates = ",".join(f"{k}={once(v)!r}" for k, v in parse_rates(p.prune_rates).items())
    output = p.prune_output_fraction
    pruning = dataclasses.replace(
        p,
        prune_fraction=once(p.prune_fraction),
        prune_output_fraction=output if output == -1.0 else once(output),
        prune_rates=rates,
    )
    return dataclasses.replace(exp, pruning=pruning)


def mlp_parameters(model: str, hidden: Sequence[int], in_features: int, classes: int) -> int:
    """Parameter count (weights and biases) of the MLP `model` with hidden widths `hidden`.

    Example:
        >>> mlp_parameters("mnist1d_mlp", [500], 40, 10), mlp_parameters("lenet_300_100",
        ...                                                             [300, 100], 784, 10)
        (276010, 266610)
    """
    widths = [in_features, *_expand(model, hidden), classes]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _expand(model: str, hidden: Sequence[int]) -> list[int]:
    if model == "mnist1d_mlp":  # two hidden layers of one width (the residual needs it)
        return [hidden[0], hidden[0]]
    return list(hidden)


def small_dense_hidden(model: str, params: int, in_features: int, classes: int) -> list[int]:
    """Hidden widths of the narrower dense `model` whose parameter count is closest to `params`
    (ties to the narrower): one width for `mnist1d_mlp` (both hidden layers), [a, b] with
    b = round(a / 3) for `lenet_300_100` (its 300:100 ratio). Never wider than the original.

    Example:
        >>> small_dense_hidden("mnist1d_mlp", 27_601, 40, 10)
        [142]
        >>> small_dense_hidden("lenet_300_100", 26_661, 784, 10)
        [33, 11]
    """
    if model not in SMALL_DENSE_MODELS:
        raise ValueError(
            f"model: small-dense training is implemented for {list(SMALL_DENSE_MODELS)}, "
            f"got {model!r}"
        )
    if isinstance(params, bool) or not isinstance(params, int) or params < 1:
        raise ValueError(f"params: expected a positive int, got {params!r}")
    if model == "mnist1d_mlp":
        candidates = [[h] for h in range(1, 501)]
    else:
        candidates = [[a, max(1, round(a / 3))] for a in range(1, 301)]
    return min(
        candidates,
        key=lambda h: (abs(mlp_parameters(model, h, in_features, classes) - params), h[0]),
    )


def small_dense_model(
    model: str, hidden: Sequence[int], num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """The narrower `model` with hidden widths `hidden` (see `small_dense_hidden`), the same
    layer names and forward pass as the zoo's, torch's default initialisation.

    Example:
        >>> net = small_dense_model("lenet_300_100", [30, 10], 10, (1, 28, 28))
        >>> net(torch.zeros(2, 1, 28, 28)).shape, net.fc2.weight.shape
        (torch.Size([2, 10]), torch.Size([10, 30]))
    """
    if model not in SMALL_DENSE_MODELS:
        raise ValueError(
            f"model: small-dense training is implemented for {list(SMALL_DENSE_MODELS)}, "
            f"got {model!r}"
        )
    in_features = math.prod(input_shape)
    if model == "mnist1d_mlp":
        return mlp.MNIST1DMLP(in_features, num_classes, hidden=int(hidden[0]))
    return _NarrowLeNet(in_features, num_classes, *(int(w) for w in hidden))


class _NarrowLeNet(mlp.LeNet300100):
    """LeNet-300-100 with hidden widths (a, b) instead of (300, 100); the same forward."""

    def __init__(self, in_features: int, num_classes: int, a: int, b: int):
        nn.Module.__init__(self)
        self.fc1 = nn.Linear(in_features, a)
        self.fc2 = nn.Linear(a, b)
        self.fc3 = nn.Linear(b, num_classes)


def ticket_parameters(run, level: int) -> int:
    """Parameters a level's ticket trains: its surviving weights plus every unmasked parameter
    (biases, norm layers)."""
    model = run.build(0)
    level_masks = run.level_masks(level, model)
    kept = sum(int(m.sum()) for m in level_masks.values())
    other = sum(p.numel() for name, p in model.named_parameters() if name not in level_masks)
    return kept + other


def train_small_dense(run, hidden: Sequence[int], folder: Path) -> dict:
    """Train the small-dense network of widths `hidden` with `run`'s hyperparameters, seeds and
    data (the driver's trainer) in `folder`/small_dense_<hash>; its summary (resumable)."""
    from ..lottery.trainer import Segment, train_segment
    from ..model import sparsify

    tag = run.exp.hash({"small_dense": list(hidden), "replicate": run.replicate})
    directory = Path(folder) / f"small_dense_{'x'.join(map(str, hidden))}_{tag}"
    done = directory / "summary.json"
    if done.exists():
        return checkpoint.read_json(done)
    train = run.data.train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SMALL_SALT + run.seeds["init"])
        model = small_dense_model(run.exp.model.model, hidden, train.num_classes, train.input_shape)
    model = sparsify(model)
    seg = Segment(directory, tag, run.exp, run.seeds, 0, run.total, run.total)
    return train_segment(model.to(run.device), seg, run.data, run.runtime, run.device)


def sanity_folder(base_exp, runtime, lrs: Sequence[float], levels: int, replicate: int) -> Path:
    """`<root>/sanity_<hash>`: hash of the experiment (its own lr ignored), lrs, levels and
    replicate."""
    from ..lottery.hparams import TrainingHparams

    neutral = with_lr(base_exp, TrainingHparams().lr)
    extra = {"sanity": {"lrs": list(lrs), "levels": levels, "replicate": replicate}}
    return Path(runtime.root) / f"sanity_{neutral.hash(extra)}"


def sanity_checks(
    base_exp,
    runtime,
    lrs: Iterable[float],
    levels: int,
    replicate: int = 0,
    similar: float = 0.5,
    min_sparsity: float = 0.6,
    gap: float = 0.5,
    metric: str = "test_accuracy",
    ps: Iterable[float] = (0.1, 0.2, 0.5),
) -> dict:
    """Train every baseline of the sanity checks at each learning rate of `lrs` for IMP levels
    1..`levels` of `base_exp` (its own lr is replaced), judge each density with `verdict`, and
    write `sanity.json`, `sanity.md` and `sanity.png` (with matplotlib) to `sanity_folder(...)`.
    Every training is an idempotent step of the driver: an interrupted call resumes.

    Per lr: IMP levels 0..`levels` (`Run.level`), the "reinit" (RR) and "random_prune" branches
    of each level, OMP (`one_shot_experiment`, level 1) and the small-dense network with about
    the ticket's parameter count (`small_dense_hidden`) per level, and R_p between θ0 and each
    level's trained weights (`correlation.level_correlation`). Accuracies are `metric` × 100.

    Returns {"folder", "lrs", "levels", "replicate", "metric", "thresholds", "dense" {lr: acc},
    "densities": [{"level", "density", "sparsity", "ticket_parameters", "small_dense_hidden",
    "small_dense_parameters", "omp_density", "accuracy" {method: {lr: acc}}, "verdict"}],
    "correlation" {lr: {level: {p: R_p}}}, "runs" {lr: folder}}.

    Example:
        >>> from sparse_lottery.lottery import Experiment, Runtime
        >>> result = sanity_checks(Experiment(), Runtime(), [0.002, 0.02], 5)  # doctest: +SKIP
        >>> [d["verdict"]["outcome"] for d in result["densities"]]  # doctest: +SKIP
        ['none', 'none', 'none', 'none', 'secondary prize']
    """
    from ..lottery import distributed
    from ..lottery.hparams import TrainingHparams
    from ..lottery.runner import Run
    from .correlation import level_correlation

    lrs = _check_lrs(lrs)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected a positive int, got {levels!r}")
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    _check_thresholds(similar, min_sparsity, gap)
    model_name = base_exp.model.model
    if model_name not in SMALL_DENSE_MODELS:
        raise ValueError(
            f"model: small-dense training is implemented for {list(SMALL_DENSE_MODELS)}, "
            f"got {model_name!r}"
        )
    ps = tuple(ps)
    folder = sanity_folder(base_exp, runtime, lrs, levels, replicate)
    acc = lambda summary: 100.0 * summary[metric]
    dense, runs, correlation = {}, {}, {}
    rows = [
        {"level": level, "accuracy": {m: {} for m in REPORTED}} for level in range(1, levels + 1)
    ]
    for i, lr in enumerate(lrs, 1):
        exp = with_lr(base_exp, lr)
        run = Run(exp, runtime, replicate)
        runs[lr] = str(run.root)
        log.info("sanity %d/%d: lr %g, IMP levels 0..%d in %s", i, len(lrs), lr, levels, run.root)
        dense[lr] = acc(run.level(0))
        correlation[lr] = {0: level_correlation(run, 0, ps)}
        train = run.data.train
        in_features = math.prod(train.input_shape)
        for row in rows:
            level = row["level"]
            ticket = run.level(level)
            row.setdefault("density", ticket["density"])
            row.setdefault("layer_density", ticket["layer_density"])
            row["accuracy"]["dense"][lr] = dense[lr]
            row["accuracy"]["lt"][lr] = acc(ticket)
            row["accuracy"]["rr"][lr] = acc(run.branch(level, "reinit"))
            row["accuracy"]["random_prune"][lr] = acc(run.branch(level, "random_prune"))
            omp = Run(one_shot_experiment(exp, level), runtime, replicate).level(1)
            row["accuracy"]["omp"][lr] = acc(omp)
            row.setdefault("omp_density", omp["density"])
            params = ticket_parameters(run, level)
            hidden = small_dense_hidden(model_name, params, in_features, train.num_classes)
            row.setdefault("ticket_parameters", params)
            row.setdefault("small_dense_hidden", hidden)
            row.setdefault(
                "small_dense_parameters",
                mlp_parameters(model_name, hidden, in_features, train.num_classes),
            )
            row["accuracy"]["small_dense"][lr] = acc(train_small_dense(run, hidden, folder))
            correlation[lr][level] = level_correlation(run, level, ps)
    densities = []
    for row in rows:
        row["sparsity"] = 1.0 - row["density"]
        table = {"sparsity": row["sparsity"], **row["accuracy"]}
        row["verdict"] = verdict(table, similar, min_sparsity, gap)
        densities.append(row)
    result = {
        "folder": str(folder),
        "experiment": with_lr(base_exp, TrainingHparams().lr).non_default(),
        "lrs": lrs,
        "levels": levels,
        "replicate": replicate,
        "metric": metric,
        "units": "percent",
        "thresholds": {"similar": similar, "min_sparsity": min_sparsity, "gap": gap},
        "dense": dense,
        "densities": densities,
        "correlation": correlation,
        "runs": runs,
    }
    if distributed.is_main():
        write_outputs(result, folder)
    return result


def _check_lrs(lrs) -> list[float]:
    try:
        values = [float(lr) for lr in lrs]
    except (TypeError, ValueError):
        raise ValueError(f"lrs: expected positive learning rates, got {lrs!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"lrs: expected positive learning rates, got {lrs!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"lrs: expected distinct learning rates, got {values}")
    return values


# --------------------------------------------------------------------------- outputs
def _key(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {_key(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


_MARK = {True: "✓", False: "✗"}
_LABELS = {
    "dense": "dense",
    "small_dense": "small dense",
    "lt": "LT",
    "rr": "RR",
    "random_prune": "random prune",
    "omp": "OMP",
}

_STYLE = {
    "small_dense": ("D", "-"),
    "lt": ("o", "-"),
    "rr": ("v", "-"),
    "random_prune": ("x", ":"),
    "omp": ("s", "--"),
}


def format_markdown(result: dict) -> str:
    """The results as Markdown: one line per (density, lr) with the accuracy of each method
    and the five conditions (✓/✗, in the order of `CONDITIONS`), then the verdict per density
    and R_p(θ0, θT) per level.

    Example:
        >>> t = {"sparsity": 0.9, "dense": {0.1: 92.0}, "small_dense": {0.1: 88.0},
        ...      "lt": {0.1: 91.8}, "rr": {0.1: 90.0}}
        >>> row = {"level": 10, "density": 0.1, "sparsity": 0.9, "accuracy": t,
        ...        "verdict": verdict(t)}
        >>> print(format_markdown({"densities": [row], "lrs": [0.1]}).splitlines()[2])
        | 0.1000 | 0.1 | 92.00 | 88.00 | 91.80 | 90.00 | – | – | ✓✓✓✓✓ | jackpot |
    """
    head = ["density", "lr", *(_LABELS[m] for m in REPORTED), "conditions 1–5", "outcome"]
    body = []
    for row in result["densities"]:
        per_lr = {r["lr"]: r for r in row["verdict"]["per_lr"]}
        for lr in result["lrs"]:
            cells = [f"{row['density']:.4f}", _key(lr)]
            for method in REPORTED:
                value = row["accuracy"].get(method, {}).get(lr)
                cells.append("–" if value is None else f"{value:.2f}")
            judged = per_lr.get(lr)
            if judged:
                cells.append("".join(_MARK[judged["conditions"][c]] for c in CONDITIONS))
                cells.append(judged["outcome"])
            else:
                cells += ["–", "–"]
            body.append(cells)
    lines = [markdown_table(head, body)]
    lines += [
        "",
        "| density | sparsity | verdict | at lr | failed there |",
        "|---|---|---|---|---|",
    ]
    for row in result["densities"]:
        v = row["verdict"]
        failed = ", ".join(v["failed"]) or "–"
        lines.append(
            f"| {row['density']:.4f} | {row['sparsity']:.4f} | **{v['outcome']}** | "
            f"{_key(v['lr'])} | {failed} |"
        )
    correlation = result.get("correlation")
    if correlation:
        ps = sorted({p for levels in correlation.values() for r in levels.values() for p in r})
        lines += ["", "R_p between θ0 and the trained weights of each level (≈ p: no correlation)",
                  "", "| lr | level | " + " | ".join(f"R_{_key(p)}" for p in ps) + " |",
                  "|---|---|" + "---|" * len(ps)]  # fmt: skip
        for lr, levels in correlation.items():
            for level, values in levels.items():
                cells = [f"{values[p]:.3f}" if p in values else "–" for p in ps]
                lines.append(f"| {_key(lr)} | {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path | None:
    """Accuracy vs density (log x, density decreasing to the right), one panel per learning
    rate, one line per method; the dense network at density 1 and as a dotted line; the
    small-dense network at its ticket's density. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lrs = result["lrs"]
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), sharey=True, squeeze=False)
    rows = sorted(result["densities"], key=lambda r: -r["density"])
    for ax, lr in zip(axes[0], lrs):
        dense = result["dense"][lr]
        for method in REPORTED[1:]:
            pts = [(r["density"], r["accuracy"][method][lr]) for r in rows
                   if lr in r["accuracy"].get(method, {})]  # fmt: skip
            if method in ("lt", "omp", "random_prune"):
                pts = [(1.0, dense), *pts]
            if pts:  # distinct markers and dashes: coinciding methods stay visible
                marker, dashes = _STYLE[method]
                ax.plot(*zip(*pts), marker=marker, linestyle=dashes, label=_LABELS[method])
        ax.axhline(dense, color="k", linestyle=":", linewidth=1, label="dense")
        ax.set(xscale="log", xlabel="density (log)", title=f"lr {_key(lr)}")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{result.get('metric', 'test_accuracy')} (%)")
    axes[0][-1].legend(fontsize=8)
    return save_figure(fig, path)


def write_outputs(result: dict, folder: Path) -> list[Path]:
    """`sanity.json`, `sanity.md` and `sanity.png` (with matplotlib) in `folder`."""
    text = "# Sanity checks (Ma et al. 2021)\n\n"
    text += f"Accuracies: {result['metric']} in percent; thresholds {result['thresholds']}.\n"
    text += "Conditions: " + ", ".join(f"{i + 1}. {c}" for i, c in enumerate(CONDITIONS))
    text += "\n\n" + format_markdown(result) + "\n"
    return write_files(folder, "sanity", _jsonable(result), text, lambda png: plot(result, png))


__all__ = [
    "CONDITIONS",
    "OUTCOMES",
    "format_markdown",
    "mlp_parameters",
    "one_shot_experiment",
    "sanity_checks",
    "sanity_folder",
    "small_dense_hidden",
    "small_dense_model",
    "ticket_parameters",
    "train_small_dense",
    "verdict",
    "with_lr",
    "write_outputs",
]
