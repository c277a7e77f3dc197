"""`sparse-lottery jackpot`: the lottery-jackpot mask search on an experiment's pretrained
(level 0) network (see `sparse_lottery.analysis.jackpot`).

One flag per `JackpotHparams` field; those whose name is an experiment flag too (`--lr`,
`--steps`, ...) take a `--search-` prefix. Every other flag is the experiment's, as for `imp`.

Example:
    $ sparse-lottery jackpot --density 0.1,0.05 --search-steps 10ep
    $ sparse-lottery jackpot --density 0.1 --swap-fraction 0.5 --swap-schedule cosine
"""

import argparse
import dataclasses
import typing
from pathlib import Path

from ..lottery.cli import _on_experiment, add_experiment_arguments, parse_list
from .jackpot import JackpotHparams

_PREFIXED = ("steps", "lr", "momentum", "weight_decay", "schedule")


def _flag(name: str) -> str:
    return "--" + ("search-" if name in _PREFIXED else "") + name.replace("_", "-")


def parse_densities(text: str) -> list[float]:
    """'0.1,0.05' → [0.1, 0.05]; SystemExit naming --density otherwise.

    Example:
        >>> parse_densities("0.2, 0.05")
        [0.2, 0.05]
    """
    return parse_list(
        text, "--density", float, lambda d: 0 < d <= 1, "fractions in (0, 1] kept", "0.1,0.05"
    )


def jackpot_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lottery-jackpot search")
    group.add_argument(
        "--density",
        default="0.1",
        help="fractions of the prunable weights kept, comma-separated; one search each "
        "(default: 0.1)",
    )
    hints, defaults = typing.get_type_hints(JackpotHparams), JackpotHparams()
    for f in dataclasses.fields(JackpotHparams):
        kind, default = hints[f.name], getattr(defaults, f.name)
        text = f"{f.metadata['help']} (default: {default!r})".replace("%", "%%")
        if kind is bool:
            group.add_argument(
                _flag(f.name),
                dest=f"jackpot_{f.name}",
                default=default,
                action=argparse.BooleanOptionalAction,
                help=text,
            )
        else:
            group.add_argument(
                _flag(f.name),
                dest=f"jackpot_{f.name}",
                type=kind,
                default=default,
                metavar=kind.__name__.upper(),
                help=text,
            )
    add_experiment_arguments(parser)


def jackpot(args: argparse.Namespace) -> int:
    from ..lottery.runner import Run
    from .jackpot import format_table, lottery_jackpot

    densities = parse_densities(args.density)
    hp = JackpotHparams(
        **{f.name: getattr(args, f"jackpot_{f.name}") for f in dataclasses.fields(JackpotHparams)}
    )
    try:
        hp.validate()
    except ValueError as e:
        name = str(e).split(":")[0]
        raise SystemExit(f"{_flag(name)}{str(e)[len(name) :]}") from e
    done = _on_experiment(
        args,
        lambda exp, runtime: lottery_jackpot(Run(exp, runtime, args.replicate), densities, hp),
    )
    if done:
        rows = done[2]
        print(format_table(rows))
        print(f"results: {Path(rows[0]['directory']).parent / 'jackpot.json'}")
    return 0
