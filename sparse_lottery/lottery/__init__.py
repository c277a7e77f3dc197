"""The lottery driver: IMP with every rewinding variant, branches, resumable run folders.

The Python API of the `sparse-lottery` commands: `train` (the dense level 0), `run_imp`
(levels), `branch` (reinit, random pruning, retraining), `write_report` and `run_benchmarks`,
over an `Experiment` (hyperparameters, hashed) and a `Runtime` (options that change no result).

Example:
    >>> from sparse_lottery.lottery import Experiment, Runtime, run_imp
    >>> rows = run_imp(Experiment(), Runtime(), levels=3, baselines=("reinit",))  # doctest: +SKIP
    >>> [round(r["density"], 3) for r in rows]  # doctest: +SKIP
    [1.0, 0.8, 0.64, 0.512]
"""

from .checkpoint import CheckpointError
from .cli import run_benchmarks
from .hparams import (
    DatasetHparams,
    Experiment,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
    parse_duration,
)
from .presets import PRESETS, apply_preset
from .report import write_report
from .runner import BRANCHES, Run, branch, run_imp, train
from .trainer import Runtime

__all__ = [
    "CheckpointError",
    "DatasetHparams",
    "Experiment",
    "ModelHparams",
    "PruningHparams",
    "TrainingHparams",
    "parse_duration",
    "PRESETS",
    "apply_preset",
    "BRANCHES",
    "Run",
    "train",
    "run_imp",
    "branch",
    "write_report",
    "run_benchmarks",
    "Runtime",
]
