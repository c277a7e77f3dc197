"""Hyperparameters as dataclasses: one CLI flag per field, run directories named by a hash.

Four sections make an experiment: `DatasetHparams`, `ModelHparams`, `TrainingHparams` and
`PruningHparams` (pruning and rewinding). Field names are unique across sections, so each is one
flag (`--lr`, `--prune-fraction`). The run directory is named by a hash of the fields that differ
from their dataclass defaults (as in open_lth): adding a field whose default changes nothing
keeps every old run's name. What does not change results (where data lives, the device, how
often to evaluate) is a runtime option, not a hyperparameter (see `runner.Runtime`).

Durations are strings: "1500it" (iterations) or "20ep" (epochs).

Example:
    >>> from sparse_lottery.lottery.hparams import Experiment, TrainingHparams
    >>> a = Experiment()
    >>> b = Experiment(training=TrainingHparams(lr=0.1))
    >>> a.hash() != b.hash(), b.non_default()
    (True, {'training': {'lr': 0.1}})
"""

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
PRUNE_METHODS = ("global_magnitude", "layerwise_magnitude", "random_global", "random_layerwise")
REWINDS = ("init", "step", "lr", "none")
_DURATION = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def parse_duration(text: str, steps_per_epoch: int, what: str = "duration") -> int:
    """Iterations in a duration string: "500it" → 500, "2ep" → 2 × steps_per_epoch.

    Example:
        >>> parse_duration("3ep", 40), parse_duration("7it", 40)
        (120, 7)
    """
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(
            f"{what}: expected '<n>it' or '<n>ep' (e.g. '1500it', '20ep'), got {text!r}"
        )
    count, unit = int(match.group(1)), match.group(2)
    return count * steps_per_epoch if unit == "ep" else count


@dataclass
class DatasetHparams:
    """What a run trains on: the dataset, the minibatch size and the training augmentation."""

    dataset: str = _help("dataset name (see `sparse-lottery imp --list`)", default="mnist1d")
    batch_size: int = _help("minibatch size (global, over all ranks)", default=100)
    augmentation: str = _help(
        "'default' (the dataset's own: crop+flip for CIFAR), 'none' or an augmentation name",
        default="default",
    )


@dataclass
class ModelHparams:
    """The architecture (a name of `sparse_lottery.models.MODELS`)."""

    model: str = _help("model name (see `sparse-lottery imp --list`)", default="mnist1d_mlp")


@dataclass
class TrainingHparams:
    """How each level trains: optimiser, learning-rate schedule, length and the three seeds."""

    optimizer: str = _help(f"one of {OPTIMIZERS}", default="adam")
    lr: float = _help("base learning rate", default=2e-2)
    momentum: float = _help("SGD momentum", default=0.0)
    nesterov: bool = _help("SGD Nesterov momentum", default=False)
    weight_decay: float = _help("weight decay (decoupled for adamw, L2 otherwise)", default=0.0)
    steps: str = _help("training length per level: '<n>it' or '<n>ep'", default="1500it")
    schedule: str = _help(f"learning-rate schedule, one of {SCHEDULES}", default="constant")
    milestones: str = _help("step schedule: comma-separated durations ('80ep,120ep')", default="")
    gamma: float = _help("step schedule: factor at each milestone", default=0.1)
    warmup: str = _help("linear warmup length ('0it', '5ep')", default="0it")
    init_seed: int = _help("seed of the initial weights (-1: the replicate number)", default=-1)
    data_seed: int = _help("seed of the data order (-1: the replicate number)", default=-1)
    augment_seed: int = _help("seed of the augmentation (-1: the replicate number)", default=-1)


@dataclass
class PruningHparams:
    """How each level prunes (method, fractions, per-layer rates, exclusions) and where it
    rewinds to."""

    prune_method: str = _help(f"one of {PRUNE_METHODS}", default="layerwise_magnitude")
    prune_fraction: float = _help(
        "fraction of the surviving weights removed per level", default=0.2
    )
    prune_output_fraction: float = _help(
        "fraction for the model's output layer (-1: the same as --prune-fraction)", default=-1.0
    )
    prune_rates: str = _help("per-layer fractions, 'glob=fraction,...' (module names)", default="")
    prune_exclude: str = _help("layers never pruned, comma-separated globs", default="")
    rewind: str = _help(
        "where each level restarts: 'init' (θ0), 'step' (θk, schedule and data at k), "
        "'lr' (trained weights, schedule rewound to k), 'none' (trained weights, fine-tune at the "
        "final learning rate)",
        default="init",
    )
    rewind_step: str = _help("k for --rewind step/lr/none: '<n>it' or '<n>ep'", default="0it")


SECTIONS = {
    "dataset": DatasetHparams,
    "model": ModelHparams,
    "training": TrainingHparams,
    "pruning": PruningHparams,
}


@dataclass
class Experiment:
    """All hyperparameters of a run; `hash()` names its directory."""

    dataset: DatasetHparams = field(default_factory=DatasetHparams)
    model: ModelHparams = field(default_factory=ModelHparams)
    training: TrainingHparams = field(default_factory=TrainingHparams)
    pruning: PruningHparams = field(default_factory=PruningHparams)

    def validate(self) -> "Experiment":
        """Raise ValueError naming the flag for values no run can use; return self."""
        from .. import data, models  # the registries (imported here: they import torch)

        d, t, p = self.dataset, self.training, self.pruning
        _choice("--dataset", d.dataset, tuple(data.DATASETS))
        _choice("--augmentation", d.augmentation, ("default", "none", *data.AUGMENTATIONS))
        _choice("--model", self.model.model, tuple(models.MODELS))
        _choice("--optimizer", t.optimizer, OPTIMIZERS)
        _choice("--schedule", t.schedule, SCHEDULES)
        _choice("--prune-method", p.prune_method, PRUNE_METHODS)
        _choice("--rewind", p.rewind, REWINDS)
        for flag, value in (("--steps", t.steps), ("--warmup", t.warmup),
                            ("--rewind-step", p.rewind_step)):  # fmt: skip
            parse_duration(value, 1, flag)
        for milestone in filter(None, t.milestones.split(",")):
            parse_duration(milestone, 1, "--milestones")
        if parse_duration(t.steps, 1, "--steps") == 0:
            raise ValueError(f"--steps: expected at least one iteration, got {t.steps!r}")
        if t.lr <= 0:
            raise ValueError(f"--lr: expected a positive learning rate, got {t.lr}")
        if self.dataset.batch_size < 1:
            raise ValueError(
                f"--batch-size: expected a positive int, got {self.dataset.batch_size}"
            )
        if not 0.0 <= p.prune_fraction <= 1.0:
            raise ValueError(
                f"--prune-fraction: expected a fraction in [0, 1], got {p.prune_fraction}"
            )
        if p.prune_output_fraction != -1.0 and not 0.0 <= p.prune_output_fraction <= 1.0:
            raise ValueError(
                f"--prune-output-fraction: expected -1 or a fraction in [0, 1], "
                f"got {p.prune_output_fraction}"
            )
        parse_rates(p.prune_rates)
        return self

    def to_dict(self) -> dict:
        """{section: {field: value}} of every field (the inverse of `from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Experiment":
        """Inverse of `to_dict`; unknown sections or fields raise ValueError."""
        kwargs = {}
        for section, values in data.items():
            if section not in SECTIONS:
                raise ValueError(f"unknown hyperparameter section {section!r}")
            names = {f.name for f in dataclasses.fields(SECTIONS[section])}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"{section}: unknown hyperparameter(s) {sorted(unknown)}")
            kwargs[section] = SECTIONS[section](**values)
        return cls(**kwargs)

    def non_default(self) -> dict:
        """{section: {field: value}} for every field that differs from its default."""
        out = {}
        for section, cls in SECTIONS.items():
            values, defaults = dataclasses.asdict(getattr(self, section)), dataclasses.asdict(cls())
            changed = {k: v for k, v in values.items() if v != defaults[k]}
            if changed:
                out[section] = changed
        return out

    def hash(self, extra: dict | None = None) -> str:
        """16 hex digits of SHA-256 over the non-default fields (and `extra`, e.g. a branch's
        settings), independent of field order and of fields added later with no-op defaults."""
        payload = {"hparams": self.non_default(), **({"extra": extra} if extra else {})}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag}: expected one of {list(choices)}, got {value!r}")


def parse_rates(text: str) -> dict[str, float]:
    """'fc3=0.1,conv*=0.15' → {'fc3': 0.1, 'conv*': 0.15}.

    Example:
        >>> parse_rates("fc3=0.1")
        {'fc3': 0.1}
    """
    rates = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = None
        if not sep or not name or rate is None or not 0.0 <= rate <= 1.0:
            raise ValueError(
                f"--prune-rates: expected 'glob=fraction' items with fractions in [0, 1], "
                f"got {item!r}"
            )
        rates[name.strip()] = rate
    return rates


def parse_globs(text: str) -> list[str]:
    """'fc1, conv*' → ['fc1', 'conv*'] (module-name globs, e.g. --prune-exclude).

    Example:
        >>> parse_globs("fc1, conv*")
        ['fc1', 'conv*']
    """
    return [g.strip() for g in text.split(",") if g.strip()]


def seeds(training: TrainingHparams, replicate: int) -> dict[str, int]:
    """The init, data-order and augmentation seeds of a replicate (each -1 field takes the
    replicate number; the three streams stay independent because each seeds its own generator
    with its own salt)."""
    pick = lambda v: replicate if v == -1 else v
    return {
        "init": pick(training.init_seed),
        "data": pick(training.data_seed),
        "augment": pick(training.augment_seed),
    }
