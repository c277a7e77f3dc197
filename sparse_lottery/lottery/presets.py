"""Named presets: the literature's settings (`../RESEARCH.md` §1–2, §7), as overrides of the
hyperparameter defaults. A preset is applied first; flags given on the command line win.

- mnist1d_mlp: Greydanus & Kobak: MLP 40→500→500→10, layerwise 20%, reset to θ0, Adam 2e-2,
  batch 100 (the defaults).
- lenet_mnist: Frankle & Carbin / open_lth: SGD 0.1, 40 epochs, batch 128, layerwise 20%,
  output layer 10%.
- conv2/4/6_cifar10: Frankle & Carbin: Adam 2e-4 / 3e-4 / 3e-4, batch 60; conv 10–15%, fc 20%,
  output 10%.
- resnet20_cifar10: Frankle et al.: SGD 0.1, momentum 0.9, wd 1e-4, 160 epochs, ×0.1 at 80/120,
  global 20%, rewind to iteration 500.
- vgg16_cifar10: the same schedule, rewind to iteration 1000.
- resnet50_imagenet: 90 epochs, batch 1024, lr 0.4, 5-epoch warmup, ×0.1 at 30/60/80, global
  20%, rewind to epoch 5.

Conv-2/4/6 iteration counts and layer rates are the paper's, not re-verified against code
(RESEARCH.md says so); they are parameters like everything else.

Example:
    >>> exp = apply_preset("lenet_mnist")
    >>> exp.model.model, exp.training.optimizer, exp.pruning.prune_output_fraction
    ('lenet_300_100', 'sgd', 0.1)
"""

import dataclasses

from .hparams import SECTIONS, Experiment

_CIFAR_SGD = {
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "steps": "160ep",
    "schedule": "step",
    "milestones": "80ep,120ep",
}


def _conv(model: str, lr: float, iterations: str, conv_rate: float) -> dict:
    return {
        "dataset": {"dataset": "cifar10", "batch_size": 60, "augmentation": "none"},
        "model": {"model": model},
        "training": {"optimizer": "adam", "lr": lr, "steps": iterations},
        "pruning": {
            "prune_fraction": 0.2,
            "prune_output_fraction": 0.1,
            "prune_rates": f"features.*={conv_rate}",
        },
    }


PRESETS: dict[str, dict] = {
    "mnist1d_mlp": {},  # the defaults
    "lenet_mnist": {
        "dataset": {"dataset": "mnist", "batch_size": 128},
        "model": {"model": "lenet_300_100"},
        "training": {"optimizer": "sgd", "lr": 0.1, "steps": "40ep"},
        "pruning": {"prune_fraction": 0.2, "prune_output_fraction": 0.1},
    },
    "conv2_cifar10": _conv("conv2", 2e-4, "20000it", 0.1),
    "conv4_cifar10": _conv("conv4", 3e-4, "25000it", 0.1),
    "conv6_cifar10": _conv("conv6", 3e-4, "30000it", 0.15),
    "resnet20_cifar10": {
        "dataset": {"dataset": "cifar10", "batch_size": 128},
        "model": {"model": "resnet20"},
        "training": _CIFAR_SGD,
        "pruning": {"prune_method": "global_magnitude", "rewind": "step", "rewind_step": "500it"},
    },
    "vgg16_cifar10": {
        "dataset": {"dataset": "cifar10", "batch_size": 128},
        "model": {"model": "vgg16"},
        "training": _CIFAR_SGD,
        "pruning": {"prune_method": "global_magnitude", "rewind": "step", "rewind_step": "1000it"},
    },
    "resnet50_imagenet": {
        "dataset": {"dataset": "imagenet", "batch_size": 1024},
        "model": {"model": "resnet50"},
        "training": {
            "optimizer": "sgd",
            "lr": 0.4,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "steps": "90ep",
            "schedule": "step",
            "milestones": "30ep,60ep,80ep",
            "warmup": "5ep",
        },
        "pruning": {"prune_method": "global_magnitude", "rewind": "step", "rewind_step": "5ep"},
    },
}


def apply_preset(name: str, overrides: dict | None = None) -> Experiment:
    """The experiment of preset `name`, then `overrides` ({section: {field: value}}) on top.

    Example:
        >>> apply_preset("mnist1d_mlp", {"training": {"lr": 0.01}}).training.lr
        0.01
    """
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown {name!r}; choose one of {sorted(PRESETS)}")
    sections = {}
    for section, cls in SECTIONS.items():
        values = {**PRESETS[name].get(section, {}), **(overrides or {}).get(section, {})}
        sections[section] = dataclasses.replace(cls(), **values)
    return Experiment(**sections)
