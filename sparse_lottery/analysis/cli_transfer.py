"""`sparse-lottery transfer`: train an experiment's IMP tickets on another dataset.

Runs (or reuses) the source experiment's levels 1..`--levels`, then trains each level's ticket
on `--target` with a new dense head, for every reset of `--resets` and freeze mode of
`--freeze`, with the baselines of `--baselines`; prints the table and writes transfer.json,
.md and .png (see `sparse_lottery.analysis.transfer`). Every other flag is the source
experiment's, as for `imp`.

Example:
    $ sparse-lottery transfer --target mnist1d_shifted --levels 5
    $ sparse-lottery transfer --target mnist1d_shifted --levels 3 --resets late --freeze frozen
    $ sparse-lottery transfer --preset conv2_cifar10 --target fashionmnist --levels 8 --download
"""

import argparse
import dataclasses
from pathlib import Path

from ..lottery.cli import _on_experiment, add_experiment_arguments, parse_overrides
from .transfer_model import FREEZES, RESETS

_BASELINES = ("dense", "random")


def _names(text: str, flag: str, choices: tuple[str, ...], allow_empty: bool = False) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in choices]
    if bad or len(set(names)) != len(names) or (not names and not allow_empty):
        raise SystemExit(f"{flag}: expected distinct names from {list(choices)}, comma-separated, "
                         f"got {text!r}")  # fmt: skip
    return names


def transfer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ticket transfer")
    group.add_argument("--target", default=None,
                       help="the dataset to transfer to (required; see --list), e.g. "
                       "mnist1d_shifted")  # fmt: skip
    group.add_argument("--levels", type=int, default=None,
                       help="transfer the tickets of IMP levels 1..LEVELS (required; the "
                       "source levels are trained first if needed)")  # fmt: skip
    group.add_argument("--resets", default=",".join(RESETS),
                       help="start weights of the body, comma-separated: late (the "
                       "level's trained weights), init (θ0), fresh (a new init) "
                       "(default: all)")  # fmt: skip
    group.add_argument("--freeze", default=",".join(FREEZES),
                       help="frozen (train the new head only) and/or finetune (train every "
                       "surviving weight, mask fixed) (default: both)")  # fmt: skip
    group.add_argument("--baselines", default=",".join(_BASELINES),
                       help="dense (the dense source model transferred) and/or random (random "
                       "tickets at the level's per-layer densities); '' for none "
                       "(default: both)")  # fmt: skip
    group.add_argument("--target-training", default="",
                       help="target training hyperparameters that differ from the source's, "
                       "'field=value,...' (e.g. 'steps=500it,lr=0.001')")  # fmt: skip
    add_experiment_arguments(parser)


def transfer(args: argparse.Namespace) -> int:
    from ..lottery.runner import Run
    from .transfer import transfer as run_transfer
    from .transfer_report import format_table

    if not args.list:
        if args.target is None:
            raise SystemExit("--target: required (the dataset to transfer to), got none")
        if args.levels is None:
            raise SystemExit("--levels: required (transfer the tickets of levels 1..LEVELS)")
        if args.levels < 1:
            raise SystemExit(f"--levels: expected a positive int, got {args.levels}")
    resets = _names(args.resets, "--resets", RESETS)
    freezes = _names(args.freeze, "--freeze", FREEZES)
    baselines = _names(args.baselines, "--baselines", _BASELINES, allow_empty=True)

    def work(exp, runtime):
        changes = parse_overrides(args.target_training, "--target-training",
                                  training=exp.training)  # fmt: skip
        training = changes.get("training", exp.training)
        try:
            dataclasses.replace(exp, training=training).validate()
        except ValueError as error:
            raise SystemExit(f"--target-training: {error}") from error
        return run_transfer(Run(exp, runtime, args.replicate), args.target,
                            range(1, args.levels + 1), resets, freezes, baselines,
                            training)  # fmt: skip

    done = _on_experiment(args, work)
    if done:
        result = done[2]
        print(format_table(result["rows"]))
        print(f"results: {Path(result['folder']) / 'transfer.json'}")
    return 0
