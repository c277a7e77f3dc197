"""The host half of the Triton radix select (kernels/selection.py): the per-tensor table and the
block list every launch walks, bucket picking from the histograms read back, and k per group.

Table: one int64 row of `Field` per tensor (addresses are data_ptr()s; the kernels cast them to
typed pointers). Blocks: `BLOCK` units of one tensor, in position order (tensor, then unit); a
unit is one byte of a packed mask (8 weights of a row), else 8 consecutive weights.
"""

import contextlib
import enum

import torch

from ._config import INTERPRET

BLOCK = 64 if INTERPRET else 512  # units per program
_MASK64 = (1 << 64) - 1


class Field(enum.IntEnum):
    """Columns of the table (the kernels index them as literals: table + t * 11 + field)."""

    WEIGHT = 0  # weight address (magnitude keys)
    MASK = 1  # mask address, 0 without a mask
    OUT = 2  # output mask address
    MASK_KIND = 3  # 0 none, 1 bool, 2 packed
    DTYPE = 4  # 0 float32, 1 bfloat16, 2 float16
    COLS = 5  # columns of the GEMM view (random keys of packed masks: 8 * bytes per row)
    ROW_BYTES = 6  # packed: bytes per row
    NUMEL = 7
    UNITS = 8  # packed: rows * ROW_BYTES, else ceil(NUMEL / 8)
    GROUP = 9  # 0 for the global scope, the tensor index for layerwise
    STREAM = 10  # random_stream(seed, tensor index) as int64 bits


FIELDS = len(Field)
DTYPE_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def row(**fields: int) -> list[int]:
    """A table row from lower-case Field names (unnamed fields are 0)."""
    out = [0] * FIELDS
    for name, value in fields.items():
        out[Field[name.upper()]] = int(value)
    return out


class Pool:
    """The table and block list of one call on `device`; `alive` holds the tensors whose
    addresses the table holds."""

    def __init__(self, rows: list[list[int]], layerwise: bool, device: torch.device, alive):
        self.device, self.alive = device, alive
        self.tensors = len(rows)
        self.groups = len(rows) if layerwise else 1
        self.table = torch.tensor(rows, dtype=torch.int64).reshape(-1, FIELDS).to(device)
        units = torch.tensor([r[Field.UNITS] for r in rows], dtype=torch.int64)
        blocks = (units + BLOCK - 1) // BLOCK
        first = torch.cumsum(blocks, 0) - blocks  # first block of each tensor
        tensor = torch.repeat_interleave(torch.arange(len(rows)), blocks)
        self.blocks = int(blocks.sum())
        start = (torch.arange(self.blocks) - first[tensor]) * BLOCK
        self.block_tensor = tensor.to(torch.int32).to(device)
        self.block_start = start.to(device)
        # First block of each block's group, where tie ranks start from 0.
        group_first = first[tensor] if layerwise else torch.zeros_like(start)
        self.block_group_first = group_first.to(device)

    def launch(self, kernel, *args, **meta) -> None:
        """kernel[(blocks,)](table, block_tensor, block_start, *args, BLOCK=BLOCK, **meta)."""
        if not self.blocks:
            return
        cuda = self.device.type == "cuda"
        with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            kernel[(self.blocks,)](
                self.table, self.block_tensor, self.block_start, *args, BLOCK=BLOCK, **meta
            )


def pick(hist: torch.Tensor, need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (row of hist), the bin holding the need-th smallest key (1-based; bin 0 where
    need is 0) and that key's rank within the bin."""
    cum = hist.cumsum(1)
    digit = (cum < need[:, None]).sum(1).clamp(max=hist.shape[1] - 1)
    below = (cum - hist).gather(1, digit[:, None])[:, 0]
    return digit, need - below


def group_ks(survivors, nan_count, amounts, counts: bool, layerwise: bool) -> list[int]:
    """k per group from its surviving count; raises on a NaN weight (lowest tensor first), then
    on k > survivors, with the reference's messages."""
    nan_count = nan_count.cpu()
    if bool((nan_count > 0).any()):
        first = int(torch.nonzero(nan_count > 0)[0, 0])
        raise ValueError(f"weights[{first}]: contains NaN, which has no magnitude to rank")
    ks = []
    for g, (n, amount) in enumerate(zip(survivors, amounts)):
        k = int(amount) if counts else round(amount * n)  # round half to even, as torch prune
        if k > n:
            where = f"tensor {g}" if layerwise else "the pool"
            raise ValueError(f"amounts: {k} to remove exceeds the {n} surviving weights of {where}")
        ks.append(k)
    return ks


def random_stream(seed: int, index: int) -> int:
    """random_stream(seed, tensor_index) of csrc/selection.h, as int64 bits."""
    z = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z - (1 << 64) if z >> 63 else z
