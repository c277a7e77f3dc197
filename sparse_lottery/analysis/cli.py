"""The analysis commands of `sparse-lottery`: stability and overlap (sanity: `cli_sanity`,
transfer: `cli_transfer`).

Example:
    $ sparse-lottery stability --level 3 --k 0,100 --alphas 30     # same flags as `imp`
    $ sparse-lottery overlap runs/                                 # runs/report/overlap.*
"""

import argparse
from pathlib import Path

from ..lottery.cli import _on_experiment, add_experiment_arguments
from .cli_finetune import finetune, finetune_arguments  # noqa: F401  (`finetune`)
from .cli_jackpot import jackpot, jackpot_arguments  # noqa: F401  (the `jackpot` command)
from .cli_sanity import sanity, sanity_arguments  # noqa: F401  (the `sanity` command)
from .cli_transfer import transfer, transfer_arguments  # noqa: F401  (`transfer`)


def stability_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("instability analysis")
    group.add_argument(
        "--level",
        type=int,
        default=None,
        help="the IMP level to analyse (required; trained first if needed; 0 is dense)",
    )
    group.add_argument(
        "--k",
        default="0",
        help="rewind points, comma-separated iterations or durations "
        "('0,100', '0,2ep') (default: 0)",
    )
    group.add_argument(
        "--alphas",
        type=int,
        default=30,
        help="evenly spaced interpolation points in [0, 1] (default: 30)",
    )
    group.add_argument(
        "--threshold",
        type=float,
        default=0.02,
        help="stable when the error barrier is below this test-error fraction (default: 0.02)",
    )
    group.add_argument(
        "--tolerance",
        type=float,
        default=0.002,
        help="matching when the copies' mean accuracy is at least the dense "
        "level 0's minus this fraction (default: 0.002, i.e. 0.2 points)",
    )
    group.add_argument(
        "--seed-offset",
        type=int,
        default=1,
        help="the second copy's data-order and augmentation seeds are the run's "
        "plus this (default: 1)",
    )
    group.add_argument(
        "--norm-batches",
        type=int,
        default=50,
        help="training minibatches that recompute BatchNorm statistics of each "
        "interpolated network (default: 50; ignored without BatchNorm)",
    )
    add_experiment_arguments(parser)


def stability(args: argparse.Namespace) -> int:
    from ..lottery.runner import Run
    from .stability import format_table, instability

    if args.level is None and not args.list:
        raise SystemExit("--level: required (the IMP level to analyse), got none")
    ks = [item.strip() for item in args.k.split(",") if item.strip()]
    done = _on_experiment(
        args,
        lambda exp, runtime: instability(
            Run(exp, runtime, args.replicate),
            args.level,
            ks,
            args.alphas,
            threshold=args.threshold,
            tolerance=args.tolerance,
            seed_offset=args.seed_offset,
            norm_batches=args.norm_batches,
        ),
    )
    if done:
        rows = done[2]
        print(format_table(rows))
        print(f"results: {Path(rows[0]['directory']) / 'stability.json'}")
    return 0


def overlap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "root",
        nargs="?",
        default="runs",
        help="folder of experiments, one experiment or one replicate (default: runs)",
    )
    parser.add_argument(
        "--out", default=None, help="folder for overlap.png/.md/.json (default: <root>/report)"
    )
    parser.add_argument(
        "--branches",
        default="random_prune",
        help="branch kinds whose masks are included, comma-separated; '' for "
        "none (default: random_prune)",
    )
    parser.add_argument(
        "--include-dense", action="store_true", help="include level 0's all-ones mask"
    )


def overlap(args: argparse.Namespace) -> int:
    from .overlap_report import write_overlap

    branches = tuple(b.strip() for b in args.branches.split(",") if b.strip())
    out = write_overlap(args.root, args.out, branches, args.include_dense)
    print(f"wrote {out / 'overlap.md'} and {out / 'overlap.png'}")
    return 0
