"""`SparseLayout`: the CSR and CSC index of a mask's surviving entries, the layout of the
sparse-execution ops (schemas in `sparse_lottery._library`). Kept apart from
`sparse_lottery.sparse` so that the reference kernels can use it too.
"""

from typing import NamedTuple

import torch

INDEX_LIMIT = 2**31 - 1  # int32 indices


class SparseLayout(NamedTuple):
    """The CSR and CSC index of a mask's surviving entries (see `sparse_lottery._library`).

    Build it with `from_mask`; `values_of(weight)` gathers a dense weight's stored values in the
    layout's (CSR) order and `dense(values)` scatters them back.
    """

    row_offsets: torch.Tensor  # int64 [N + 1]
    col_indices: torch.Tensor  # int32 [nnz]
    col_offsets: torch.Tensor  # int64 [K + 1]
    row_indices: torch.Tensor  # int32 [nnz]
    csr_positions: torch.Tensor  # int32 [nnz]: CSC entry j is values[csr_positions[j]]

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "SparseLayout":
        """The layout of a 2-D bool mask (True = kept), on the mask's device."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            got = (
                f"{mask.dtype} of shape {list(mask.shape)}"
                if isinstance(mask, torch.Tensor)
                else type(mask).__name__
            )
            raise TypeError(f"mask: expected a 2-D bool tensor (out, in), got {got}")
        n, k = mask.shape
        if max(n, k, mask.count_nonzero().item()) > INDEX_LIMIT:
            raise ValueError(
                f"mask: at most {INDEX_LIMIT} rows, columns and survivors, got {n}×{k}"
            )
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: CSR order
        row_offsets = _offsets(rows, n)
        by_col = torch.argsort(cols * n + rows)  # column-major order of the same entries
        return cls(
            row_offsets=row_offsets,
            col_indices=cols.to(torch.int32),
            col_offsets=_offsets(cols[by_col], k),
            row_indices=rows[by_col].to(torch.int32),
            csr_positions=by_col.to(torch.int32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_offsets.numel() - 1, self.col_offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.col_indices.numel()

    def rows(self) -> torch.Tensor:
        """The row of every stored entry (CSR order), int64."""
        counts = self.row_offsets[1:] - self.row_offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)

    def mask(self) -> torch.Tensor:
        """The bool mask this layout was built from."""
        out = torch.zeros(self.shape, dtype=torch.bool, device=self.row_offsets.device)
        out[self.rows(), self.col_indices.long()] = True
        return out

    def values_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored entries of a dense weight of this shape, in CSR order (a new tensor)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"weight: expected shape {list(self.shape)} (the layout's), "
                f"got {list(weight.shape)}"
            )
        return weight.detach()[self.rows(), self.col_indices.long()].clone()

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """The dense weight (zeros where pruned) holding `values`."""
        out = values.new_zeros(self.shape)
        out[self.rows(), self.col_indices.long()] = values
        return out

    def to(self, device) -> "SparseLayout":
        return SparseLayout(*(t.to(device) for t in self))


def _offsets(sorted_index: torch.Tensor, length: int) -> torch.Tensor:
    counts = torch.bincount(sorted_index, minlength=length)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])
