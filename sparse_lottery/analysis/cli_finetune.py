"""`sparse-lottery finetune`: pruning & fine-tuning vs lottery tickets (Liu et al. 2021).

At each learning rate of `--lrs` and each replicate of `--replicates`, trains IMP levels
0..`--levels`, then LT, random reinit, rewinding to `--k` and fine-tuning of the pretrained
weights at every level with the same budget, and prints the tables (see
`sparse_lottery.analysis.finetune`). Every other flag is the experiment's, as for `imp`.

Example:
    $ sparse-lottery finetune --levels 4 --lrs 0.002,0.02 --k 1ep
    $ sparse-lottery finetune --preset lenet_mnist --lrs 0.01,0.1 --replicates 0,1,2
"""

import argparse

from ..lottery.cli import _on_experiment, add_experiment_arguments, parse_list
from .cli_sanity import parse_lrs
from .sanity import METRICS


def parse_replicates(text: str, default: int) -> list[int]:
    """'0,1,2' → [0, 1, 2]; '' → [default].

    Example:
        >>> parse_replicates("0, 2", 0), parse_replicates("", 3)
        ([0, 2], [3])
    """
    if not text.strip():
        return [default]
    return parse_list(
        text, "--replicates", int, lambda r: r >= 0, "distinct replicate numbers >= 0", "0,1,2"
    )


def finetune_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning comparison")
    group.add_argument("--lrs", default="",
                       help="learning rates, comma-separated (default: the experiment's --lr "
                       "and a tenth of it)")  # fmt: skip
    group.add_argument("--levels", type=int, default=3,
                       help="IMP levels; each level >= 1 is one sparsity (default: 3)")  # fmt: skip
    group.add_argument("--k", default="1ep",
                       help="rewind point of the rewinding method: iterations or a duration "
                       "('40', '40it', '1ep'; default: 1ep)")  # fmt: skip
    group.add_argument("--replicates", default="",
                       help="replicates, comma-separated (default: --replicate); several give "
                       "error bars")  # fmt: skip
    group.add_argument("--ps", default="0.1,0.2,0.5",
                       help="p values of R_p, comma-separated (default: 0.1,0.2,0.5)")  # fmt: skip
    group.add_argument("--metric", default=METRICS[0], choices=METRICS,
                       help=f"accuracy compared (default: {METRICS[0]})")  # fmt: skip
    add_experiment_arguments(parser)


def _parse_ps(text: str) -> list[float]:
    return parse_list(text, "--ps", float, lambda p: 0 < p <= 1, "fractions in (0, 1]", "0.1,0.5")


def finetune(args: argparse.Namespace) -> int:
    from .finetune import finetune_comparison
    from .finetune_report import format_markdown

    if not args.list:
        if args.levels < 1:
            raise SystemExit(f"--levels: expected a positive int, got {args.levels}")
        replicates = parse_replicates(args.replicates, args.replicate)
        ps = _parse_ps(args.ps)
    done = _on_experiment(
        args,
        lambda exp, runtime: finetune_comparison(
            exp,
            runtime,
            parse_lrs(args.lrs, exp.training.lr),
            args.levels,
            replicates,
            args.k,
            ps,
            args.metric,
        ),
    )
    if done:
        result = done[2]
        print(format_markdown(result))
        print(f"results: {result['folder']}")
    return 0
