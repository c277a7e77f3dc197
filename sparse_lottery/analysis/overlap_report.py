"""The overlap report: labelled heat maps (IoU, Hamming) and Markdown tables of every mask
under a run folder, written as `overlap.png`, `overlap.md` and `overlap.json`.

Example:
    >>> from sparse_lottery.analysis.overlap_report import markdown_matrix
    >>> print(markdown_matrix(["a"], torch.ones(1, 1)))
    | | a |
    |---|---|
    | a | 1.000 |
"""

import logging
from pathlib import Path

import torch

from ..lottery import checkpoint
from ..lottery.report import save_figure
from .overlap import collect_masks, iou, overlap_matrix

log = logging.getLogger("sparse_lottery")


def markdown_matrix(names: list[str], matrix: torch.Tensor, digits: int = 3) -> str:
    """A square matrix as a Markdown table with the names as row and column headers.

    Example:
        >>> print(markdown_matrix(["a", "b"], torch.tensor([[1.0, 0.5], [0.5, 1.0]])))
        | | a | b |
        |---|---|---|
        | a | 1.000 | 0.500 |
        | b | 0.500 | 1.000 |
    """
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, matrix.tolist()):
        lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in row) + " |")
    return "\n".join(lines)


def plot_overlap(names: list[str], ious: torch.Tensor, hams: torch.Tensor, path: Path) -> Path:
    """Two labelled heat maps (IoU, Hamming) side by side, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.45 * n, 24)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, matrix, title, cmap in (
        (axes[0], ious, "IoU of kept weights", "viridis"),
        (axes[1], hams, "Hamming distance (fraction)", "magma_r"),
    ):
        image = ax.imshow(matrix.numpy(), cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_title(title)
        if n <= 16:
            for i in range(n):
                for j in range(n):
                    v = matrix[i, j].item()
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if (v < 0.5) == (cmap == "viridis") else "black",
                    )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def write_overlap(
    root: str | Path,
    out: str | Path | None = None,
    branches: tuple[str, ...] = ("random_prune",),
    include_dense: bool = False,
) -> Path:
    """Write `overlap.png` (heat maps), `overlap.md` (IoU and Hamming tables, per-layer IoU of
    consecutive levels) and `overlap.json` into `out` (default `<root>/report`); returns `out`.

    Example:
        >>> write_overlap("runs")  # doctest: +SKIP
        PosixPath('runs/report')
    """
    named = collect_masks(root, branches, include_dense)
    names, ious, hams = overlap_matrix(named)
    out = Path(out) if out else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_overlap(names, ious, hams, out / "overlap.png")
    md = [
        "# Mask overlap",
        "",
        f"Masks under `{root}`: {len(names)}.",
        "",
        "## IoU of the kept weights (all layers)",
        "",
        markdown_matrix(names, ious),
        "",
        "## Hamming distance (fraction of entries that differ)",
        "",
        markdown_matrix(names, hams, 4),
        "",
    ]
    layers = {}
    for a, b in zip(names, names[1:]):
        layers[f"{a} vs {b}"] = iou(named[a], named[b], per_layer=True)
    if layers:
        keys = list(next(iter(layers.values())))
        md += [
            "## Per-layer IoU of neighbouring masks",
            "",
            "| pair | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        md += [
            f"| {p} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |" for p, v in layers.items()
        ]
        md.append("")
    md.append("![overlap](overlap.png)")
    (out / "overlap.md").write_text("\n".join(md) + "\n")
    checkpoint.atomic_write_json(
        out / "overlap.json",
        {
            "names": names,
            "iou": ious.tolist(),
            "hamming": hams.tolist(),
            "per_layer_iou_neighbours": layers,
        },
    )
    log.info("overlap of %d masks written to %s", len(names), out)
    return out


__all__ = ["markdown_matrix", "plot_overlap", "write_overlap"]
