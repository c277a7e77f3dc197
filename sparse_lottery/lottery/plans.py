"""Execution forms chosen once per mask. `--execution auto` times each layer's dense and sparse
forms (`sparse_lottery.set_execution`), so its choice can differ between two trainings of the
same mask when the machine's load differs, and with it the numerics (the forms sum in different
orders). Under a root the first training of a mask measures and records the plan in
`<root>/execution_plans/`; every later training with the same masks, batch shape, optimiser,
device and thread count (a rerun after a kill, an analysis's copies, branches of a level) reuses
it, so their results agree. Delete the folder to measure again (e.g. after an upgrade of
sparse_lottery or of the machine).
"""

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..execution import set_execution
from ..model import _masked_layers
from . import checkpoint

FOLDER = "execution_plans"


def plan_key(model: nn.Module, example: torch.Tensor, optimizer: str) -> str:
    """24 hex digits naming the masks (layer names and bits) of `model`'s masked layers and
    what else a measured plan depends on."""
    masks = checkpoint.tensors_digest(
        {name: layer.weight_mask_packed for name, layer in _masked_layers(model)}
    )
    context = (masks, tuple(example.shape), str(example.dtype), example.device.type, optimizer,
               torch.get_num_threads())  # fmt: skip
    return hashlib.sha256(repr(context).encode()).hexdigest()[:24]


def choose(
    model: nn.Module, mode: str, example: torch.Tensor, optimizer: str, root: str | Path
) -> dict:
    """`set_execution(model, mode, example=..., optimizer=...)`, with an 'auto' plan read from
    `root`'s record for these masks when there is one, and recorded there when measured."""
    if mode != "auto":
        return set_execution(model, mode, example=example, optimizer=optimizer)
    path = Path(root) / FOLDER / f"{plan_key(model, example, optimizer)}.json"
    if path.exists():
        return set_execution(model, checkpoint.read_json(path))
    plan = set_execution(model, "auto", example=example, optimizer=optimizer)
    checkpoint.atomic_write_json(path, plan)
    return plan
