"""Iterative magnitude pruning and its branches, as idempotent steps over a run folder.

Layout (open_lth's):

    <root>/lottery_<hash>/config.json                  the resolved hyperparameters
    <root>/lottery_<hash>/replicate_<r>/init.ckpt      θ0
    <root>/lottery_<hash>/replicate_<r>/rewind.ckpt    θk (rewinding to iteration k > 0)
    <root>/lottery_<hash>/replicate_<r>/level_<L>/     mask.ckpt (packed; none at the dense
        level 0), config.json (the level's resolved hyperparameters and iterations),
        checkpoint.ckpt (while training), execution.json, metrics.jsonl/.csv, final.ckpt,
        summary.json
    .../level_<L>/branch_<kind>_<hash>/                 a branch, with the same files

Level L ≥ 1 prunes level L−1's trained weights (`sparse_lottery.prune`), then trains from the
rewind point: θ0 ("init"), θk with the schedule and data order at k ("step"), or level L−1's
trained weights with the schedule rewound to k ("lr") or held at its final learning rate
("none": fine-tuning). A finished step (its `summary.json` and `final.ckpt` there) is skipped, a
killed one resumes, and one whose files were deleted is redone.

Example:
    >>> from sparse_lottery.lottery import Experiment, Runtime, run_imp
    >>> results = run_imp(Experiment(), Runtime(root="/tmp/runs"), levels=2)  # doctest: +SKIP
"""

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from .. import models
from ..model import _masked_layers, _param_name, check_globs, density, load_masks, masks, sparsify
from ..ops import pack_mask, unpack_mask
from ..pruning import prune
from . import checkpoint, distributed
from .hparams import (
    DatasetHparams,
    Experiment,
    TrainingHparams,
    parse_duration,
    parse_globs,
    parse_rates,
    seeds,
)
from .schedule import learning_rate
from .trainer import Data, Runtime, Segment, train_segment

log = logging.getLogger("sparse_lottery")

BRANCHES = ("reinit", "random_prune", "retrain")
_INIT_SALT, _PRUNE_SALT, _REINIT_SALT, _RANDOM_MASK_SALT = 0x1417, 0x9A7E, 0x4E17, 0x3A5C


class Run:
    """One replicate of one experiment: its folder, data and model builder."""

    def __init__(self, exp: Experiment, runtime: Runtime, replicate: int = 0) -> None:
        self.exp, self.runtime, self.replicate = exp.validate(), runtime, replicate
        self.device = distributed.local_device(runtime.device or None)
        self.tag = exp.hash()
        self.root = Path(runtime.root) / f"lottery_{self.tag}"
        self.dir = self.root / f"replicate_{replicate}"
        self.seeds = seeds(exp.training, replicate)
        self.data = Data(exp, runtime)
        spe = self.data.steps_per_epoch
        self.total = parse_duration(exp.training.steps, spe, "--steps")
        self.k = parse_duration(exp.pruning.rewind_step, spe, "--rewind-step")
        if self.k >= self.total:
            raise ValueError(
                f"--rewind-step: {exp.pruning.rewind_step} ({self.k} it) is not before the end of "
                f"training ({exp.training.steps} = {self.total} it)"
            )
        self._check_layer_globs()
        self._write_config()

    def _check_layer_globs(self) -> None:
        """--prune-rates and --prune-exclude name layers of the model (checked before any
        training, on a model without storage)."""
        p = self.exp.pruning
        globs = {
            "--prune-rates": list(parse_rates(p.prune_rates)),
            "--prune-exclude": parse_globs(p.prune_exclude),
        }
        if not any(globs.values()):
            return
        with torch.device("meta"):
            names = [n for n, _ in _masked_layers(self.build(0))]
        for flag, patterns in globs.items():
            check_globs(flag, patterns, names)

    # ------------------------------------------------------------------ paths and files
    def level_dir(self, level: int) -> Path:
        """The folder of IMP level `level` of this replicate."""
        return self.dir / f"level_{level}"

    def _finished(self, directory: Path, level: int | None = None) -> dict | None:
        """The summary of the step trained in `directory` if it is finished and its files are
        all there (for level 0 when rewinding to a step, the rewind point too); else None."""
        done = directory / "summary.json"
        if not (done.exists() and (directory / "final.ckpt").exists()):
            return None
        rewind = self.exp.pruning.rewind == "step" and self.k > 0
        if level == 0 and rewind and not (self.dir / "rewind.ckpt").exists():
            return None
        return checkpoint.read_json(done)

    def _write_config(self) -> None:
        config = {"hash": self.tag, "non_default": self.exp.non_default(),
                  "experiment": self.exp.to_dict()}  # fmt: skip
        path = self.root / "config.json"
        if path.exists():
            old = checkpoint.read_json(path)
            if old.get("hash") != self.tag or old.get("non_default") != config["non_default"]:
                raise checkpoint.CheckpointError(
                    f"{path}: describes another experiment ({old.get('non_default')}); "
                    f"this one is {config['non_default']}. Use another --root"
                )
        elif distributed.is_main():
            checkpoint.atomic_write_json(path, config)
        distributed.barrier()

    def build(self, seed: int) -> nn.Module:
        """The experiment's model with masked layers, initialised from `seed` (CPU)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = models.get_model(
                self.exp.model.model, self.data.train.num_classes, self.data.train.input_shape
            )
        return sparsify(model)

    def weights(self, path: Path, kind: str, model: nn.Module) -> dict:
        """The state dict saved at `path` as `kind` for this experiment and `model`'s
        architecture (`CheckpointError` if it belongs to another one or is corrupt)."""
        return checkpoint.load(path, self.tag, kind, checkpoint.model_signature(model))

    def init_weights(self, model: nn.Module) -> dict:
        """θ0 of this replicate, made and saved on first use."""
        path = self.dir / "init.ckpt"
        if not path.exists():
            fresh = self.build(_INIT_SALT + self.seeds["init"])
            if distributed.is_main():
                state = {k: v.detach().cpu() for k, v in fresh.state_dict().items()}
                checkpoint.save(path, state, experiment=self.tag, kind="init",
                                model=checkpoint.model_signature(fresh))  # fmt: skip
            distributed.barrier()
        return self.weights(path, "init", model)

    def save_masks(self, path: Path, model: nn.Module, bool_masks: dict) -> None:
        """Write `bool_masks` (the masks of `model`) packed, after checking every rank has the
        same."""
        packed = {k: pack_mask(m) for k, m in bool_masks.items()}
        shapes = {k: list(m.shape) for k, m in bool_masks.items()}
        distributed.check_same(packed, "masks")
        if distributed.is_main():
            checkpoint.save(path, {"packed": packed, "shapes": shapes}, experiment=self.tag,
                            kind="mask", model=checkpoint.model_signature(model))  # fmt: skip
        distributed.barrier()

    def load_saved_masks(self, path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
        """The boolean masks `save_masks` wrote at `path` (for `model`'s architecture)."""
        state = self.weights(path, "mask", model)
        return {k: unpack_mask(p, state["shapes"][k]) for k, p in state["packed"].items()}

    # ------------------------------------------------------------------ levels
    def level(self, level: int) -> dict:
        """Run level `level` (its predecessors first, if needed); returns its summary."""
        directory = self.level_dir(level)
        done = self._finished(directory, level)
        if done is not None:
            return done
        if level > 0:
            self.level(level - 1)
        model, level_masks, start, fixed_lr, state = self._prepare(level)
        model.load_state_dict(state)
        load_masks(model, level_masks)
        rewind_save = None
        if level == 0 and self.k > 0 and self.exp.pruning.rewind == "step":
            rewind_save = (self.k, self.dir / "rewind.ckpt")
        seg = Segment(directory, self.tag, self.exp, self.seeds, start, self.total, self.total,
                      fixed_lr, rewind_save)  # fmt: skip
        log.info("level %d: density %.4f, iterations %d..%d", level, density(model), start,
                 self.total)  # fmt: skip
        return train_segment(model.to(self.device), seg, self.data, self.runtime, self.device)

    def _prepare(self, level: int) -> tuple[nn.Module, dict, int, float | None, dict]:
        """A fresh model of the experiment, the level's masks, and its start point (first
        iteration, fixed learning rate or None, weights): what a level and its branches share."""
        model = self.build(_INIT_SALT + self.seeds["init"])
        level_masks = self.level_masks(level, model)
        return model, level_masks, *self.start_point(level, model)

    def level_masks(self, level: int, model: nn.Module) -> dict[str, torch.Tensor]:
        """Level 0: all ones; level L: level L−1's trained weights pruned (saved once)."""
        if level == 0:
            return masks(model)
        path = self.level_dir(level) / "mask.ckpt"
        if path.exists():
            return self.load_saved_masks(path, model)
        model.load_state_dict(self.trained_weights(level - 1, model))
        p = self.exp.pruning
        rates = parse_rates(p.prune_rates)
        if p.prune_output_fraction != -1.0:
            rates.setdefault(models.MODELS[self.exp.model.model].output_layer,
                             p.prune_output_fraction)  # fmt: skip
        gen = torch.Generator().manual_seed(_PRUNE_SALT + 1_000_003 * self.seeds["init"] + level)
        exclude = parse_globs(p.prune_exclude) or None
        prune(model, p.prune_fraction, p.prune_method, exclude=exclude, rates=rates or None,
              generator=gen)  # fmt: skip
        pruned = masks(model)
        self.save_masks(path, model, pruned)
        return pruned

    def trained_weights(self, level: int, model: nn.Module) -> dict:
        """Level `level`'s trained weights (the level trained first if they are missing)."""
        self.level(level)
        return self.weights(self.level_dir(level) / "final.ckpt", "final", model)

    def start_point(self, level: int, model: nn.Module) -> tuple[int, float | None, dict]:
        """(first iteration, fixed learning rate or None, weights) of a level."""
        rewind = self.exp.pruning.rewind
        if level == 0:
            return 0, None, self.init_weights(model)
        if rewind == "init":
            return 0, None, self.init_weights(model)
        if rewind == "step":
            if self.k == 0:
                return 0, None, self.init_weights(model)
            self.level(0)  # θk is saved by level 0's training: redone if the file is gone
            return self.k, None, self.weights(self.dir / "rewind.ckpt", "rewind", model)
        trained = self.trained_weights(level - 1, model)
        if rewind == "lr":
            return self.k, None, trained
        final_lr = learning_rate(self.exp.training, self.total - 1, self.total,
                                 self.data.steps_per_epoch)  # fmt: skip
        return self.k, final_lr, trained

    # ------------------------------------------------------------------ branches
    def branch(self, level: int, kind: str, training: TrainingHparams | None = None,
               seed: int = 0, dataset: DatasetHparams | None = None) -> dict:  # fmt: skip
        """Train a branch of finished level `level`:

        - "reinit": the level's mask, weights freshly initialised (seed `seed`): the random
          reinitialisation baseline;
        - "random_prune": a random mask with the level's per-layer densities, the level's start
          weights: the random-pruning baseline;
        - "retrain": the level's mask and start weights, trained with `training` and/or on
          `dataset` instead (its samples and classes must fit the model; to move a ticket to
          another head, see `sparse_lottery.analysis.transfer`). With rewinding "none" it
          fine-tunes at the final learning rate of `training`'s schedule.
        """
        if kind not in BRANCHES:
            raise ValueError(f"kind: expected one of {list(BRANCHES)}, got {kind!r}")
        changed = training is not None or dataset is not None
        if (kind == "retrain") != changed:
            raise ValueError(
                "training, dataset: a 'retrain' branch needs the hyperparameters to change, "
                f"the other kinds take none; got kind {kind!r} with "
                f"{'changes' if changed else 'none'}"
            )
        exp = dataclasses.replace(self.exp, training=training or self.exp.training,
                                  dataset=dataset or self.exp.dataset).validate()  # fmt: skip
        if seeds(exp.training, self.replicate)["init"] != self.seeds["init"]:
            raise ValueError(
                "init_seed: a retrain branch starts from the level's weights, drawn from the "
                "experiment's init seed; for new initial weights use kind 'reinit' and its seed"
            )
        self.level(level)
        directory = self.branch_dir(level, kind, training, seed, dataset)
        done = self._finished(directory)
        if done is not None:
            return done
        data = self.data if dataset is None else self._branch_data(exp)
        model, level_masks, start, fixed_lr, state = self._prepare(level)
        if kind == "reinit":
            start, fixed_lr = 0, None
            state = self.reinit_weights(seed)
        model.load_state_dict(state)
        if kind == "random_prune":
            level_masks = self._random_masks(model, level_masks, seed, level)
        load_masks(model, level_masks)
        total = self.total
        if changed:
            spe = data.steps_per_epoch
            total = parse_duration(exp.training.steps, spe, "--steps")
            start = min(start, total - 1)
            if fixed_lr is not None:  # fine-tuning: the branch schedule's final rate
                fixed_lr = learning_rate(exp.training, total - 1, total, spe)
        seg = Segment(directory, self.tag, exp, seeds(exp.training, self.replicate), start,
                      total, total, fixed_lr)  # fmt: skip
        return train_segment(model.to(self.device), seg, data, self.runtime, self.device)

    def _branch_data(self, exp: Experiment) -> Data:
        """The data of a branch that trains on another dataset, checked to fit the model."""
        data = Data(exp, self.runtime)
        ours, theirs = self.data.train, data.train
        if (ours.input_shape, ours.num_classes) != (theirs.input_shape, theirs.num_classes):
            raise ValueError(
                f"dataset: {exp.dataset.dataset!r} has samples of shape {theirs.input_shape} in "
                f"{theirs.num_classes} classes; the level's model takes {ours.input_shape} in "
                f"{ours.num_classes} (`sparse-lottery transfer` moves a ticket to a new head)"
            )
        return data

    def branch_dir(self, level: int, kind: str, training: TrainingHparams | None = None,
                   seed: int = 0, dataset: DatasetHparams | None = None) -> Path:  # fmt: skip
        """The folder of a branch (see `branch`): named by its kind, seed and the changes of
        training and data."""
        settings = {"kind": kind, "seed": seed}
        if training is not None:
            settings["training"] = Experiment(training=training).non_default().get("training", {})
        if dataset is not None:
            settings["dataset"] = dataclasses.asdict(dataset)
        return self.level_dir(level) / f"branch_{kind}_{Experiment().hash(settings)}"

    def reinit_weights(self, seed: int = 0) -> dict:
        """Fresh initial weights θ0' (all-ones masks) for the "reinit" branch of seed `seed`:
        the same architecture and initialiser as θ0, another random draw."""
        return self.build(_REINIT_SALT + 1_000_003 * seed + self.seeds["init"]).state_dict()

    def _random_masks(self, model, level_masks, seed, level) -> dict[str, torch.Tensor]:
        """Uniformly random masks with exactly the kept count of each layer of `level_masks`,
        drawn from the branch seed, the level and the replicate's init seed (replicates differ)."""
        load_masks(model, {k: torch.ones_like(m) for k, m in level_masks.items()})
        layers = dict(_masked_layers(model))
        counts = {name: int((~level_masks[_param_name(name)]).sum()) for name in layers}
        salt = _RANDOM_MASK_SALT + 7919 * seed + 1_000_003 * self.seeds["init"]
        gen = torch.Generator().manual_seed(salt + level)
        prune(model, 0, "random_layerwise", rates={_glob(n): c for n, c in counts.items()},
              generator=gen)  # fmt: skip
        return masks(model)


def _glob(name: str) -> str:
    """An fnmatch pattern matching exactly `name`."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def train(exp: Experiment, runtime: Runtime, replicate: int = 0) -> dict:
    """Train the dense network: level 0 of `exp` (an IMP run of the same experiment reuses it);
    returns its summary (test accuracy, early-stopping iteration, seconds, ...).

    Example:
        >>> summary = train(Experiment(), Runtime(root="/tmp/runs"))  # doctest: +SKIP
        >>> summary["test_accuracy"]  # doctest: +SKIP
        0.65
    """
    return Run(exp, runtime, replicate).level(0)


def branch(exp: Experiment, runtime: Runtime, level: int, kind: str,
           training: TrainingHparams | None = None, seed: int = 0,
           dataset: DatasetHparams | None = None, replicate: int = 0) -> dict:  # fmt: skip
    """Train branch `kind` ("reinit", "random_prune" or "retrain") of IMP level `level` of
    `exp` (the levels up to it first, if needed); returns its summary. See `Run.branch`.

    Example:
        >>> fast = dataclasses.replace(Experiment().training, lr=0.002)
        >>> summary = branch(Experiment(), Runtime(), 2, "retrain", fast)  # doctest: +SKIP
    """
    return Run(exp, runtime, replicate).branch(level, kind, training, seed, dataset)


def run_imp(exp: Experiment, runtime: Runtime, levels: int, replicate: int = 0,
            baselines: tuple[str, ...] = ()) -> list[dict]:  # fmt: skip
    """Levels 0..`levels` of IMP for one replicate (and each baseline branch — "reinit",
    "random_prune" — at every level ≥ 1); returns one row per level:
    {"level", "density", "ticket": summary, <baseline>: summary}."""
    run = Run(exp, runtime, replicate)
    rows = []
    for level in range(levels + 1):
        row = {"level": level, "ticket": run.level(level)}
        row["density"] = row["ticket"]["density"]
        for kind in baselines if level > 0 else ():
            row[kind] = run.branch(level, kind)
        rows.append(row)
    return rows


__all__ = ["Run", "train", "run_imp", "branch", "BRANCHES"]
