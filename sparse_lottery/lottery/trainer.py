"""Training of one segment (a level, or a branch) of an experiment, resumable at any point.

The data order is a pure function of (data seed, epoch), the augmentation of (augment seed,
iteration) and the learning rate of the iteration, so the state to resume from is just the
model, the optimiser and the metrics so far: `checkpoint.ckpt` in the segment's folder,
rewritten atomically every `--checkpoint-every`. A run killed at any point and restarted
continues from it and ends bitwise equal (on the CPU) to an uninterrupted run.

Within a segment the masks are fixed, so layers run in the execution form `set_execution`
picks ("auto": measured per layer; the plan is saved in `execution.json` so a resumed run uses
the same forms), and SGD/AdamW are the masked optimisers (`sparse_lottery.optim`).
"""

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as datasets
from .. import optim as masked_optim
from ..execution import set_execution
from ..model import _masked_layers, _param_name, density
from ..nn.sparse import SparseConv2d, _SparseWeight
from ..ops import apply_mask
from . import checkpoint, distributed, plans
from .hparams import Experiment, _choice, parse_duration
from .progress import Progress
from .schedule import learning_rate

log = logging.getLogger("sparse_lottery")

_DATA_SALT, _AUGMENT_SALT = 0x5EED_0DA7A, 0x5EED_A116


@dataclass
class Runtime:
    """Options that do not change results (so they are not hashed)."""

    root: str = field(default="runs", metadata={"help": "folder of all experiments"})
    data_dir: str = field(default="data", metadata={"help": "where datasets are looked for"})
    download: bool = field(default=False, metadata={"help": "download missing datasets"})
    device: str = field(default="", metadata={"help": "torch device; '' for cuda if any, else cpu"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: torch's default)"})
    eval_every: str = field(default="1ep", metadata={"help": "evaluate every '<n>it'/'<n>ep'"})
    checkpoint_every: str = field(
        default="60s",
        metadata={"help": "write the resumable checkpoint every '<n>s', '<n>it' or '<n>ep'"},
    )
    execution: str = field(
        default="auto", metadata={"help": "layer execution: auto, dense or sparse"}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 autocast on GPU), fp32 or bf16"}
    )
    channels_last: str = field(
        default="auto",
        metadata={"help": "auto (for models with 2-D convolutions: on the GPU, and on the CPU "
                  "while at most half of them run sparse), on or off: the model's weights and "
                  "input batches in channels-last memory format"},
    )  # fmt: skip
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    progress: bool = field(default=True, metadata={"help": "show progress"})
    tensorboard: bool = field(
        default=False,
        metadata={"help": "also write the metrics as TensorBoard events in each level's "
                  "'tensorboard' folder (needs the tensorboard package)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_device(self.device)
        _choice("--execution", self.execution, ("auto", "dense", "sparse"))
        _choice("--precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("--channels-last", self.channels_last, ("auto", "on", "off"))
        parse_duration(self.eval_every, 1, "--eval-every")
        _checkpoint_cadence(self.checkpoint_every, 1)


def _check_device(name: str) -> None:
    """--device names a device this process can use ('' picks one)."""
    if not name:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device: expected a torch device ('cpu', 'cuda', 'cuda:1'), got {name!r}"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count or not count:
            raise ValueError(f"--device: {name!r} asked for, but this process sees {count} "
                             "CUDA device(s); use --device cpu")  # fmt: skip


@dataclass
class Segment:
    """Iterations [start, end) of a `total`-iteration schedule, written under `directory`."""

    directory: Path
    tag: str  # experiment hash the checkpoints must carry
    experiment: Experiment
    seeds: dict
    start: int
    end: int
    total: int
    fixed_lr: float | None = None  # fine-tuning: hold this learning rate
    rewind_save: tuple[int, Path] | None = None  # (k, path): save the weights at iteration k


class Data:
    """Train/test data of an experiment with its iteration → minibatch mapping."""

    def __init__(self, exp: Experiment, runtime: Runtime) -> None:
        self.train, self.test = datasets.load_dataset(
            exp.dataset.dataset, runtime.data_dir, runtime.download
        )
        self.batch_size = exp.dataset.batch_size
        if self.batch_size > len(self.train):
            raise ValueError(
                f"--batch-size: {self.batch_size} is larger than the training set "
                f"({len(self.train)} examples)"
            )
        self.steps_per_epoch = len(self.train) // self.batch_size  # the last partial one dropped
        name = exp.dataset.augmentation
        default = datasets.DATASETS[exp.dataset.dataset].augmentation
        self.augmentation = default if name == "default" else None if name == "none" else name
        self._order: tuple[int, int, torch.Tensor] | None = None

    def indices(self, step: int, data_seed: int) -> torch.Tensor:
        """Example indices of iteration `step` (all ranks together)."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[:2] != (data_seed, epoch):
            gen = torch.Generator().manual_seed(_DATA_SALT + 1_000_003 * data_seed + epoch)
            self._order = (data_seed, epoch, torch.randperm(len(self.train), generator=gen))
        return self._order[2][b * self.batch_size : (b + 1) * self.batch_size]

    def minibatch(self, step: int, seeds: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of iteration `step` for this rank, augmented, on `device`."""
        rank, size = distributed.world()
        index = self.indices(step, seeds["data"])[rank::size]
        x, y = self.train.batch(index, device)
        if self.augmentation:
            gen = torch.Generator().manual_seed(_AUGMENT_SALT + 1_000_003 * seeds["augment"] + step)
            x = datasets.augment(self.augmentation, x, gen)
        return x, y


def make_optimizer(model: nn.Module, exp: Experiment) -> torch.optim.Optimizer:
    """The experiment's optimiser; SGD and AdamW (and Adam without weight decay, which is AdamW
    with none) are the masked ones, updating surviving weights only."""
    t = exp.training
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        return masked_optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                                weight_decay=t.weight_decay)  # fmt: skip
    if t.optimizer == "adamw" or (t.optimizer == "adam" and t.weight_decay == 0):
        return masked_optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def eval_chunk(device, input_shape: tuple[int, ...] = ()) -> int:
    """Examples per forward pass of `evaluate`: 1000 on a GPU. On the CPU, 64 images (samples
    of shape (C, H, W)), whose activations then stay in the cache, and 256 other samples, for
    which fewer, larger products pay. Measured on the 2-core machine, 1000 synthetic CIFAR
    images, chunks of 64 / 128 / 256, min of 4 rounds (s): ResNet-20 1.03 / 1.54 / 1.70 (95%
    sparse, auto forms: 0.78 / 1.06 / 1.37), VGG-16 6.2 / 5.6 / 7.2 (95% sparse: 4.2 / 3.9 /
    4.6), Conv-2 1.43 / 1.81 / 1.77, MobileNet-v2 8.9 / 11.0 / 15.4; the MNIST-1D MLP's 1000
    samples 9.9 / 6.4 / 5.4 ms."""
    if torch.device(device).type == "cuda":
        return 1000
    return 64 if len(input_shape) == 3 else 256


@torch.no_grad()
def evaluate(
    model: nn.Module, data, device, autocast, memory_format=torch.contiguous_format
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over all of `data`, in eval mode, in chunks of
    `eval_chunk(device, data.input_shape)` examples, image batches in `memory_format`."""
    was_training = model.training
    model.eval()
    loss, correct, n = 0.0, 0, len(data)
    chunk = eval_chunk(device, tuple(getattr(data, "input_shape", ())))
    for start in range(0, n, chunk):
        x, y = data.batch(torch.arange(start, min(start + chunk, n)), device)
        with autocast():
            out = model(_formatted(x, memory_format)).float()
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(-1) == y).sum().item()
    model.train(was_training)
    return loss / max(n, 1), correct / max(n, 1)


def train_segment(model: nn.Module, seg: Segment, data: Data, runtime: Runtime, device) -> dict:
    """Train `model` (masked layers, start weights and masks already loaded, on `device`) over
    the segment, resuming from its checkpoint if one exists; returns the summary (also written
    as `summary.json`). The model ends in the dense-fused form with the trained weights."""
    exp, directory = seg.experiment, seg.directory
    main = distributed.is_main()
    signature = checkpoint.model_signature(model)
    memory_format = _memory_format(runtime, model, device)
    model.to(memory_format=memory_format)
    plan_path = directory / "execution.json"
    ckpt_path = directory / "checkpoint.ckpt"
    resume = ckpt_path.exists()
    if main:  # the resolved hyperparameters of this folder (a branch's differ from the run's)
        checkpoint.atomic_write_json(directory / "config.json", {
            "hash": seg.tag, "experiment": exp.to_dict(), "seeds": seg.seeds,
            "iterations": [seg.start, seg.end], "total": seg.total, "fixed_lr": seg.fixed_lr,
        })  # fmt: skip
    if resume and plan_path.exists():
        plan = checkpoint.read_json(plan_path)
        set_execution(model, plan)
    else:  # rank 0 measures and decides; every rank runs the same forms
        plan = None
        if main:
            x0, _ = data.minibatch(seg.start, seg.seeds, device)
            optimizer = "sgd" if exp.training.optimizer == "sgd" else "adamw"
            example = _formatted(x0, memory_format)
            plan = plans.choose(model, runtime.execution, example, optimizer, runtime.root)
        plan = distributed.from_main(plan)
        set_execution(model, plan)
        if main:
            checkpoint.atomic_write_json(plan_path, plan)
    memory_format = _memory_format(runtime, model, device, planned=True)
    model.to(memory_format=memory_format)
    opt = make_optimizer(model, exp)
    step, metrics, loss_sum, loss_count, seconds = seg.start, [], 0.0, 0, 0.0
    if resume:
        state = checkpoint.load(ckpt_path, seg.tag, "resume", signature, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, metrics = state["step"], state["metrics"]
        loss_sum, loss_count, seconds = state["loss_sum"], state["loss_count"], state["seconds"]
        log.info("%s: resuming at iteration %d", directory, step)

    spe = data.steps_per_epoch
    eval_every = max(1, parse_duration(runtime.eval_every, spe, "--eval-every"))
    ckpt_seconds, ckpt_every = _checkpoint_cadence(runtime.checkpoint_every, spe)
    last_ckpt = time.perf_counter()
    autocast = _autocast(runtime, device)
    trainer = _ddp(model, runtime)
    bar = Progress(seg.end, str(directory.relative_to(runtime.root)), start=step,
                   enabled=runtime.progress and main)  # fmt: skip
    events = _event_writer(directory, step) if main and runtime.tensorboard else None
    if main:
        _reset_metrics(directory, metrics)
    model.train()
    t_start = time.perf_counter()
    while step < seg.end:
        if seg.rewind_save and step == seg.rewind_save[0] and main:
            _save_weights(seg.rewind_save[1], model, seg.tag, "rewind", step=step)
        lr = (
            seg.fixed_lr
            if seg.fixed_lr is not None
            else learning_rate(exp.training, step, seg.total, spe)
        )
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = data.minibatch(step, seg.seeds, device)
        with autocast():
            loss = F.cross_entropy(trainer(_formatted(x, memory_format)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_sum += loss.item()
        loss_count += 1
        bar.update(1, loss=loss_sum / loss_count, lr=lr)
        if step % eval_every == 0 or step == seg.end:
            test_loss, test_acc = evaluate(model, data.test, device, autocast, memory_format)
            metrics.append({"step": step, "epoch": step / spe, "lr": lr,
                            "train_loss": loss_sum / loss_count, "test_loss": test_loss,
                            "test_accuracy": test_acc,
                            "seconds": seconds + time.perf_counter() - t_start})  # fmt: skip
            loss_sum, loss_count = 0.0, 0
            if main:
                _append_metrics(directory, metrics[-1])
            if events is not None:
                for key, value in metrics[-1].items():
                    if key != "step":
                        events.add_scalar(key, value, step)
        due = (
            (step % ckpt_every == 0)
            if ckpt_every
            else (time.perf_counter() - last_ckpt >= ckpt_seconds)
        )
        if ckpt_seconds and distributed.world()[1] > 1:  # every rank must agree to checkpoint
            due = bool(distributed.from_main(due))
        if due and step < seg.end:
            last_ckpt = time.perf_counter()
            if main:
                checkpoint.save(ckpt_path, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "metrics": metrics, "loss_sum": loss_sum, "loss_count": loss_count,
                    "seconds": seconds + time.perf_counter() - t_start,
                }, experiment=seg.tag, kind="resume", model=signature)  # fmt: skip
            distributed.barrier()
    bar.close()
    if events is not None:
        events.close()
    seconds += time.perf_counter() - t_start
    set_execution(model, "dense")
    summary = summarise(model, metrics, seconds, plan, seg)
    if main:
        _save_weights(directory / "final.ckpt", model, seg.tag, "final", step=step)
        checkpoint.atomic_write_json(directory / "summary.json", summary)
        ckpt_path.unlink(missing_ok=True)
    distributed.barrier()
    return summary


def summarise(model: nn.Module, metrics: list, seconds: float, plan: dict, seg: Segment) -> dict:
    """A trained segment's `summary.json`: densities, final and best test accuracy, the
    early-stopping iteration (lowest test loss), training seconds, execution plan, settings."""
    best = min(metrics, key=lambda m: m["test_loss"]) if metrics else {}
    return {
        "density": density(model),
        "layer_density": {name: layer.density for name, layer in _masked_layers(model)},
        "test_accuracy": metrics[-1]["test_accuracy"] if metrics else math.nan,
        "test_loss": metrics[-1]["test_loss"] if metrics else math.nan,
        "best_test_accuracy": max((m["test_accuracy"] for m in metrics), default=math.nan),
        "early_stop_step": best.get("step"),
        "early_stop_accuracy": best.get("test_accuracy"),
        "seconds": seconds,
        "start_step": seg.start,
        "end_step": seg.end,
        "execution": plan,
        "experiment": seg.experiment.to_dict(),
    }


def _save_weights(path: Path, model: nn.Module, tag: str, kind: str, **meta) -> None:
    """The weights in the dense-fused form (what a new level loads), on the CPU, pruned weights
    stored as zeros: the sparse form keeps no pruned values, so this makes the file the same
    whichever form a layer trained in (the forms are chosen by timing)."""
    if any(isinstance(m, _SparseWeight) for m in model.modules()):
        model = copy.deepcopy(model)
        set_execution(model, "dense")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, layer in _masked_layers(model):
        key = _param_name(name)
        state[key] = apply_mask(state[key], layer.weight_mask_packed.cpu())
    checkpoint.save(path, state, experiment=tag, kind=kind,
                    model=checkpoint.model_signature(model), **meta)  # fmt: skip


METRICS_FILES = ("metrics.jsonl", "metrics.csv")


def _reset_metrics(directory: Path, metrics: list) -> None:
    """The metrics files as `metrics` (a resumed segment's, from its checkpoint; none at a fresh
    start), whatever a killed run had appended after its last checkpoint."""
    for name in METRICS_FILES:
        (directory / name).unlink(missing_ok=True)
    for entry in metrics:
        _append_metrics(directory, entry)


def _append_metrics(directory: Path, entry: dict) -> None:
    """One evaluation's metrics appended to metrics.jsonl and metrics.csv (its header first in a
    new file), not synced to the disk: the resumable checkpoint, which is synced, carries them
    too, and a resumed segment rewrites these files from it. (Rewriting both files whole at
    every evaluation cost 1.2 ms per evaluation on the CPU machine, ~1% of a small model's run.)"""
    with open(directory / METRICS_FILES[0], "a") as f:
        f.write(json.dumps(entry) + "\n")
    csv = directory / METRICS_FILES[1]
    header = "" if csv.exists() else ",".join(entry) + "\n"
    with open(csv, "a") as f:
        f.write(header + ",".join(str(v) for v in entry.values()) + "\n")


def _event_writer(directory: Path, step: int):
    """A TensorBoard writer of the segment's `tensorboard` folder that hides the events a killed
    run wrote at or after `step` (where a resumed segment starts again)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch raises it when the tensorboard package is missing
        raise ImportError(
            "--tensorboard: needs the tensorboard package (pip install tensorboard)"
        ) from error
    return SummaryWriter(str(directory / "tensorboard"), purge_step=step or None)


def _checkpoint_cadence(text: str, steps_per_epoch: int) -> tuple[float, int]:
    """(seconds, 0) for '<n>s', else (0, iterations)."""
    value = str(text).strip()
    if value.endswith("s") and value[:-1].strip().replace(".", "", 1).isdigit():
        return float(value[:-1]), 0
    try:
        return 0.0, max(1, parse_duration(value, steps_per_epoch))
    except ValueError:
        raise ValueError(
            f"--checkpoint-every: expected '<n>s', '<n>it' or '<n>ep' (e.g. '60s', '500it', "
            f"'1ep'), got {text!r}"
        ) from None


def _autocast(runtime: Runtime, device: torch.device):
    bf16 = runtime.precision == "bf16" or (runtime.precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _memory_format(
    runtime: Runtime, model: nn.Module, device, planned: bool = False
) -> torch.memory_format:
    """channels_last where `runtime.channels_last` asks for it, else contiguous. 'auto': models
    with 2-D convolutions on the GPU, where cuDNN's tensor-core convolutions want it; on the CPU
    once `set_execution` has `planned` the layers' forms (contiguous before, as the plan is
    measured so), while at most half of the convolutions run sparse. There oneDNN's dense
    convolutions gain from it and the sparse ones, which lay their planes out from NCHW, lose:
    ResNet-20 IMP levels (synthetic CIFAR, batch 64, 20 iterations, 2-core machine, order
    alternated) took 3.7-4.2 s against 4.3-4.8 s at densities 1 to 0.3 (up to 5 of 19
    convolutions sparse), alike at 10 of 19, and 3.9-4.3 s against 3.7-3.9 s with 13 or more.
    A dense-form training step (batch 64) of Conv-4 took 257 vs 284 ms, VGG-16 825 vs 907 ms,
    MobileNet-v2 642 vs 855 ms."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | SparseConv2d)]
    if runtime.channels_last != "auto" or not convs:
        return torch.channels_last if runtime.channels_last == "on" else torch.contiguous_format
    if torch.device(device).type != "cpu":
        return torch.channels_last
    mostly_dense = 2 * sum(isinstance(m, SparseConv2d) for m in convs) <= len(convs)
    return torch.channels_last if planned and mostly_dense else torch.contiguous_format


def _formatted(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A batch of images (4-D) in `memory_format`; other inputs as they are."""
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x


def _ddp(model: nn.Module, runtime: Runtime) -> nn.Module:
    trainer = model
    if runtime.compile:
        trainer = torch.compile(trainer)
    if distributed.world()[1] > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(trainer)
    return trainer


__all__ = ["Runtime", "Segment", "Data", "make_optimizer", "evaluate", "train_segment"]
