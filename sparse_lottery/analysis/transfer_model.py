"""The pieces of a ticket transfer: the target task, and the model that starts training on it.

A transfer model is the source experiment's architecture with a new classifier head sized for
the target's classes (dense: an all-ones mask, initialised from a seed shared by every
configuration, so they differ only in the body), and a body taken from the source run:

- mask: a level's IMP mask ("ticket"), a random mask with the level's per-layer kept counts
  ("random", the driver's `random_prune` masks with seed 0), or all ones (level 0: "dense");
- weights ("reset"): "late" — the source-trained weights (the level's own for a ticket, the
  dense level 0's for a random mask), "init" — the source run's θ0 (`init.ckpt`), or "fresh" —
  a new initialisation; the pruned entries are set to zero.

With `freeze="frozen"` the body's parameters do not train (`requires_grad=False`) and its norm
layers stay in eval mode (their running statistics are the source's); "finetune" trains every
surviving weight, the masks fixed (the masked optimisers never revive a pruned weight).

Target data whose samples have another shape than the source's are converted when that is an
image resize: `as_input_shape` repeats a grey channel to the source's channels and resizes
bilinearly (FashionMNIST (1, 28, 28) → (3, 32, 32) for a CIFAR-10 Conv/ResNet/VGG). MLPs
flatten, so they need the same number of features (MNIST-1D → its shifted variant; MNIST ↔
FashionMNIST).

Example:
    >>> from sparse_lottery.data import ArrayData
    >>> grey = ArrayData(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), 2)
    >>> as_input_shape(grey, (3, 32, 32), "target").batch(torch.arange(2), "cpu")[0].shape
    torch.Size([2, 3, 32, 32])
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as datasets
from .. import models
from ..lottery.hparams import Experiment, TrainingHparams, parse_duration
from ..lottery.runner import Run
from ..lottery.trainer import Data
from ..model import load_masks, sparsify

RESETS = ("late", "init", "fresh")
FREEZES = ("frozen", "finetune")
KINDS = ("ticket", "random", "dense")
_HEAD_SALT, _FRESH_SALT = 0x4EAD, 0xF2E5


class ShapedData:
    """`data` (images) with every sample converted to `input_shape` (channels, height, width):
    a single channel repeated to the target's channels, then a bilinear resize.

    Example:
        >>> from sparse_lottery.data import ArrayData
        >>> data = ShapedData(ArrayData(torch.ones(3, 1, 4, 4), torch.zeros(3), 1), (3, 8, 8))
        >>> len(data), data.input_shape, data.batch(torch.tensor([0]), "cpu")[0].shape
        (3, (3, 8, 8), torch.Size([1, 3, 8, 8]))
    """

    def __init__(self, data, input_shape: tuple[int, int, int]) -> None:
        self.data, self.input_shape, self.num_classes = data, tuple(input_shape), data.num_classes

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, index: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.batch(index, device)
        channels, height, width = self.input_shape
        if tuple(x.shape[2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1).contiguous()
        return x, y


def as_input_shape(data, input_shape: tuple[int, ...], what: str = "target"):
    """`data` itself when its samples have `input_shape`, a `ShapedData` when they are images
    it can convert (1 or the same number of channels), else ValueError naming `what`.

    Example:
        >>> from sparse_lottery.data import ArrayData
        >>> as_input_shape(ArrayData(torch.zeros(2, 5), torch.zeros(2), 1), (40,))
        Traceback (most recent call last):
        ...
        ValueError: target: expected samples of shape (40,) (the source model's input) or images convertible to it, got (5,)
    """  # noqa: E501
    have, want = tuple(data.input_shape), tuple(input_shape)
    if have == want:
        return data
    if len(have) == len(want) == 3 and have[0] in (1, want[0]):
        return ShapedData(data, want)
    raise ValueError(
        f"{what}: expected samples of shape {want} (the source model's input) or images "
        f"convertible to it, got {have}"
    )


class Target:
    """The target task of a transfer from `run`: its experiment (the source's, with dataset
    `dataset` and `training`, default the source's training), data (converted to the source's
    input shape), iterations and folder `<replicate>/transfer_<dataset>_<hash>/`.

    Example:
        >>> target = Target(run, "mnist1d_shifted")  # doctest: +SKIP
        >>> target.classes, target.total, target.folder.name  # doctest: +SKIP
        (10, 1500, 'transfer_mnist1d_shifted_3f1c...')
    """

    def __init__(self, run: Run, dataset: str, training: TrainingHparams | None = None) -> None:
        if dataset not in datasets.DATASETS:
            raise ValueError(f"target: expected a dataset in {sorted(datasets.DATASETS)}, got "
                             f"{dataset!r}")  # fmt: skip
        self.run, self.dataset = run, dataset
        self.exp = dataclasses.replace(
            run.exp,
            dataset=dataclasses.replace(run.exp.dataset, dataset=dataset),
            training=training or run.exp.training,
        ).validate()
        self.data = Data(self.exp, run.runtime)
        shape = run.data.train.input_shape
        self.data.train = as_input_shape(self.data.train, shape)
        self.data.test = as_input_shape(self.data.test, shape)
        self.classes = self.data.train.num_classes
        self.total = parse_duration(self.exp.training.steps, self.data.steps_per_epoch, "--steps")
        trained = Experiment(training=self.exp.training).non_default().get("training", {})
        tag = Experiment().hash({"transfer": dataset, "training": trained})
        self.folder = run.dir / f"transfer_{dataset}_{tag}"


def head_name(run: Run) -> str:
    """The module name of the source model's classifier (`MODELS[...].output_layer`)."""
    return models.MODELS[run.exp.model.model].output_layer


def source_masks(run: Run, level: int, kind: str) -> dict[str, torch.Tensor]:
    """The body masks a transfer keeps (the head's removed): the level's ("ticket"), a random
    mask with the level's per-layer kept counts ("random"), or level 0's all ones ("dense")."""
    reference = run.build(0)
    if kind == "dense":
        level = 0
    level_masks = run.level_masks(level, reference)
    if kind == "random":
        level_masks = run._random_masks(reference, level_masks, 0, level)
    head = head_name(run) + "."
    return {k: m.clone() for k, m in level_masks.items() if not k.startswith(head)}


def source_weights(run: Run, level: int, kind: str, reset: str) -> dict[str, torch.Tensor]:
    """The source state the body starts from (see the module doc)."""
    reference = run.build(0)
    if reset == "init":
        return run.init_weights(reference)
    if reset == "fresh":
        return run.build(_FRESH_SALT + run.seeds["init"]).state_dict()
    trained = 0 if kind in ("random", "dense") else level
    run.level(trained)
    return run.weights(run.level_dir(trained) / "final.ckpt", "final", reference)


def transfer_model(run: Run, target: Target, level: int, kind: str, reset: str,
                   freeze: str) -> nn.Module:  # fmt: skip
    """The model that trains on `target`: a new dense head for its classes, the body's masks
    (`source_masks`) and start weights (`source_weights`, pruned entries zeroed), frozen or
    not; on the CPU.

    Example:
        >>> model = transfer_model(run, target, 2, "ticket", "late", "frozen")  # doctest: +SKIP
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("reset", reset, RESETS)
    _check_choice("freeze", freeze, FREEZES)
    body_masks = source_masks(run, level, kind)
    state = source_weights(run, level, kind, reset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_HEAD_SALT + run.seeds["init"])
        model = sparsify(models.get_model(run.exp.model.model, target.classes,
                                          run.data.train.input_shape))  # fmt: skip
    head = head_name(run) + "."
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    for key, mask in body_masks.items():
        body[key] = torch.where(mask, body[key], torch.zeros((), dtype=body[key].dtype))
    model.load_state_dict(body, strict=False)
    load_masks(model, body_masks, strict=False)  # the new head keeps its all-ones mask
    if freeze == "frozen":
        freeze_body(model, head_name(run))
    return model


def freeze_body(model: nn.Module, head: str) -> None:
    """Stop training every parameter outside module `head` and keep its norm layers in eval
    mode (running statistics neither used from the batch nor updated), in place.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> freeze_body(model, "1")
        >>> [p.requires_grad for p in model.parameters()]
        [False, False, True, True]
    """
    for name, module in model.named_modules():
        if name == head or name.startswith(head + "."):
            continue
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
        if getattr(module, "track_running_stats", False):
            module.register_forward_pre_hook(_stay_in_eval)


def _stay_in_eval(module: nn.Module, _inputs) -> None:
    module.training = False


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what}: expected one of {list(choices)}, got {value!r}")


__all__ = [
    "RESETS",
    "FREEZES",
    "KINDS",
    "ShapedData",
    "as_input_shape",
    "Target",
    "head_name",
    "source_masks",
    "source_weights",
    "transfer_model",
    "freeze_body",
]
