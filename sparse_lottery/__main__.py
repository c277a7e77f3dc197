"""Command line: `sparse-lottery <command>` or `python -m sparse_lottery <command>`.

Commands are registered in `COMMANDS` (name → help, add_arguments, run); adding one is adding an
entry. `run(args)` returns the exit status.

Example:
    $ python -m sparse_lottery backends
    $ python -m sparse_lottery quickstart --epochs 5 --sparsity 0.9 --seed 0
    $ python -m sparse_lottery imp --levels 5 --baselines reinit
    $ python -m sparse_lottery report runs
    $ python -m sparse_lottery stability --level 3 --k 0,100
    $ python -m sparse_lottery overlap runs
    $ python -m sparse_lottery sanity --levels 5 --lrs 0.002,0.02
    $ python -m sparse_lottery jackpot --density 0.1 --search-steps 10ep
    $ python -m sparse_lottery transfer --target mnist1d_shifted --levels 5
    $ python -m sparse_lottery finetune --levels 3 --lrs 0.002,0.02
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _backends_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def _backends(args: argparse.Namespace) -> int:
    import json

    from .backends import backends, format_backends

    report = backends()
    print(json.dumps(report, indent=2) if args.json else format_backends(report))
    return 0


def _quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    from .quickstart import add_arguments

    add_arguments(parser)


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import main

    return main(args)


def _lazy(module: str, name: str, help: str) -> Command:
    """Command `name` of `sparse_lottery.<module>` (functions `<name>_arguments` and `<name>`),
    imported only when it is used."""

    def command(suffix: str):
        return getattr(importlib.import_module(f"sparse_lottery.{module}"), name + suffix)

    return Command(help, lambda parser: command("_arguments")(parser), lambda a: command("")(a))


_ANALYSIS_HELP = {
    "sanity": "sanity checks (Ma et al. 2021): LT vs RR, random pruning, OMP, small dense per lr",
    "stability": "instability (linear mode connectivity) of a level at rewind points k",
    "overlap": "IoU / Hamming heat map and tables of the masks under a run folder",
    "jackpot": "lottery jackpots: mask search (frozen weights) on the pretrained level 0",
    "transfer": "train a run's tickets on another dataset (new head; frozen or fine-tuned)",
    "finetune": "pruning & fine-tuning vs LT, random reinit and rewinding (Liu et al. 2021)",
}

_LOTTERY_HELP = {
    "train": "train the dense network (level 0 of an experiment)",
    "imp": "iterative magnitude pruning: levels, rewinding, baselines; resumable",
    "branch": "from a finished level: random reinit, random pruning, or retraining",
    "report": "Markdown + HTML report with plots of every experiment under a folder",
    "bench": "run the kernel and IMP benchmarks (source checkout)",
}


COMMANDS: dict[str, Command] = {
    **{name: _lazy("lottery.cli", name, text) for name, text in _LOTTERY_HELP.items()},
    **{name: _lazy("analysis.cli", name, text) for name, text in _ANALYSIS_HELP.items()},
    "quickstart": Command(
        "one lottery-ticket round on MNIST-1D (dense vs sparse accuracy)",
        _quickstart_arguments,
        _quickstart,
    ),
    "backends": Command(
        "which kernel backends are available, and why not", _backends_arguments, _backends
    ),
}


def _general_options(parser: argparse.ArgumentParser, default) -> None:
    """-q and --traceback, accepted before the command and after it: a command's parser adds
    them with `default=argparse.SUPPRESS`, so that leaving them out there keeps the value given
    before the command."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="log warnings only"
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        default=default,
        help="show the traceback of a bad-input error (by default one line: the flag or file, "
        "what was expected, what came)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse-lottery", description=__doc__.split("\n")[0])
    _general_options(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for name, command in COMMANDS.items():
        parser.commands[name] = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(parser.commands[name])
        _general_options(parser.commands[name], argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sparse-lottery` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return COMMANDS[args.command].run(args)
    except (Exception, SystemExit) as error:
        if args.traceback or not _bad_input(error):
            raise
        message = str(error.code if isinstance(error, SystemExit) else error)
        message = _named_by_flag(message, parser.commands[args.command])
        print(f"sparse-lottery {args.command}: error: {message}", file=sys.stderr)
        return 2


def _named_by_flag(message: str, parser: argparse.ArgumentParser) -> str:
    """`message` with a leading Python argument name ("k_list: ...", from the function the
    command called) replaced by the command's flag that sets it ("--k: ...")."""
    name, sep, rest = message.partition(":")
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    flag = flags.get(name) or flags.get(name.removesuffix("_list"))
    return f"{flag}{sep}{rest}" if sep and flag else message


def _bad_input(error: BaseException) -> bool:
    """Errors that report bad input (a flag's value, a missing dataset, a corrupt or foreign
    checkpoint; a command's own exit with a message): their message says what to change, so
    they print as one line, and the command exits with status 2 (as argparse's errors)."""
    from .lottery.checkpoint import CheckpointError

    if isinstance(error, SystemExit):
        return isinstance(error.code, str)
    paths = FileNotFoundError | NotADirectoryError | IsADirectoryError | FileExistsError
    return isinstance(error, ValueError | CheckpointError | paths | PermissionError)


if __name__ == "__main__":
    sys.exit(main())
