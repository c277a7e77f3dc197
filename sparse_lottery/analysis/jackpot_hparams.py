"""Settings of the lottery-jackpot search (`JackpotHparams`, the paper's defaults; RESEARCH.md
§4) and the layers it leaves unpruned.

Example:
    >>> hp = JackpotHparams(swap_fraction=0.5).validate()
    >>> hp.non_default(), hp.training().optimizer
    ({'swap_fraction': 0.5}, 'sgd')
"""

import dataclasses
from dataclasses import dataclass, field

from .. import models
from ..lottery.hparams import SCHEDULES, TrainingHparams, parse_duration, parse_globs
from .jackpot_search import LAYER_DENSITIES, SWAP_SCHEDULES

NORM_STATS = ("frozen", "update")


@dataclass
class JackpotHparams:
    """Settings of the search (the paper's defaults; RESEARCH.md §4)."""

    steps: str = field(default="10ep", metadata={"help": "search length: '<n>it' or '<n>ep'"})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate of the scores"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of the scores"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay on the scores"})
    schedule: str = field(default="cosine", metadata={"help": f"lr schedule, one of {SCHEDULES}"})
    kept_score: float = field(default=1.0, metadata={"help": "initial score of kept weights"})
    pruned_score: float = field(default=0.99, metadata={"help": "initial score of pruned ones"})
    swap_fraction: float = field(
        default=1.0, metadata={"help": "r: fraction of candidate pairs swapped (1: re-top-k)"}
    )
    swap_schedule: str = field(
        default="constant", metadata={"help": f"r over the search, one of {SWAP_SCHEDULES}"}
    )
    layer_density: str = field(
        default="global",
        metadata={"help": f"per-layer keep ratios, one of {LAYER_DENSITIES}"},
    )
    prune_output: bool = field(default=False, metadata={"help": "prune the output layer too"})
    norm_stats: str = field(
        default="frozen",
        metadata={"help": f"BatchNorm running statistics, one of {NORM_STATS}"},
    )

    def validate(self) -> "JackpotHparams":
        """Raise ValueError naming the field for unusable values; return self."""
        parse_duration(self.steps, 1, "steps")
        for name, choices in (
            ("schedule", SCHEDULES),
            ("swap_schedule", SWAP_SCHEDULES),
            ("layer_density", LAYER_DENSITIES),
            ("norm_stats", NORM_STATS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name}: expected one of {list(choices)}, got {getattr(self, name)!r}"
                )
        checks = (
            ("lr", self.lr > 0, "a positive learning rate"),
            ("momentum", 0 <= self.momentum < 1, "a value in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "a value >= 0"),
            ("swap_fraction", 0 <= self.swap_fraction <= 1, "a fraction in [0, 1]"),
            (
                "kept_score",
                self.kept_score >= self.pruned_score,
                f"at least pruned_score ({self.pruned_score})",
            ),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")
        return self

    def non_default(self) -> dict:
        """{field: value} of the fields that differ from their defaults (names the folder)."""
        default = dataclasses.asdict(JackpotHparams())
        return {k: v for k, v in dataclasses.asdict(self).items() if v != default[k]}

    def training(self) -> TrainingHparams:
        """The scores' optimiser and schedule, as the driver's training hyperparameters."""
        return TrainingHparams(
            optimizer="sgd",
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            steps=self.steps,
            schedule=self.schedule,
        )


def excluded_layers(run, hp: JackpotHparams) -> list[str]:
    """Module-name globs not pruned: the experiment's `--prune-exclude`, and the output layer
    unless `hp.prune_output`.

    Example:
        >>> excluded_layers(run, JackpotHparams())  # doctest: +SKIP
        ['fc3']
    """
    exclude = parse_globs(run.exp.pruning.prune_exclude)
    if not hp.prune_output:
        exclude.append(models.MODELS[run.exp.model.model].output_layer)
    return exclude


__all__ = ["JackpotHparams", "NORM_STATS", "excluded_layers"]
