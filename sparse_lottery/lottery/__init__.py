"""The lottery driver: IMP with every rewinding variant, branches, resumable run folders.

Example:
    >>> from sparse_lottery.lottery import Experiment, Runtime, run_imp
    >>> rows = run_imp(Experiment(), Runtime(), levels=3, baselines=("reinit",))  # doctest: +SKIP
    >>> [round(r["density"], 3) for r in rows]  # doctest: +SKIP
    [1.0, 0.8, 0.64, 0.512]
"""

from .checkpoint import CheckpointError
from .hparams import (
    DatasetHparams,
    Experiment,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
    parse_duration,
)
from .presets import PRESETS, apply_preset
from .runner import BRANCHES, Run, run_imp
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
    "run_imp",
    "Runtime",
]
