"""State dicts that load across a layer's two forms: a masked layer (`weight`,
`weight_mask_packed`) loads its sparse form's state (`values` and the layout's index tensors), and
a sparse layer loads its masked form's. Each layer's `_load_from_state_dict` rewrites the other
form's entries under its prefix into its own before torch loads them (the dict is torch's copy),
so strict loading, `assign=True` and the key checks work as for its own form.
"""

import torch

from .. import ops
from .._mask_format import count_kept, gemm_view, packed_shape
from .._sparse_layout import SparseLayout

MASK_BUFFER = "weight_mask_packed"
LAYOUT_BUFFERS = SparseLayout._fields
OTHER_MASK_ADVICE = (
    "load it into the model's masked form, which takes any mask (set_execution(model, 'dense')), "
    "then call set_execution again"
)


def check_loaded_mask(mask: torch.Tensor, shape: torch.Size, key: str) -> None:
    """A state dict's packed mask must be what `pack_mask` makes for `shape` (a mask with
    padding bits set would count weights that do not exist, and could pass for a full one)."""
    expected = packed_shape(shape)
    if mask.dtype != torch.uint8 or tuple(mask.shape) != expected:
        raise ValueError(
            f"{key}: expected a packed mask (torch.uint8 of shape {list(expected)}, made by "
            f"sparse_lottery.pack_mask) for a weight of shape {list(shape)}, got "
            f"{mask.dtype} of shape {list(mask.shape)}"
        )
    tail = gemm_view(shape)[1] % 8
    if tail and not mask.is_meta and mask.numel() and bool((mask[:, -1] >> tail).any()):
        raise ValueError(
            f"{key}: has padding bits set (bits {tail}..7 of each row's last byte must be 0): "
            f"not a mask made by sparse_lottery.pack_mask"
        )


def holds_sparse_form(state_dict, prefix: str) -> bool:
    """Whether `state_dict` holds a sparse layer's entries (and no `weight`) under `prefix`."""
    keys = ("values", *LAYOUT_BUFFERS)
    return prefix + "weight" not in state_dict and all(prefix + k in state_dict for k in keys)


def holds_masked_form(state_dict, prefix: str) -> bool:
    """Whether `state_dict` holds a masked layer's entries (and no `values`) under `prefix`."""
    keys = ("weight", MASK_BUFFER)
    return prefix + "values" not in state_dict and all(prefix + k in state_dict for k in keys)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


def _loaded_layout(state_dict, prefix: str, view: tuple[int, int]) -> SparseLayout:
    """The layout stored under `prefix`, checked to be the one `SparseLayout.from_mask` makes
    for a mask of the GEMM view `view` (its values are then in that layout's order)."""
    stored = SparseLayout._make(state_dict[prefix + k] for k in LAYOUT_BUFFERS)
    if any(not isinstance(t, torch.Tensor) for t in stored) or stored.shape != view:
        got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in stored]
        raise ValueError(
            f"{prefix}row_offsets: the state dict's sparse form does not fit this layer: "
            f"expected the layout of a {view[0]}×{view[1]} weight, got index tensors of shapes "
            f"{got}"
        )
    try:
        rebuilt = SparseLayout.from_mask(stored.mask())
    except (RuntimeError, IndexError, TypeError, ValueError):
        rebuilt = None  # indices out of range or offsets that do not count up
    if rebuilt is None or not all(_same(a, b) for a, b in zip(rebuilt, stored, strict=True)):
        raise ValueError(
            f"{prefix}row_offsets: the state dict's sparse layout is not one that "
            f"SparseLayout.from_mask makes (inconsistent or out-of-range indices)"
        )
    return rebuilt


def sparse_to_masked(state_dict, prefix: str, weight_shape: torch.Size) -> None:
    """Rewrite the sparse form under `prefix` as the masked form of a `weight_shape` weight: the
    dense weight (zeros where pruned) and the packed mask."""
    layout = _loaded_layout(state_dict, prefix, gemm_view(weight_shape))
    values = state_dict.pop(prefix + "values")
    for name in LAYOUT_BUFFERS:
        del state_dict[prefix + name]
    if not isinstance(values, torch.Tensor) or values.shape != (layout.nnz,):
        got = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(
            f"{prefix}values: expected {layout.nnz} stored weights (the layout's), got {got}"
        )
    layout = layout.to(values.device)
    state_dict[prefix + "weight"] = layout.dense(values).reshape(weight_shape)
    state_dict[prefix + MASK_BUFFER] = ops.pack_mask(layout.mask().reshape(weight_shape))


def masked_to_sparse(state_dict, prefix: str, layer) -> None:
    """Rewrite the masked form under `prefix` as the sparse `layer`'s entries: the weights its
    layout stores, and its own layout (the state dict's mask must be the layer's)."""
    weight = state_dict.pop(prefix + "weight")
    packed = state_dict.pop(prefix + MASK_BUFFER)
    shape = torch.Size(layer.weight_shape)
    if not isinstance(weight, torch.Tensor) or weight.shape != shape:
        got = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{prefix}weight: expected shape {list(shape)}, got {got}")
    check_loaded_mask(packed, shape, prefix + MASK_BUFFER)
    own = layer.layout
    if not torch.equal(packed.cpu(), ops.pack_mask(own.mask().cpu())):
        raise ValueError(
            f"{prefix}{MASK_BUFFER}: the state dict's mask is not this sparse layer's "
            f"({count_kept(packed)} weights kept, this layer {own.nnz}); {OTHER_MASK_ADVICE}"
        )
    device = own.row_offsets.device
    state_dict[prefix + "values"] = own.values_of(weight.to(device).reshape(own.shape))
    for name, tensor in zip(LAYOUT_BUFFERS, own, strict=True):
        state_dict[prefix + name] = tensor
