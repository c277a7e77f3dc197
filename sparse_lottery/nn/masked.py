"""Drop-in masked layers: `torch.nn.Linear`/`Conv1d`/`Conv2d` with a 1-bit-per-weight mask buffer.

Each layer keeps torch's `weight` and `bias` parameters (same state-dict keys) and adds one buffer,
`weight_mask_packed` (uint8, the packed form made by `sparse_lottery.ops.pack_mask`). `forward`
calls the fused masked ops, so the output never depends on the stored values of pruned weights
and their gradients are exactly zero. The mask is a buffer: it follows `.to()`, `state_dict`,
`deepcopy`, pickling, and DDP's buffer broadcast. A layer also loads the state dict of its
sparse-execution form (`SparseLinear`/`SparseConv2d`, any mask), and those load its state dict
when the masks are the same.

Example:
    >>> import torch, sparse_lottery as sl
    >>> layer = sl.nn.MaskedLinear(20, 30)
    >>> layer.set_mask(torch.rand(30, 20) < 0.1)
    >>> y = layer(torch.randn(8, 20))
    >>> isinstance(layer, torch.nn.Linear), sorted(layer.state_dict())
    (True, ['bias', 'weight', 'weight_mask_packed'])
"""

import copy
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._extension import _C
from .._mask_format import count_kept
from .._sparse_checks import conv2d_output_size
from ._state_forms import MASK_BUFFER, check_loaded_mask, holds_sparse_form, sparse_to_masked

# id of a weight Parameter -> (weak reference to it, weak reference to the masked layer that owns
# it); an entry leaves when its weight is freed, and neither side is kept alive. A plain dict
# keyed by id (tensors compare element-wise): the masked optimisers read it for every parameter
# at every step (0.3 µs a lookup against 4 µs through torch's WeakIdKeyDictionary).
_OWNERS: dict[int, tuple] = {}
# id of a packed mask -> (weak reference to it, its version counter when counted, whether it
# keeps every weight); an entry leaves when its mask is freed. A plain dict: `forward` reads it.
_FULL: dict[int, tuple] = {}
# Output positions per image up to which a CPU 2-D masked convolution runs its im2col form
# (csrc/cpu/conv_gemm.h); none without the extension (an older build lacking it: none either).
_IM2COL_POSITIONS = getattr(_C, "im2col_positions", 0)
_is_compiling = torch.compiler.is_compiling


def _tracked(table: dict, obj) -> weakref.ref:
    """A weak reference to `obj` that removes `table[id(obj)]` when `obj` is freed (the entries
    of `_OWNERS` and `_FULL`; an entry replaced meanwhile drops its reference, and its callback
    with it)."""
    key = id(obj)
    return weakref.ref(obj, lambda _, key=key: table.pop(key, None))


def _keeps_all(mask: torch.Tensor, numel: int) -> bool:
    """Whether the packed `mask` keeps all `numel` weights: counted once per mask tensor and
    version (every in-place write, `set_mask`, `load_state_dict` and DDP's broadcast included,
    bumps the version), so a forward pays a dictionary lookup (~1 µs). Tensors without a
    version (inference, fake, meta, subclasses, under torch.compile) answer False: the masked
    op then runs, which is always correct."""
    if _is_compiling():
        return False
    key = id(mask)
    entry = _FULL.get(key)
    if entry is not None and entry[0]() is mask and entry[1] == mask._version:
        return entry[2]
    if type(mask) is not torch.Tensor or mask.is_inference() or mask.is_meta:
        return False
    entry = _FULL[key] = (_tracked(_FULL, mask), mask._version, count_kept(mask) == numel)
    return entry[2]


def mask_of(param: torch.Tensor) -> torch.Tensor | None:
    """The packed mask (the layer's `weight_mask_packed` buffer, read now) of `param` when it is
    the `weight` of a masked layer, else None. The masked optimisers call it at every step.

    Example:
        >>> layer = sparse_lottery.nn.MaskedLinear(10, 3)
        >>> sparse_lottery.nn.mask_of(layer.weight).shape, sparse_lottery.nn.mask_of(layer.bias)
        (torch.Size([3, 2]), None)
    """
    entry = _OWNERS.get(id(param))
    layer = entry[1]() if entry is not None and entry[0]() is param else None
    if layer is None or layer._parameters.get("weight") is not param:
        return None
    return layer._buffers.get(MASK_BUFFER)


class _MaskedMixin:
    """Mask storage and conversions shared by the masked layers (the mixin comes first in the
    MRO; the torch layer class comes second)."""

    _dense_cls: type[nn.Module]
    weight: nn.Parameter
    weight_mask_packed: torch.Tensor

    def _init_mask(self) -> None:
        ones = torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        self.register_buffer(MASK_BUFFER, ops.pack_mask(ones))
        self._register_owner()

    # ------------------------------------------------------------------ mask_of registry
    # Kept current wherever `weight` may become a new Parameter object: construction,
    # assignment, `_apply` (`.to()`, `.half()`, ...), unpickling and deepcopy, and
    # `load_state_dict(assign=True)`.
    def _register_owner(self) -> None:
        weight = self.__dict__.get("_parameters", {}).get("weight")
        if weight is not None:
            _OWNERS[id(weight)] = (_tracked(_OWNERS, weight), weakref.ref(self))

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        if name == "weight":
            self._register_owner()

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._register_owner()
        return result

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._register_owner()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if holds_sparse_form(state_dict, prefix):
            sparse_to_masked(state_dict, prefix, self.weight.shape)
        mask = state_dict.get(prefix + MASK_BUFFER)
        if isinstance(mask, torch.Tensor):
            check_loaded_mask(mask, self.weight.shape, prefix + MASK_BUFFER)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._register_owner()

    # ------------------------------------------------------------------ mask access
    @property
    def mask(self) -> torch.Tensor:
        """The bool mask of `weight`'s shape (True = kept), unpacked from the buffer: a new
        tensor, so writing to it does not change the layer; use `set_mask` for that."""
        return ops.unpack_mask(self.weight_mask_packed, self.weight.shape)

    @mask.setter
    def mask(self, value: torch.Tensor) -> None:
        self.set_mask(value)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask by `mask`: a bool tensor of `weight`'s shape (True = kept).

        The packed buffer is updated in place, so the buffer object (that DDP and `.to()` track)
        is kept. Stored weights are left untouched: pruned values are simply ignored.

        Example:
            >>> layer = sparse_lottery.nn.MaskedLinear(4, 3)
            >>> layer.set_mask(torch.eye(3, 4, dtype=torch.bool))
            >>> layer.density
            0.25
        """
        if not isinstance(mask, torch.Tensor):
            raise TypeError(
                f"mask: expected a torch.Tensor of dtype torch.bool, got {type(mask).__name__}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(
                f"mask: expected dtype torch.bool (True = kept), got {mask.dtype}; "
                f"convert with `mask != 0`"
            )
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"mask: expected shape {list(self.weight.shape)} (the weight's), "
                f"got {list(mask.shape)}"
            )
        packed = ops.pack_mask(mask.to(self.weight_mask_packed.device))
        self.weight_mask_packed.copy_(packed)

    @property
    def density(self) -> float:
        """Fraction of weights kept by the mask (1.0 for a fresh layer)."""
        numel = self.weight.numel()
        return count_kept(self.weight_mask_packed) / numel if numel else 1.0

    def _density_repr(self) -> str:
        try:
            return f"density={self.density:.4f}"
        except (RuntimeError, NotImplementedError):  # meta tensors have no values
            return "density=?"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._density_repr()}"

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dense(cls, layer: nn.Module, mask: torch.Tensor | None = None):
        """A masked layer that *shares* `layer`'s Parameter objects (and every other attribute:
        hooks, training flag, padding, ...), with an all-ones mask or `mask` if given.

        Sharing means an optimizer built on the dense layer keeps working; `layer` itself is
        left unchanged but should be discarded. Use `copy.deepcopy(layer)` first for a copy.

        Example:
            >>> dense = torch.nn.Linear(8, 4)
            >>> masked = sparse_lottery.nn.MaskedLinear.from_dense(dense)
            >>> masked.weight is dense.weight
            True
        """
        dense_cls = cls._dense_cls
        if not isinstance(layer, dense_cls):
            raise TypeError(
                f"layer: expected a {dense_cls.__module__}.{dense_cls.__name__}, "
                f"got {type(layer).__name__}"
            )
        if isinstance(layer, _MaskedMixin):
            raise TypeError(f"layer: already a masked layer ({type(layer).__name__})")
        if "weight" not in layer._parameters:
            raise ValueError(
                "layer: its `weight` is not a plain parameter (torch.nn.utils.prune or a "
                "parametrization is attached); use sparse_lottery.from_torch_prune for pruned "
                "layers"
            )
        new = _shallow_clone(layer, cls)
        new._init_mask()
        if mask is not None:
            new.set_mask(mask)
        return new

    def to_dense(self) -> nn.Module:
        """A plain torch layer with *copies* of the parameters, pruned weights set to zero.

        Example:
            >>> layer = sparse_lottery.nn.MaskedLinear(4, 3)
            >>> type(layer.to_dense()).__name__
            'Linear'
        """
        dense = _shallow_clone(self, self._dense_cls)
        dense._parameters = {k: copy.deepcopy(v) for k, v in self._parameters.items()}
        dense._buffers = {k: v for k, v in self._buffers.items() if k != MASK_BUFFER}
        dense._non_persistent_buffers_set.discard(MASK_BUFFER)
        with torch.no_grad():
            dense.weight.copy_(ops.apply_mask(dense.weight, self.weight_mask_packed))
        return dense


def _shallow_clone(module: nn.Module, cls: type) -> nn.Module:
    """A `cls` instance sharing `module`'s attributes, with copies of its dicts and sets (so
    registering or removing parameters, buffers and hooks on one does not affect the other)."""
    new = cls.__new__(cls)
    new.__dict__.update(
        {k: copy.copy(v) if isinstance(v, dict | set) else v for k, v in module.__dict__.items()}
    )
    return new


class MaskedLinear(_MaskedMixin, nn.Linear):
    """`torch.nn.Linear` whose weight is multiplied by a mask: y = x (W ⊙ m)ᵀ + b.

    Same constructor as `nn.Linear`; the mask starts all ones. State-dict keys: `weight`,
    `bias`, `weight_mask_packed`. While the mask keeps every weight, `forward` is torch's
    `F.linear` (the same product without the masking, e.g. an IMP run's dense level 0).

    Example:
        >>> layer = sparse_lottery.nn.MaskedLinear(40, 10)
        >>> layer.set_mask(torch.rand(10, 40) < 0.5)
        >>> layer(torch.randn(3, 40)).shape
        torch.Size([3, 10])
    """

    _dense_cls = nn.Linear

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_mask()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias, mask = self.weight, self.bias, self.weight_mask_packed
        if _keeps_all(mask, weight.numel()):  # nothing pruned: torch's own linear, the same
            return F.linear(input, weight, bias)  # product without the masking
        return ops.masked_linear(input, weight, mask, bias)


class _MaskedConvNd(_MaskedMixin):
    """Padding handling shared by the masked convolutions, following `torch.nn.modules.conv`:
    non-'zeros' padding modes pad the input with `F.pad` first; 'same' padding that cannot be
    split evenly pads the extra element on the right, as torch does. While the mask keeps every
    weight, `forward` is torch's convolution (the same product without the masking), except
    where the masked op's im2col form is faster (CPU 2-D outputs of at most 4 positions)."""

    _op = None  # torch.ops.sparse_lottery.masked_conv{1,2}d.default

    def _padded(self, input: torch.Tensor) -> tuple[torch.Tensor, Sequence[int]]:
        if self.padding_mode != "zeros":
            pad = self._reversed_padding_repeated_twice
            return F.pad(input, pad, mode=self.padding_mode), [0] * len(self.kernel_size)
        if self.padding == "valid":
            return input, [0] * len(self.kernel_size)
        if self.padding == "same":
            # (left, right) per spatial dim, last dim first; right >= left, differ by at most 1.
            pad = self._reversed_padding_repeated_twice
            left = [pad[2 * i] for i in reversed(range(len(self.kernel_size)))]
            extra = [0] * len(pad)
            for i in range(0, len(pad), 2):
                extra[i + 1] = pad[i + 1] - pad[i]
            if any(extra):
                input = F.pad(input, extra)
            return input, left
        return input, self.padding

    def _masked_conv(
        self,
        input: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        batched = input.dim() == len(self.kernel_size) + 2
        if not batched:  # (C, *spatial), as torch allows
            input = input.unsqueeze(0)
        input, padding = self._padded(input)
        out = self._op(input, weight, mask, bias, self.stride, padding, self.dilation, self.groups)
        return out if batched else out.squeeze(0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias, mask = self.weight, self.bias, self.weight_mask_packed
        if _keeps_all(mask, weight.numel()) and not self._im2col_serves(input):
            # nothing pruned: torch's own convolution, the same product without the masking
            return self._dense_cls._conv_forward(self, input, weight, bias)
        return self._masked_conv(input, weight, mask, bias)

    def _im2col_serves(self, input: torch.Tensor) -> bool:
        """Whether the masked op would take its im2col form for `input`: 2-D, on the CPU, at
        most `_IM2COL_POSITIONS` output positions per image (csrc/cpu/conv_gemm.h), where it
        beats the framework convolution even with nothing pruned."""
        if len(self.kernel_size) != 2 or input.device.type != "cpu" or self.groups != 1:
            return False
        if self.padding == "same":
            return input.shape[-2] * input.shape[-1] <= _IM2COL_POSITIONS
        pad = (0, 0) if self.padding == "valid" else self.padding
        out_h, out_w = conv2d_output_size(
            (1, 1, *input.shape[-2:]), self.kernel_size, self.stride, pad, self.dilation
        )
        return max(out_h, 0) * max(out_w, 0) <= _IM2COL_POSITIONS


class MaskedConv1d(_MaskedConvNd, nn.Conv1d):
    """`torch.nn.Conv1d` with a masked weight; same constructor, every padding mode and
    'same'/'valid' padding.

    Example:
        >>> conv = sparse_lottery.nn.MaskedConv1d(4, 8, 3, padding="same")
        >>> conv(torch.randn(2, 4, 40)).shape
        torch.Size([2, 8, 40])
    """

    _dense_cls = nn.Conv1d
    _op = torch.ops.sparse_lottery.masked_conv1d.default

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask()


class MaskedConv2d(_MaskedConvNd, nn.Conv2d):
    """`torch.nn.Conv2d` with a masked weight; same constructor, every padding mode and
    'same'/'valid' padding.

    Example:
        >>> conv = sparse_lottery.nn.MaskedConv2d(3, 16, 3, padding=1, padding_mode="reflect")
        >>> conv(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    _dense_cls = nn.Conv2d
    _op = torch.ops.sparse_lottery.masked_conv2d.default

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask()


MASKED_TYPES: dict[type, type] = {
    nn.Linear: MaskedLinear,
    nn.Conv1d: MaskedConv1d,
    nn.Conv2d: MaskedConv2d,
}
"""Exact torch layer type → its masked replacement."""

__all__ = ["MaskedLinear", "MaskedConv1d", "MaskedConv2d", "MASKED_TYPES", "MASK_BUFFER", "mask_of"]
