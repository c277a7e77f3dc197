"""Quick start: one lottery-ticket round on MNIST-1D, in seconds on a CPU.

Train a dense MLP (40→500→500→10), prune it one-shot by global magnitude, rewind the survivors
to their initial weights (the lottery ticket) and train the sparse network; report both test
accuracies and the density. MNIST-1D is generated locally (package `mnist1d`), never
downloaded, and cached in `data_dir`.

Example:
    >>> from sparse_lottery.quickstart import QuickstartConfig, run_quickstart
    >>> result = run_quickstart(QuickstartConfig(epochs=1, data_dir="/tmp/data"))  # doctest: +SKIP
    >>> sorted(result)  # doctest: +SKIP
    ['dense_accuracy', 'density', 'seconds', 'sparse_accuracy']
"""

import argparse
import copy
import dataclasses
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from .data.local import MNIST1D_FILE, load_mnist1d
from .model import density, sparsify
from .pruning import prune

log = logging.getLogger(__name__)

DATA_FILE = MNIST1D_FILE  # the cache file name, kept for compatibility


@dataclasses.dataclass
class QuickstartConfig:
    """Settings of the quick start; the CLI flags are the fields with a `help`."""

    epochs: int = dataclasses.field(default=20, metadata={"help": "epochs per training run"})
    sparsity: float = dataclasses.field(
        default=0.9, metadata={"help": "fraction of masked weights pruned (one shot)"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of init and data order"})
    data_dir: str = dataclasses.field(
        default="data", metadata={"help": "where MNIST-1D is cached after generation"}
    )
    device: str | None = dataclasses.field(
        default=None, metadata={"help": "torch device (default: cuda if available, else cpu)"}
    )
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = dataclasses.field(default=128, metadata={"help": "minibatch size"})
    threads: int = dataclasses.field(
        default=1,
        metadata={
            "help": "CPU threads for torch while it runs (0: leave torch's setting); one "
            "is fastest for this small MLP, and far faster on a busy machine"
        },
    )
    hidden: int = 500


# --------------------------------------------------------------------------- model and training
def make_mlp(hidden: int = 500, in_features: int = 40, classes: int = 10) -> nn.Module:
    """The quick start's MLP: in_features → hidden → hidden → classes, ReLU (plain torch)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on (x, y)."""
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def train(
    model: nn.Module, data: dict[str, torch.Tensor], cfg: QuickstartConfig, tag: str
) -> float:
    """Train with Adam for `cfg.epochs`, logging one line per epoch; returns test accuracy.

    The data order depends only on `cfg.seed`, so the dense and the sparse run see the same
    minibatches."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = data["x"], data["y"]
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=gen).to(x.device)
        total_loss = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.detach() * len(idx)
        test_acc = accuracy(model, data["x_test"], data["y_test"])
        log.info(
            "%s epoch %d/%d  loss %.4f  test acc %.4f  (%.2f s)",
            tag,
            epoch,
            cfg.epochs,
            total_loss.item() / len(x),
            test_acc,
            time.perf_counter() - start,
        )
    return accuracy(model, data["x_test"], data["y_test"])


def run_quickstart(cfg: QuickstartConfig | None = None) -> dict[str, float]:
    """One lottery-ticket round (see the module docstring); returns dense_accuracy,
    sparse_accuracy, density and seconds. Deterministic for a given `cfg.seed`, device
    and thread count.

    Example:
        >>> run_quickstart(QuickstartConfig(epochs=1, sparsity=0.5))["density"]  # doctest: +SKIP
        0.5
    """
    cfg = cfg or QuickstartConfig()
    if not 0.0 <= cfg.sparsity < 1.0:
        raise ValueError(f"sparsity: expected a fraction in [0, 1), got {cfg.sparsity}")
    start = time.perf_counter()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        result = _lottery_round(cfg, device)
    finally:
        torch.set_num_threads(threads)
    return {**result, "seconds": time.perf_counter() - start}


def _lottery_round(cfg: QuickstartConfig, device: torch.device) -> dict[str, float]:
    data = {k: v.to(device) for k, v in load_mnist1d(cfg.data_dir).items()}
    torch.manual_seed(cfg.seed)
    model = sparsify(make_mlp(cfg.hidden, data["x"].shape[1])).to(device)
    theta0 = copy.deepcopy(dict(model.named_parameters()))

    dense_acc = train(model, data, cfg, "dense")
    prune(model, cfg.sparsity)
    with torch.no_grad():  # rewind the survivors (and the pruned, unused weights) to θ0
        for name, param in model.named_parameters():
            param.copy_(theta0[name])
    sparse_acc = train(model, data, cfg, "sparse")
    return {"dense_accuracy": dense_acc, "sparse_accuracy": sparse_acc, "density": density(model)}


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per `QuickstartConfig` field that has a help text (`--data-dir`, ...)."""
    for field in dataclasses.fields(QuickstartConfig):
        if "help" not in field.metadata:
            continue
        kind = str if field.name in ("device", "data_dir") else field.type
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=kind,
            default=field.default,
            help=field.metadata["help"]
            + ("" if field.default is None else " (default: %(default)s)"),
        )


def main(args: argparse.Namespace) -> int:
    """Run the quick start from parsed CLI arguments and print the summary."""
    names = {f.name for f in dataclasses.fields(QuickstartConfig)}
    cfg = QuickstartConfig(**{k: v for k, v in vars(args).items() if k in names})
    result = run_quickstart(cfg)
    print(
        f"dense  test accuracy {result['dense_accuracy']:.4f}  (density 1.0000)\n"
        f"sparse test accuracy {result['sparse_accuracy']:.4f}  (density {result['density']:.4f},"
        f" lottery ticket rewound to init)\n"
        f"total {result['seconds']:.1f} s"
    )
    return 0


__all__ = ["QuickstartConfig", "load_mnist1d", "make_mlp", "run_quickstart", "train"]
