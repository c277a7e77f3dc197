"""`SparseLinear`: a linear layer that stores and trains only its surviving weights.

The sparse-execution form of `MaskedLinear` for tickets at high sparsity: its parameter `values`
holds the `nnz` surviving weights (CSR order) and its buffers the layout built once per mask
(`sparse_lottery.sparse.SparseLayout`), so the forward pass, both gradients and the optimiser
state cost `nnz`, not `out_features × in_features`. Convert with `sparse_lottery.set_execution`
(per layer, from a measured crossover) or `SparseLinear.from_masked` / `to_masked`.

Example:
    >>> import torch, sparse_lottery as sl
    >>> masked = sl.nn.MaskedLinear(40, 10)
    >>> masked.set_mask(torch.rand(10, 40) < 0.05)
    >>> sparse = sl.nn.SparseLinear.from_masked(masked)
    >>> x = torch.randn(3, 40)
    >>> torch.allclose(sparse(x), masked(x), atol=1e-6)
    True
    >>> sparse.values.numel() == int(masked.mask.sum())
    True
"""

import torch
from torch import nn

from ..sparse import SparseLayout, sparse_linear
from .masked import MaskedLinear

LAYOUT_BUFFERS = SparseLayout._fields


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W given by its surviving weights `values` and their layout.

    State-dict keys: `values`, `bias` and the layout's index tensors (`row_offsets`,
    `col_indices`, `col_offsets`, `row_indices`, `csr_positions`). A new mask (`set_mask`, the
    next IMP level) rebuilds the layout and replaces `values` by a new parameter: build the
    optimiser after it.

    Example:
        >>> layer = sparse_lottery.nn.SparseLinear(20, 30)
        >>> layer.set_mask(torch.rand(30, 20) < 0.1)
        >>> layer(torch.randn(4, 20)).shape
        torch.Size([4, 30])
    """

    row_offsets: torch.Tensor
    col_indices: torch.Tensor
    col_offsets: torch.Tensor
    row_indices: torch.Tensor
    csr_positions: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        """Weights as `nn.Linear` initialises them, every weight kept (use `set_mask`)."""
        super().__init__()
        dense = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.bias = dense.bias
        self._set(dense.weight.detach(), torch.ones_like(dense.weight, dtype=torch.bool))

    def _set(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        layout = SparseLayout.from_mask(mask.to(weight.device))
        for name, tensor in zip(LAYOUT_BUFFERS, layout, strict=True):
            self.register_buffer(name, tensor)
        self.values = nn.Parameter(layout.values_of(weight))

    # ------------------------------------------------------------------ views
    @property
    def layout(self) -> SparseLayout:
        return SparseLayout(*(getattr(self, name) for name in LAYOUT_BUFFERS))

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros where pruned), differentiable in `values`: a new tensor."""
        return self.layout.dense(self.values)

    @property
    def mask(self) -> torch.Tensor:
        """The bool mask (True = kept): a new tensor."""
        return self.layout.mask()

    @property
    def density(self) -> float:
        """Fraction of the weights kept."""
        total = self.in_features * self.out_features
        return self.values.numel() / total if total else 1.0

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Keep exactly the weights where `mask` (bool, (out, in)) is True; weights that were
        pruned and are kept again start at zero. Replaces `values` by a new parameter."""
        shape = (self.out_features, self.in_features)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a bool tensor (True = kept), got {got}")
        if tuple(mask.shape) != shape:
            raise ValueError(f"mask: expected shape {list(shape)}, got {list(mask.shape)}")
        self._set(self.weight, mask)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return sparse_linear(input, self.values, self.layout, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, nnz={self.values.numel()}"
        )

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_masked(cls, layer: MaskedLinear) -> "SparseLinear":
        """The sparse form of a `MaskedLinear`: a copy of its surviving weights, its `bias`
        Parameter shared, hooks and training flag kept."""
        if not isinstance(layer, MaskedLinear):
            raise TypeError(
                f"layer: expected a sparse_lottery.nn.MaskedLinear, got {type(layer).__name__}"
            )
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.training = layer.training
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            getattr(new, hooks).update(getattr(layer, hooks))
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.bias = layer.bias
        new._set(layer.weight.detach(), layer.mask)
        return new

    def to_masked(self) -> MaskedLinear:
        """The `MaskedLinear` form: dense weight (zeros where pruned) and the mask; the `bias`
        Parameter is shared."""
        out = MaskedLinear.__new__(MaskedLinear)
        nn.Module.__init__(out)
        out.training = self.training
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            getattr(out, hooks).update(getattr(self, hooks))
        out.in_features, out.out_features = self.in_features, self.out_features
        out.weight = nn.Parameter(self.weight.detach().clone())
        out.bias = self.bias
        out._init_mask()
        out.set_mask(self.mask)
        return out


__all__ = ["SparseLinear"]
