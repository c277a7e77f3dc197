"""`sparse-lottery sanity`: the sanity checks of Ma et al. (2021) for an IMP experiment.

Trains, at each learning rate of `--lrs`, IMP levels 0..`--levels` with the random-reinit and
random-pruning branches, one-shot magnitude pruning and a small dense network per level, then
prints the verdict table (see `sparse_lottery.analysis.sanity`). Every other flag is the
experiment's, as for `imp`.

Example:
    $ sparse-lottery sanity --levels 5 --lrs 0.002,0.02
    $ sparse-lottery sanity --preset lenet_mnist --lrs 0.01,0.1 --data-dir ~/data --download
"""

import argparse

from ..lottery.cli import _on_experiment, add_experiment_arguments, parse_list
from .sanity import METRICS


def parse_lrs(text: str, default: float) -> list[float]:
    """'0.01,0.1' → [0.01, 0.1]; '' → [default / 10, default].

    Example:
        >>> parse_lrs("0.01, 0.1", 0.5), parse_lrs("", 0.02)
        ([0.01, 0.1], [0.002, 0.02])
    """
    if not text.strip():
        return [default / 10, default]
    return parse_list(
        text, "--lrs", float, lambda lr: lr > 0, "distinct positive learning rates", "0.01,0.1"
    )


def sanity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lrs",
        default="",
        help="learning rates, comma-separated (default: the experiment's --lr and a tenth of it)",
    )
    parser.add_argument(
        "--levels",
        type=int,
        default=5,
        help="IMP levels; each level ≥ 1 is one density judged (default: 5)",
    )
    parser.add_argument(
        "--similar",
        type=float,
        default=0.5,
        help="'similar' tolerance in accuracy points (default: 0.5)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.5,
        help="points by which LT must beat RR at any lr (default: 0.5)",
    )
    parser.add_argument(
        "--min-sparsity",
        type=float,
        default=0.6,
        help="sparsity above which it is non-trivial (default: 0.6)",
    )
    parser.add_argument(
        "--metric",
        default=METRICS[0],
        choices=METRICS,
        help=f"accuracy compared: at the end of training or the best (default: {METRICS[0]})",
    )
    add_experiment_arguments(parser)


def sanity(args: argparse.Namespace) -> int:
    from .sanity import format_markdown, sanity_checks

    if not args.list and args.levels < 1:
        raise SystemExit(f"--levels: expected a positive int, got {args.levels}")
    done = _on_experiment(
        args,
        lambda exp, runtime: sanity_checks(
            exp,
            runtime,
            parse_lrs(args.lrs, exp.training.lr),
            args.levels,
            args.replicate,
            similar=args.similar,
            min_sparsity=args.min_sparsity,
            gap=args.gap,
            metric=args.metric,
        ),
    )
    if done:
        result = done[2]
        print(format_markdown(result))
        print(f"results: {result['folder']}")
    return 0
