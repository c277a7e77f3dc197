"""The experiment commands of `sparse-lottery`: train, imp, branch, report, bench.

Every hyperparameter field is one flag (`--lr`, `--prune-fraction`, ...); a `--preset` sets the
literature's values first and explicit flags win. Runtime options (`--root`, `--data-dir`,
`--device`, ...) do not change results and are not part of the run's hash.

Example:
    $ sparse-lottery imp --levels 5 --baselines reinit          # MNIST-1D MLP, 5 levels
    $ sparse-lottery imp --preset lenet_mnist --data-dir ~/data --download
    $ sparse-lottery branch --level 3 --kind retrain --lr 0.001
    $ sparse-lottery report runs/
    $ torchrun --nproc-per-node 2 -m sparse_lottery imp --levels 3
"""

import argparse
import dataclasses
import logging
import subprocess
import sys
import typing
from pathlib import Path

import torch

from . import distributed, runner
from .hparams import SECTIONS, TrainingHparams  # noqa: F401  (doctest)
from .presets import PRESETS, apply_preset
from .report import markdown_table
from .runner import BRANCHES, Run, run_imp
from .trainer import Runtime

log = logging.getLogger("sparse_lottery")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(parser: argparse.ArgumentParser, cls, title: str) -> None:
    group = parser.add_argument_group(title)
    defaults = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default = getattr(defaults, f.name)
        text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        if kind is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)  # fmt: skip
        else:
            group.add_argument(_flag(f.name), type=kind, default=argparse.SUPPRESS,
                               metavar=kind.__name__.upper(), help=text)  # fmt: skip


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, one flag per hyperparameter, one per runtime option, --replicate."""
    parser.add_argument(
        "--preset",
        default="mnist1d_mlp",
        choices=sorted(PRESETS),
        help="the literature's settings to start from (default: mnist1d_mlp)",
    )
    parser.add_argument("--replicate", type=int, default=0,
                        help="replicate number: the default seed of init, data order and "
                        "augmentation (default: 0)")  # fmt: skip
    parser.add_argument("--list", action="store_true",
                        help="list presets, models and datasets, and exit")  # fmt: skip
    for section, cls in SECTIONS.items():
        _add_fields(parser, cls, f"{section} hyperparameters (hashed)")
    _add_fields(parser, Runtime, "runtime options (not hashed)")


def experiment_from_args(args: argparse.Namespace):
    """(Experiment, Runtime) from parsed flags: the preset, then the given flags."""
    given = vars(args)
    overrides = {
        section: {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}
        for section, cls in SECTIONS.items()
    }
    exp = apply_preset(args.preset, overrides).validate()
    runtime = Runtime(**{f.name: given[f.name] for f in dataclasses.fields(Runtime)
                         if f.name in given})  # fmt: skip
    return exp, runtime


def _listing() -> str:
    from .. import data, models

    lines = ["presets:"] + [f"  {name}" for name in sorted(PRESETS)]
    lines += ["models:"] + [f"  {n:14s} {s.description}" for n, s in models.MODELS.items()]
    lines += ["datasets:"] + [f"  {n:14s} {s.description}" for n, s in data.DATASETS.items()]
    return "\n".join(lines)


def parse_list(text: str, flag: str, kind, valid, expected: str, example: str) -> list:
    """Comma-separated `kind` values of `flag`, distinct and each passing `valid`; else exit
    with "`flag`: expected `expected`, comma-separated (e.g. `example`), got `text`".

    Example:
        >>> parse_list("0.5, 0.1", "--x", float, lambda v: v > 0, "positive numbers", "1,2")
        [0.5, 0.1]
    """
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or not all(valid(v) for v in values) or len(set(values)) != len(values):
        raise SystemExit(
            f"{flag}: expected {expected}, comma-separated (e.g. {example!r}), got {text!r}"
        )
    return values


def _session(args: argparse.Namespace):
    """Parse, set threads and the process group; (exp, runtime) or None after --list."""
    if args.list:
        print(_listing())
        return None
    exp, runtime = experiment_from_args(args)
    if runtime.threads > 0:
        torch.set_num_threads(runtime.threads)
    distributed.setup(distributed.local_device(runtime.device or None))
    return exp, runtime


def _on_experiment(args: argparse.Namespace, work):
    """`work(exp, runtime)` inside the process group; (exp, runtime, its result) on rank 0,
    None on other ranks and after --list. Errors propagate (`sparse_lottery.__main__` prints
    bad-input ones as one line)."""
    session = _session(args)
    if session is None:
        return None
    exp, runtime = session
    try:
        result = work(exp, runtime)
        main = distributed.is_main()  # before the group is gone
        distributed.barrier()  # no rank closes its connections while another still uses them
    finally:
        distributed.teardown()
    return (exp, runtime, result) if main else None


# --------------------------------------------------------------------------- commands
def imp_arguments(parser: argparse.ArgumentParser) -> None:
    """`imp`'s flags: --levels, --baselines and the experiment's."""
    parser.add_argument("--levels", type=int, default=10,
                        help="pruning levels after the dense level 0 (default: 10)")  # fmt: skip
    parser.add_argument("--baselines", default="",
                        help="branches trained at every level ≥ 1, comma-separated: "
                        f"{', '.join(BRANCHES[:2])} (default: none)")  # fmt: skip
    add_experiment_arguments(parser)


def imp(args: argparse.Namespace) -> int:
    """IMP levels 0..--levels (and the --baselines at every level ≥ 1), then the table."""
    if args.levels < 0:
        raise SystemExit(f"--levels: expected an int >= 0, got {args.levels}")
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    bad = [b for b in baselines if b not in BRANCHES[:2]]
    if bad:
        raise SystemExit(f"--baselines: expected names from {list(BRANCHES[:2])}, got {bad}")
    done = _on_experiment(
        args, lambda exp, rt: run_imp(exp, rt, args.levels, args.replicate, baselines)
    )
    if done is not None:
        exp, runtime, rows = done
        print(format_table(rows, baselines))
        print(f"results: {Path(runtime.root) / f'lottery_{exp.hash()}'}")
    return 0


def format_table(rows: list[dict], baselines: tuple[str, ...]) -> str:
    """Markdown table: level, density, test accuracy of the ticket and each baseline."""
    head = ["level", "density", "ticket acc", *[f"{b} acc" for b in baselines], "early stop it",
            "seconds"]  # fmt: skip
    body = []
    for row in rows:
        t = row["ticket"]
        cells = [str(row["level"]), f"{row['density']:.4f}", f"{t['test_accuracy']:.4f}"]
        cells += [f"{row[b]['test_accuracy']:.4f}" if b in row else "–" for b in baselines]
        cells += [str(t["early_stop_step"]), f"{t['seconds']:.1f}"]
        body.append(cells)
    return markdown_table(head, body)


def train_arguments(parser: argparse.ArgumentParser) -> None:
    """`train`'s flags: the experiment's."""
    add_experiment_arguments(parser)


def train(args: argparse.Namespace) -> int:
    """The dense network: level 0 of the experiment (an `imp` with the same flags reuses it)."""
    done = _on_experiment(args, lambda exp, rt: runner.train(exp, rt, args.replicate))
    if done is not None:
        summary = done[2]
        print(f"test accuracy {summary['test_accuracy']:.4f} after {summary['end_step']} it "
              f"({summary['seconds']:.1f} s)")  # fmt: skip
    return 0


def branch_arguments(parser: argparse.ArgumentParser) -> None:
    """`branch`'s flags: the level, the kind, its seed and changes, and the experiment's."""
    parser.add_argument("--level", type=int, required=True, help="the level to branch from")
    parser.add_argument("--kind", required=True, choices=BRANCHES,
                        help="reinit, random_prune or retrain")  # fmt: skip
    parser.add_argument("--branch-seed", type=int, default=0,
                        help="seed of the branch's random init or mask (default: 0)")  # fmt: skip
    parser.add_argument("--retrain", default="",
                        help="retrain: training or dataset hyperparameters to change, "
                        "'field=value,...' (e.g. 'lr=0.001,steps=500it' or "
                        "'dataset=mnist1d_shifted')")  # fmt: skip
    add_experiment_arguments(parser)


_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse_overrides(text: str, flag: str, **bases) -> dict:
    """'lr=0.001,steps=500it' applied to the hyperparameter dataclasses `bases` (a field goes to
    the one that has it; each value parsed as the field's type): {name: changed copy} for the
    bases a field changed. Errors name `flag`, the field, what was expected and what came.

    Example:
        >>> parse_overrides("lr=0.5", "--retrain", training=TrainingHparams())["training"].lr
        0.5
    """
    owner = {f.name: name for name, base in bases.items() for f in dataclasses.fields(base)}
    values: dict[str, dict] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or name not in owner:
            raise SystemExit(
                f"{flag}: expected 'field=value' with fields of {sorted(owner)}, got {item!r}"
            )
        kind = typing.get_type_hints(type(bases[owner[name]]))[name]
        try:
            values.setdefault(owner[name], {})[name] = (
                _BOOLS[value.lower()] if kind is bool else kind(value)
            )
        except (KeyError, ValueError):
            raise SystemExit(f"{flag}: {name}: expected {kind.__name__}, got {value!r}") from None
    return {name: dataclasses.replace(bases[name], **changes) for name, changes in values.items()}


def branch(args: argparse.Namespace) -> int:
    """Train a branch of a finished level; see `Run.branch`."""
    if args.kind == "retrain" and not args.retrain and not args.list:
        raise SystemExit("--retrain: the retrain branch needs the hyperparameters to change")
    if args.kind != "retrain" and args.retrain:
        raise SystemExit(f"--retrain: only for --kind retrain, got --kind {args.kind}")

    def work(exp, runtime):
        changes = {}
        if args.kind == "retrain":
            changes = parse_overrides(args.retrain, "--retrain", training=exp.training,
                                      dataset=exp.dataset)  # fmt: skip
        run = Run(exp, runtime, args.replicate)
        try:
            return run.branch(args.level, args.kind, changes.get("training"), args.branch_seed,
                              changes.get("dataset"))  # fmt: skip
        except ValueError as error:
            raise SystemExit(f"--retrain: {error}" if changes else str(error)) from error

    done = _on_experiment(args, work)
    if done is not None:
        summary = done[2]
        print(f"{args.kind} at level {args.level}: density {summary['density']:.4f}, "
              f"test accuracy {summary['test_accuracy']:.4f}")  # fmt: skip
    return 0


def report_arguments(parser: argparse.ArgumentParser) -> None:
    """`report`'s arguments: the root folder and --out."""
    parser.add_argument("root", nargs="?", default="runs",
                        help="folder of experiments (default: runs)")  # fmt: skip
    parser.add_argument("--out", default=None, help="report folder (default: <root>/report)")


def report(args: argparse.Namespace) -> int:
    """Write the Markdown + HTML report of every experiment under the root folder."""
    from .report import write_report

    out = write_report(args.root, args.out)
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return 0


BENCHMARKS = ("masked_linear", "selection", "sparse_training", "sparse_conv", "imp")


def bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`bench`'s arguments: the benchmark names, --quick and --device."""
    parser.add_argument(
        "names",
        nargs="*",
        default=list(BENCHMARKS),
        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="device the benchmarks run on (default: cpu)")  # fmt: skip


def bench(args: argparse.Namespace) -> int:
    """Run the benchmarks (see `run_benchmarks`); the exit status is the first failure's."""
    return run_benchmarks(args.names, args.quick, args.device)


def run_benchmarks(names=BENCHMARKS, quick: bool = False, device: str = "cpu") -> int:
    """Run `benchmarks/bench_<name>.py` of a source checkout for each of `names`, one process
    each (each saves its results under `benchmarks/results/`); returns 0, or the exit status
    of the first that failed. Every name is checked before any runs.

    Example:
        >>> run_benchmarks(["sparse_conv"], quick=True)  # doctest: +SKIP
        0
    """
    bad = [name for name in names if name not in BENCHMARKS]
    if bad:
        raise ValueError(f"names: expected benchmarks from {list(BENCHMARKS)}, got {bad}")
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if not folder.is_dir():
        raise FileNotFoundError(f"no benchmarks folder at {folder} (run from a source checkout)")
    status = 0
    for name in names:
        cmd = [sys.executable, str(folder / f"bench_{name}.py"), "--device", device]
        cmd += ["--quick"] if quick else []
        print(f"== {' '.join(cmd)}", flush=True)
        status = status or subprocess.call(cmd)
    return status
