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

import math

import torch
from torch import nn

from ..sparse import SparseLayout, sparse_conv2d, sparse_linear
from ._state_forms import LAYOUT_BUFFERS, OTHER_MASK_ADVICE, holds_masked_form, masked_to_sparse
from .masked import MaskedConv2d, MaskedLinear


def _copy_module_state(dst: nn.Module, src: nn.Module) -> None:
    """The training flag and hooks of `src` onto `dst` (a conversion of it)."""
    dst.training = src.training
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
        getattr(dst, hooks).update(getattr(src, hooks))


class _SparseWeight(nn.Module):
    """Stored weights `values` and their layout over the weight's GEMM view (out, rest), shared
    by the sparse layers."""

    row_offsets: torch.Tensor
    col_indices: torch.Tensor
    col_offsets: torch.Tensor
    row_indices: torch.Tensor
    csr_positions: torch.Tensor
    weight_shape: tuple[int, ...]

    def _set(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        """values and layout of `weight` (any shape, viewed as (out, rest)) under `mask`."""
        self.weight_shape = tuple(weight.shape)
        view = (weight.shape[0], weight[0].numel() if weight.shape[0] else 0)
        layout = SparseLayout.from_mask(mask.to(weight.device).reshape(view))
        for name, tensor in zip(LAYOUT_BUFFERS, layout, strict=True):
            self.register_buffer(name, tensor)
        self.values = nn.Parameter(layout.values_of(weight.detach().reshape(view)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if holds_masked_form(state_dict, prefix):
            masked_to_sparse(state_dict, prefix, self)
        values = state_dict.get(prefix + "values")
        if isinstance(values, torch.Tensor) and values.shape != self.values.shape:
            raise ValueError(
                f"{prefix}values: the state dict holds the sparse form of another mask "
                f"({values.numel()} stored weights, this layer {self.values.numel()}); "
                f"{OTHER_MASK_ADVICE}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def layout(self) -> SparseLayout:
        buffers = self._buffers  # read directly: every forward builds the layout
        return SparseLayout._make([buffers[name] for name in LAYOUT_BUFFERS])

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (zeros where pruned), differentiable in `values`: a new tensor."""
        return self.layout.dense(self.values).reshape(self.weight_shape)

    @property
    def mask(self) -> torch.Tensor:
        """The bool mask of the weight's shape (True = kept): a new tensor."""
        return self.layout.mask().reshape(self.weight_shape)

    @property
    def density(self) -> float:
        """Fraction of the weights kept."""
        total = math.prod(self.weight_shape)
        return self.values.numel() / total if total else 1.0

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Keep exactly the weights where `mask` (bool, the weight's shape) is True; weights
        that were pruned and are kept again start at zero. Replaces `values` by a new parameter
        (build the optimiser after it)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a bool tensor (True = kept), got {got}")
        if tuple(mask.shape) != self.weight_shape:
            raise ValueError(
                f"mask: expected shape {list(self.weight_shape)}, got {list(mask.shape)}"
            )
        self._set(self.weight, mask)

    # ------------------------------------------------------------------ conversions
    _masked_cls: type[nn.Module]
    _config: tuple[str, ...]  # the layer attributes a conversion carries over

    @classmethod
    def from_masked(cls, layer: nn.Module):
        """The sparse form of a masked layer: a copy of its surviving weights, its `bias`
        Parameter shared, hooks and training flag kept."""
        if type(layer) is not cls._masked_cls:
            raise TypeError(
                f"layer: expected a sparse_lottery.nn.{cls._masked_cls.__name__}, got "
                f"{type(layer).__name__}"
            )
        reason = cls.unsupported(layer)
        if reason:
            raise ValueError(f"layer: {reason}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        _copy_module_state(new, layer)
        for name in cls._config:
            setattr(new, name, getattr(layer, name))
        new.bias = layer.bias
        new._set(layer.weight.detach(), layer.mask)
        return new

    @classmethod
    def unsupported(cls, layer: nn.Module) -> str | None:
        """Why `layer` has no sparse form, or None."""
        return None

    def to_masked(self) -> nn.Module:
        """The masked form: dense weight (zeros where pruned) and the mask; the `bias`
        Parameter is shared."""
        out = self._masked_cls.__new__(self._masked_cls)
        nn.Module.__init__(out)
        _copy_module_state(out, self)
        for name in self._config:
            setattr(out, name, getattr(self, name))
        out.weight = nn.Parameter(self.weight.detach().clone())
        out.bias = self.bias
        out._init_mask()
        out.set_mask(self.mask)
        return out


class SparseLinear(_SparseWeight):
    """y = x Wᵀ + b with W given by its surviving weights `values` and their layout.

    State-dict keys: `values`, `bias` and the layout's index tensors (`row_offsets`,
    `col_indices`, `col_offsets`, `row_indices`, `csr_positions`). It also loads the state dict
    of its masked form (`weight`, `weight_mask_packed`) when that mask is its own, and the masked
    form loads its state dict with any mask. A new mask (`set_mask`, the
    next IMP level) rebuilds the layout and replaces `values` by a new parameter: build the
    optimiser after it.

    Example:
        >>> layer = sparse_lottery.nn.SparseLinear(20, 30)
        >>> layer.set_mask(torch.rand(30, 20) < 0.1)
        >>> layer(torch.randn(4, 20)).shape
        torch.Size([4, 30])
    """

    _masked_cls = MaskedLinear
    _config = ("in_features", "out_features")

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        """Weights as `nn.Linear` initialises them, every weight kept (use `set_mask`)."""
        super().__init__()
        dense = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.bias = dense.bias
        self._set(dense.weight.detach(), torch.ones_like(dense.weight, dtype=torch.bool))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return sparse_linear(input, self.values, self.layout, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, nnz={self.values.numel()}"
        )


class SparseConv2d(_SparseWeight):
    """`MaskedConv2d` in sparse execution: W (out_channels, in_channels·kh·kw) given by its
    surviving weights, run by `sparse_lottery.sparse.sparse_conv2d` (on the CPU a direct sparse
    convolution, no im2col; on CUDA the reference convolution of the dense weight).
    `sparse_lottery.set_execution` measures where it pays. Zero padding and groups=1 only.

    Build it with `SparseConv2d.from_masked(masked_conv)`.

    Example:
        >>> conv = sparse_lottery.nn.MaskedConv2d(8, 16, 3, padding=1)
        >>> conv.set_mask(torch.rand(16, 8, 3, 3) < 0.05)
        >>> sparse = sparse_lottery.nn.SparseConv2d.from_masked(conv)
        >>> x = torch.randn(2, 8, 10, 10)
        >>> torch.allclose(sparse(x), conv(x), atol=1e-5)
        True
    """

    _masked_cls = MaskedConv2d
    _config = (
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
        "transposed", "output_padding", "groups", "padding_mode",
        "_reversed_padding_repeated_twice",
    )  # fmt: skip

    @classmethod
    def unsupported(cls, layer: nn.Module) -> str | None:
        if layer.groups != 1:
            return f"groups={layer.groups}: the sparse convolution supports groups=1 only"
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return "the sparse convolution supports numeric zero padding only"
        return None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        unbatched = input.dim() == 3
        out = sparse_conv2d(
            input.unsqueeze(0) if unbatched else input,
            self.values,
            self.layout,
            self.bias,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, nnz={self.values.numel()}"
        )


SPARSE_TYPES: dict[type, type] = {MaskedLinear: SparseLinear, MaskedConv2d: SparseConv2d}
"""Masked layer type → its sparse-execution form."""

__all__ = ["SparseLinear", "SparseConv2d", "SPARSE_TYPES"]
