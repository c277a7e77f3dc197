"""`torch.distributed` for training inside a level: launched by `torchrun`, NCCL on GPUs, gloo
on CPUs. Every rank computes the masks itself (they are checked equal); only rank 0 writes.

Example:
    $ torchrun --nproc-per-node 2 -m sparse_lottery imp --levels 3
"""

import os

import torch
import torch.distributed as dist

from . import checkpoint


def setup(device: torch.device) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_main(obj):
    """Rank 0's `obj` on every rank (a decision taken by rank 0's clock or measurements)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_device(requested: str | None) -> torch.device:
    """The device of this process: `requested`, else cuda:LOCAL_RANK if a GPU is visible,
    else cpu."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_same(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise if `tensors` differ between ranks (compared by a digest of their bytes)."""
    if not dist.is_initialized():
        return
    mine = checkpoint.tensors_digest(tensors)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if len(set(everyone)) != 1:
        raise RuntimeError(f"{what} differ between ranks: digests {everyone}")
