"""Mask overlap: how much the masks of levels, replicates and baselines agree.

Masks are dicts `{"fc1.weight": bool tensor}` as `sparse_lottery.masks(model)` returns them
(True = kept). Two measures, over all layers together or per layer:

- IoU (Jaccard): |kept₁ ∧ kept₂| / |kept₁ ∨ kept₂|; 1 for identical masks, 0 for disjoint
  ones; defined as 1 when both masks keep nothing (identical masks);
- Hamming: the fraction (or, with `normalized=False`, the number) of entries that differ.

`collect_masks(root)` finds the masks of a run folder: every `mask.ckpt` (levels ≥ 1), and the
masks inside the `final.ckpt` of branches that write no mask file (random_prune, ...).
`write_overlap(root)` (in `overlap_report.py`) writes the heat maps and
Markdown tables into `<root>/report/`.

Example:
    >>> import torch
    >>> from sparse_lottery.analysis import iou, hamming, overlap_matrix
    >>> a = {"w": torch.tensor([True, True, False, False])}
    >>> b = {"w": torch.tensor([True, False, True, False])}
    >>> iou(a, b), hamming(a, b), hamming(a, b, normalized=False)
    (0.3333333333333333, 0.5, 2)
    >>> names, ious, hams = overlap_matrix({"a": a, "b": b})
    >>> names, ious.tolist()
    (['a', 'b'], [[1.0, 0.3333333333333333], [0.3333333333333333, 1.0]])
"""

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..lottery import checkpoint
from ..nn.masked import MASK_BUFFER
from ..ops import unpack_mask

Masks = Mapping[str, torch.Tensor]
_CHUNK = 1 << 22  # columns per matmul chunk: counts stay exact in float32 (< 2**24)


def _check_pair(m1: Masks, m2: Masks) -> None:
    for arg, m in (("m1", m1), ("m2", m2)):
        if not isinstance(m, Mapping) or not m:
            raise TypeError(f"{arg}: expected a non-empty dict of bool masks, got {m!r:.80}")
        for key, t in m.items():
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"{arg}[{key!r}]: expected a torch.bool tensor, got {got}")
    if set(m1) != set(m2):
        raise KeyError(
            f"m2: expected the layers of m1 {sorted(m1)}, got {sorted(m2)} "
            f"(missing {sorted(set(m1) - set(m2))}, extra {sorted(set(m2) - set(m1))})"
        )
    for key in m1:
        if m1[key].shape != m2[key].shape:
            raise ValueError(
                f"m2[{key!r}]: expected shape {list(m1[key].shape)} (as in m1), "
                f"got {list(m2[key].shape)}"
            )


def _counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int]:
    """(|a ∧ b|, |a ∨ b|, entries)."""
    a, b = a.reshape(-1), b.to(a.device).reshape(-1)
    return int((a & b).sum()), int((a | b).sum()), a.numel()


def iou(m1: Masks, m2: Masks, per_layer: bool = False) -> float | dict[str, float]:
    """Intersection over union of the kept weights of two masks, over all layers together, or
    `{layer: IoU}` with `per_layer`. 1 when both keep nothing.

    Example:
        >>> a = {"x": torch.tensor([True, False]), "y": torch.tensor([True, True])}
        >>> b = {"x": torch.tensor([False, True]), "y": torch.tensor([True, True])}
        >>> iou(a, b), iou(a, b, per_layer=True)
        (0.5, {'x': 0.0, 'y': 1.0})
    """
    _check_pair(m1, m2)
    counts = {k: _counts(m1[k], m2[k]) for k in m1}
    ratio = lambda inter, union: inter / union if union else 1.0
    if per_layer:
        return {k: ratio(i, u) for k, (i, u, _) in counts.items()}
    return ratio(sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))


def hamming(
    m1: Masks, m2: Masks, per_layer: bool = False, normalized: bool = True
) -> float | int | dict[str, float | int]:
    """Entries where two masks differ: a fraction of all entries (`normalized`) or a count,
    over all layers together or `{layer: value}` with `per_layer`.

    Example:
        >>> a = {"x": torch.tensor([True, False]), "y": torch.tensor([True, True])}
        >>> b = {"x": torch.tensor([False, True]), "y": torch.tensor([True, True])}
        >>> hamming(a, b), hamming(a, b, per_layer=True, normalized=False)
        (0.5, {'x': 2, 'y': 0})
    """
    _check_pair(m1, m2)
    counts = {k: _counts(m1[k], m2[k]) for k in m1}
    value = lambda inter, union, n: (union - inter) / n if normalized and n else union - inter
    if per_layer:
        return {k: value(*c) for k, c in counts.items()}
    return value(*(sum(c[i] for c in counts.values()) for i in range(3)))


def overlap_matrix(
    named_masks: Mapping[str, Masks],
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(names, IoU matrix, normalized Hamming matrix), float64 `n × n`, all layers together.
    All masks must have the same layers and shapes. Computed as one chunked matrix product of
    the flattened masks, exact at any size.

    Example:
        >>> m = lambda *bits: {"w": torch.tensor(bits, dtype=torch.bool)}
        >>> names, ious, hams = overlap_matrix({"a": m(1, 1, 0), "b": m(0, 0, 1)})
        >>> ious.tolist(), hams.tolist()
        ([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]])
    """
    if not isinstance(named_masks, Mapping) or not named_masks:
        raise ValueError(
            f"named_masks: expected a non-empty {{name: masks}} dict, got {named_masks!r:.80}"
        )
    names = list(named_masks)
    first = named_masks[names[0]]
    for name in names:
        try:
            _check_pair(first, named_masks[name])
        except (TypeError, KeyError, ValueError) as e:
            where = f"named_masks[{name!r}] (m2) against named_masks[{names[0]!r}] (m1)"
            raise type(e)(f"{where}: {e.args[0]}") from e
    keys = sorted(first)
    total = sum(first[k].numel() for k in keys)
    n = len(names)
    inter = torch.zeros(n, n, dtype=torch.float64)
    kept = torch.zeros(n, dtype=torch.float64)
    for key in keys:
        flat = torch.stack([named_masks[name][key].reshape(-1).cpu() for name in names])
        for start in range(0, flat.shape[1], _CHUNK):
            block = flat[:, start : start + _CHUNK].float()
            inter += (block @ block.T).double()
            kept += block.sum(1).double()
    union = kept[:, None] + kept[None, :] - inter
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    hams = (union - inter) / max(total, 1)
    return names, ious, hams


# --------------------------------------------------------------------------- run folders
def _masks_from_state(state: dict) -> dict[str, torch.Tensor]:
    """The masks stored as packed buffers in a model state dict (`final.ckpt`)."""
    out = {}
    for key, packed in state.items():
        if key.endswith(MASK_BUFFER):
            prefix = key[: -len(MASK_BUFFER)]
            out[prefix + "weight"] = unpack_mask(packed, state[prefix + "weight"].shape)
    return out


def _load(path: Path) -> dict[str, torch.Tensor]:
    header = checkpoint.read_header(path)
    payload = checkpoint.load(path, header["experiment"], header["kind"])
    if header["kind"] == "mask":
        return {k: unpack_mask(p, payload["shapes"][k]) for k, p in payload["packed"].items()}
    return _masks_from_state(payload)


def _sort_key(parts: list[str]):
    return [(int(p[1:]) if re.fullmatch(r"[rL]\d+", p) else -1, p) for p in parts]


def collect_masks(
    root: str | Path, branches: tuple[str, ...] = ("random_prune",), include_dense: bool = False
) -> dict[str, dict[str, torch.Tensor]]:
    """`{name: masks}` for every mask under `root` (a folder of experiments, one experiment or
    one replicate): each level's `mask.ckpt`, the masks of the `branches` kinds (read from
    their `final.ckpt`; "reinit" and "retrain" reuse the level's mask, so they are left out by
    default), and level 0's all-ones mask with `include_dense`. Names are path parts —
    experiment hash (first 6 digits), `r<replicate>`, `L<level>`, branch kind — with the parts
    common to all names left out.

    Example:
        >>> masks = collect_masks("runs")  # doctest: +SKIP
        >>> list(masks)  # doctest: +SKIP
        ['L1', 'L1/random_prune', 'L2', 'L2/random_prune']
    """
    from ..lottery.runner import BRANCHES

    bad = [kind for kind in branches if kind not in BRANCHES]
    if bad:
        raise ValueError(f"branches: expected kinds from {list(BRANCHES)}, got {bad}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: expected a run folder, got {root} (not a folder)")
    found: dict[tuple[str, ...], Path] = {}
    for folder in sorted({p.parent for p in root.rglob("*.ckpt")}):
        parts, kind = [], None
        for part in folder.relative_to(root).parts:
            if part.startswith("lottery_"):
                parts.append(part.removeprefix("lottery_")[:6])
            elif m := re.fullmatch(r"replicate_(\d+)", part):
                parts.append(f"r{m.group(1)}")
            elif m := re.fullmatch(r"level_(\d+)", part):
                parts.append(f"L{m.group(1)}")
            elif m := re.fullmatch(r"branch_(.+)_([0-9a-f]{16})", part):
                kind = m.group(1)
                parts.append(kind)
            else:
                parts = None  # stability copies, rewind points, reports: not masks of a run
                break
        if not parts or not (parts[-1] == kind or re.fullmatch(r"L\d+", parts[-1])):
            continue  # a replicate folder (init.ckpt, rewind.ckpt)
        mask, final = folder / "mask.ckpt", folder / "final.ckpt"
        if kind is None:  # a level
            path = mask if mask.exists() else final if include_dense and parts[-1] == "L0" else None
        else:
            path = (mask if mask.exists() else final) if kind in branches else None
        if path is None or not path.exists():
            continue
        name = tuple(parts)
        if name in found:  # several branches of one kind (seeds): tell them apart
            name = (*parts[:-1], f"{kind}#{folder.name[-4:]}")
        found[name] = path
    if not found:
        raise FileNotFoundError(
            f"root: no mask.ckpt under {root} (run `sparse-lottery imp --levels 1` or more first)"
        )
    keys = sorted(found, key=_sort_key)
    common = 0
    while common < min(map(len, keys)) - 1 and len({k[common] for k in keys}) == 1:
        common += 1
    out = {}
    for key in keys:
        out["/".join(key[common:])] = _load(found[key])
    return out


__all__ = ["iou", "hamming", "overlap_matrix", "collect_masks"]
