"""Model-level API: convert a model to masked layers, read and write its masks, and convert to
and from plain torch layers and `torch.nn.utils.prune`.

Masks are addressed by *parameter* name, the key the weight has in `model.state_dict()`:
`"fc1.weight"`, `"features.0.weight"`, or `"weight"` when the model itself is a masked layer.

Example:
    >>> import torch, sparse_lottery as sl
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 10))
    >>> model = sl.sparsify(model, exclude="2")          # keep the output layer dense
    >>> list(sl.masks(model))
    ['0.weight']
"""

import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from ._mask_format import count_kept
from .nn.masked import MASK_BUFFER, MASKED_TYPES, _MaskedMixin, _shallow_clone
from .nn.sparse import _SparseWeight

Selector = str | Iterable[str] | Callable[[str, nn.Module], bool] | None
"""Module selector: a glob (`fnmatch`) on the module's name as `named_modules` gives it
("" for the root), a list of globs (any may match), or a callable `(name, module) -> bool`."""


# --------------------------------------------------------------------------- helpers
def check_globs(argument: str, selector: Selector, names: list[str]) -> None:
    """Each glob of a str or list `selector` must match one of `names` (a typo would otherwise
    select nothing, silently); callables are not checked."""
    if selector is None or callable(selector):
        return
    if not isinstance(selector, str | Iterable):
        raise TypeError(
            f"{argument}: expected a glob, a list of globs or a callable, got {selector!r}"
        )
    patterns = [selector] if isinstance(selector, str) else list(selector)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{argument}: expected globs (str), got {pattern!r}")
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"{argument}: {pattern!r} matches no layer; the layers are {names}")


def _matches(selector: Selector, name: str, module: nn.Module, default: bool) -> bool:
    if selector is None:
        return default
    if callable(selector):
        return bool(selector(name, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _masked_layers(model: nn.Module) -> Iterator[tuple[str, _MaskedMixin]]:
    """The masked layers; a layer in sparse execution (`SparseLinear`, `SparseConv2d`) raises:
    its weights are not a dense parameter until `set_execution(model, "dense")`."""
    for name, module in model.named_modules():
        if isinstance(module, _SparseWeight):
            raise TypeError(
                f"model: layer {name!r} is a {type(module).__name__} (sparse execution); "
                f'convert back with sparse_lottery.set_execution(model, "dense") first'
            )
        if isinstance(module, _MaskedMixin):
            yield name, module


def _param_name(module_name: str, tensor: str = "weight") -> str:
    return f"{module_name}.{tensor}" if module_name else tensor


def _replace_modules(model: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None]):
    """Replace every module for which `convert(name, module)` returns a new module, at every
    place it appears (a module shared by two parents is converted once). Returns the new root."""
    new_of: dict[int, nn.Module | None] = {}
    places = list(model.named_modules(remove_duplicate=False))
    for name, module in places:
        if id(module) not in new_of:
            new_of[id(module)] = convert(name, module)
    # Replace children first (via the parents, which are unchanged at that point).
    for name, module in places:
        new = new_of.get(id(module))
        if new is None or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        parent._modules[child] = new
    root = new_of.get(id(model))
    return model if root is None else root


# --------------------------------------------------------------------------- conversion
def sparsify(model: nn.Module, include: Selector = None, exclude: Selector = None) -> nn.Module:
    """Replace `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` modules by masked layers (all-ones
    masks), in place, keeping the same Parameter objects; returns the model.

    Only modules of exactly those types are converted: subclasses (for example the output
    projection of `nn.MultiheadAttention`, whose parent never calls its `forward`) and layers
    that are already masked are left alone. `include` / `exclude` select by module name (see
    `Selector`); a module is converted when it matches `include` (default: all) and not
    `exclude` (default: none). If `model` is itself such a layer, the masked layer is
    returned instead, so always use the return value. Layers pruned by `torch.nn.utils.prune`
    raise: convert those with `from_torch_prune`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 8, 3), torch.nn.Flatten(),
        ...                             torch.nn.Linear(304, 10))
        >>> model = sl.sparsify(model, include=["0", "2"])
        >>> type(model[0]).__name__, type(model[2]).__name__
        ('MaskedConv1d', 'MaskedLinear')
        >>> sl.sparsify(torch.nn.Linear(3, 2))
        MaskedLinear(in_features=3, out_features=2, bias=True, density=1.0000)
    """

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    names = [n for n, m in model.named_modules()
             if type(m) in MASKED_TYPES or isinstance(m, _MaskedMixin | _SparseWeight)]  # fmt: skip
    if not names:
        warnings.warn(
            f"sparsify: {type(model).__name__} has no nn.Linear, nn.Conv1d or nn.Conv2d module "
            "(of exactly those types): nothing to convert",
            stacklevel=2,
        )
    check_globs("include", include, names)
    check_globs("exclude", exclude, names)

    def convert(name, module):
        masked_cls = MASKED_TYPES.get(type(module))
        if masked_cls is None:
            return None
        if not _matches(include, name, module, True) or _matches(exclude, name, module, False):
            return None
        if "weight" not in module._parameters:
            raise ValueError(
                f"model: module {name or '<root>'!r} has a pruned or parametrized `weight`; "
                f"use sparse_lottery.from_torch_prune for layers pruned by torch.nn.utils.prune"
            )
        return masked_cls.from_dense(module)

    return _replace_modules(model, convert)


def export_dense(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every masked layer replaced by the plain torch layer, its
    pruned weights set to zero: for deployment and for tools that expect stock modules. The
    input model is not changed.

    Example:
        >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        >>> model[0].set_mask(torch.eye(4, dtype=torch.bool))
        >>> dense = sl.export_dense(model)
        >>> type(dense[0]).__name__, int((dense[0].weight != 0).sum())
        ('Linear', 4)
    """
    model = copy.deepcopy(model)
    return _replace_modules(
        model, lambda _, m: _dense_copy(m) if isinstance(m, _MaskedMixin | _SparseWeight) else None
    )


def _dense_copy(layer: nn.Module) -> nn.Module:
    return (layer.to_masked() if isinstance(layer, _SparseWeight) else layer).to_dense()


# --------------------------------------------------------------------------- masks
def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) of every masked layer, keyed by weight parameter name
    (`"fc1.weight"`; `"weight"` for a masked root). They are new tensors: change a model's
    masks with `load_masks` or the layer's `set_mask`.

    Example:
        >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> {k: tuple(v.shape) for k, v in sl.masks(model).items()}
        {'0.weight': (2, 4)}
    """
    return {_param_name(name): layer.mask for name, layer in _masked_layers(model)}


def load_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Set the masks of `model`'s masked layers from `masks` (as `masks()` returns them).

    Every key must name a masked layer's weight; with `strict`, every masked layer must be
    given. Everything is validated before any mask is changed.

    Example:
        >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> sl.load_masks(model, {"0.weight": torch.zeros(2, 4, dtype=torch.bool)})
        >>> sl.density(model)
        0.0
    """
    layers = {_param_name(name): layer for name, layer in _masked_layers(model)}
    unknown = [k for k in masks if k not in layers]
    if unknown:
        raise KeyError(
            f"masks: unknown key(s) {unknown}; the model's masked weights are {sorted(layers)}"
        )
    missing = [k for k in layers if k not in masks]
    if strict and missing:
        raise KeyError(
            f"masks: missing key(s) {missing} (pass strict=False to leave those "
            f"layers' masks unchanged)"
        )
    for key, mask in masks.items():
        expected = tuple(layers[key].weight.shape)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"masks[{key!r}]: expected a torch.bool tensor, got {got}")
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"masks[{key!r}]: expected shape {list(expected)}, got {list(mask.shape)}"
            )
    for key, mask in masks.items():
        layers[key].set_mask(mask)


def density(model: nn.Module) -> float:
    """Fraction of masked weights kept, over all masked layers together (1.0 right after
    `sparsify`). Raises if the model has no masked layer.

    Example:
        >>> sl.density(sl.sparsify(torch.nn.Linear(3, 2)))
        1.0
    """
    layers = [layer for _, layer in _masked_layers(model)]
    if not layers:
        raise ValueError("model: has no masked layers (call sparse_lottery.sparsify first)")
    kept = sum(count_kept(layer.weight_mask_packed) for layer in layers)
    total = sum(layer.weight.numel() for layer in layers)
    if total == 0:
        return 1.0
    return kept / total


# --------------------------------------------------------------------------- torch.nn.utils.prune
def _prune_hook(module: nn.Module, tensor: str = "weight"):
    for key, hook in module._forward_pre_hooks.items():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == tensor:
            return key
    return None


def from_torch_prune(model: nn.Module) -> nn.Module:
    """Adopt the `weight_orig` / `weight_mask` reparametrisations made by
    `torch.nn.utils.prune` on `nn.Linear`/`Conv1d`/`Conv2d` modules: the pruning hook, the
    `weight_mask` buffer and `weight_orig` are removed and a masked layer is installed whose
    `weight` is the same Parameter object as `weight_orig` (original values, not zeroed) and
    whose mask is `weight_mask != 0`. In place; returns the model (or the new root layer).
    Other pruned tensors (a pruned `bias`) and other module types are left as they are.

    Example:
        >>> from torch.nn.utils import prune
        >>> model = torch.nn.Sequential(torch.nn.Linear(10, 10))
        >>> _ = prune.l1_unstructured(model[0], "weight", amount=0.3)
        >>> model = sl.from_torch_prune(model)
        >>> type(model[0]).__name__, round(sl.density(model), 2)
        ('MaskedLinear', 0.7)
    """

    def convert(name, module):
        masked_cls = MASKED_TYPES.get(type(module))
        key = _prune_hook(module) if masked_cls is not None else None
        if key is None:
            return None
        orig = module._parameters["weight_orig"]
        mask = module._buffers["weight_mask"] != 0
        module = _shallow_clone(module, type(module))  # the source module stays intact
        del module._forward_pre_hooks[key]
        del module._parameters["weight_orig"]
        del module._buffers["weight_mask"]
        del module.__dict__["weight"]
        module._parameters["weight"] = orig
        return masked_cls.from_dense(module, mask)

    return _replace_modules(model, convert)


def to_torch_prune(model: nn.Module) -> nn.Module:
    """Replace every masked layer by the plain torch layer pruned with
    `torch.nn.utils.prune.custom_from_mask` (its `weight_orig` is the same Parameter object as
    the masked layer's `weight`, values untouched; `weight_mask` is the mask as the weight's
    dtype). In place; returns the model (or the new root layer). `from_torch_prune` undoes it.

    Example:
        >>> model = sl.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> model = sl.to_torch_prune(model)
        >>> sorted(model.state_dict())
        ['0.bias', '0.weight_mask', '0.weight_orig']
    """

    def convert(name, module):
        if not isinstance(module, _MaskedMixin):
            return None
        mask = module.mask
        dense = _shallow_clone(module, module._dense_cls)
        del dense._buffers[MASK_BUFFER]
        dense._non_persistent_buffers_set.discard(MASK_BUFFER)
        prune.custom_from_mask(dense, "weight", mask)
        return dense

    return _replace_modules(model, convert)


__all__ = [
    "sparsify",
    "masks",
    "load_masks",
    "density",
    "export_dense",
    "from_torch_prune",
    "to_torch_prune",
]
