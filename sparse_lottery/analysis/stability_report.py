"""The instability results as a Markdown table, a plot of the error along the path (one line
per rewind point k) and the files `stability.json`, `.md` and `.png`.

Example:
    >>> from sparse_lottery.analysis.stability_report import format_table
    >>> format_table([]).splitlines()[0].startswith("| level | k |")
    True
"""

from collections.abc import Sequence
from pathlib import Path

from ..lottery.report import markdown_table, save_figure
from ._output import write_files


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per (level, k) with barrier, stable, accuracies, matching, distance.

    Example:
        >>> row = {"level": 1, "k": 0, "density": 0.8, "barrier": 0.031, "stable": False,
        ...        "mean_accuracy": 0.9, "dense_accuracy": 0.91, "matching": False,
        ...        "l2_distance": 4.2, "errors": [0.1, 0.13, 0.1]}
        >>> print(format_table([row]))
        | level | k | density | barrier | stable | E(W1) | E(W2) | copies acc | dense acc | matching | L2(W1, W2) |
        |---|---|---|---|---|---|---|---|---|---|---|
        | 1 | 0 | 0.8000 | 0.0310 | no | 0.1000 | 0.1000 | 0.9000 | 0.9100 | no | 4.200 |
    """  # noqa: E501
    head = [
        "level",
        "k",
        "density",
        "barrier",
        "stable",
        "E(W1)",
        "E(W2)",
        "copies acc",
        "dense acc",
        "matching",
        "L2(W1, W2)",
    ]
    body = []
    for r in rows:
        cells = [
            str(r["level"]),
            str(r["k"]),
            f"{r['density']:.4f}",
            f"{r['barrier']:.4f}",
            "yes" if r["stable"] else "no",
            f"{r['errors'][-1]:.4f}",
            f"{r['errors'][0]:.4f}",
            f"{r['mean_accuracy']:.4f}",
            f"{r['dense_accuracy']:.4f}",
            "yes" if r["matching"] else "no",
            f"{r['l2_distance']:.3f}",
        ]
        body.append(cells)
    return markdown_table(head, body)


def plot_paths(rows: Sequence[dict], path: Path) -> Path | None:
    """Test error along the path (α on x), one line per k, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot(
            r["alphas"],
            [100 * e for e in r["errors"]],
            marker=".",
            label=f"k={r['k']} (barrier {100 * r['barrier']:.2f}%)",
        )
    levels = sorted({r["level"] for r in rows})
    ax.set(
        xlabel="α  (0: W2, 1: W1)",
        ylabel="test error (%)",
        title=f"linear interpolation, level {', '.join(map(str, levels))}",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_results(rows: Sequence[dict], folder: Path) -> list[Path]:
    """stability.json (the rows), stability.md (the table) and stability.png into `folder`."""
    text = "# Instability\n\n" + format_table(rows) + "\n\n![error along the path](stability.png)\n"
    return write_files(
        folder, "stability", {"results": list(rows)}, text, lambda png: plot_paths(rows, png)
    )


__all__ = ["format_table", "plot_paths", "write_results"]
