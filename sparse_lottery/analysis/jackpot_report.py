"""The lottery-jackpot results as a Markdown table, a plot (test accuracy and IoU with the
initial magnitude mask over the search steps, one line per density) and the files
`jackpot.json`, `.md` and `.png`.

Example:
    >>> from sparse_lottery.analysis.jackpot_report import format_table
    >>> format_table([]).splitlines()[0].startswith("| density | steps |")
    True
"""

from collections.abc import Sequence
from pathlib import Path

from ..lottery.report import markdown_table, save_figure
from ._output import write_files


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per density with the dense, magnitude-mask and searched accuracies
    (percent) and the IoU between the initial and the found mask.

    Example:
        >>> row = {"density": 0.1, "steps": 400, "dense_accuracy": 0.9, "iou": 0.75,
        ...        "magnitude_accuracy": 0.3, "test_accuracy": 0.85, "best_test_accuracy": 0.86}
        >>> print(format_table([row]).splitlines()[2])
        | 0.1000 | 400 | 90.00 | 30.00 | 85.00 | 86.00 | 0.7500 |
    """
    head = [
        "density",
        "steps",
        "dense acc",
        "magnitude mask acc",
        "jackpot acc",
        "best jackpot acc",
        "IoU(initial, found)",
    ]
    body = []
    for r in rows:
        cells = [f"{r['density']:.4f}", str(r["steps"])]
        cells += [
            f"{100 * r[k]:.2f}"
            for k in ("dense_accuracy", "magnitude_accuracy", "test_accuracy", "best_test_accuracy")
        ]
        cells.append(f"{r['iou']:.4f}")
        body.append(cells)
    return markdown_table(head, body)


def plot(rows: Sequence[dict], path: Path) -> Path | None:
    """Two panels over the search steps: test accuracy (the dense network dotted) and the IoU
    of the current mask with the initial one; a PNG, None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (acc, overlap) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        steps = [m["step"] for m in r["metrics"]]
        label = f"density {r['density']:g}"
        line = acc.plot(
            steps, [100 * m["test_accuracy"] for m in r["metrics"]], marker=".", label=label
        )[0]
        overlap.plot(
            steps,
            [m["iou_initial"] for m in r["metrics"]],
            marker=".",
            color=line.get_color(),
            label=label,
        )
    if rows:
        acc.axhline(100 * rows[0]["dense_accuracy"], color="k", linestyle=":", label="dense")
    acc.set(xlabel="search step", ylabel="test accuracy (%)", title="lottery jackpot search")
    overlap.set(xlabel="search step", ylabel="IoU", title="IoU(initial magnitude mask, mask)")
    for ax in (acc, overlap):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_results(rows: Sequence[dict], folder: Path) -> list[Path]:
    """jackpot.json (the rows), jackpot.md (the table) and jackpot.png into `folder`."""
    text = "# Lottery jackpots (mask search on the pretrained network)\n\n"
    if rows:
        settings = ", ".join(f"{k} {v}" for k, v in rows[0]["hparams"].items())
        text += (
            f"Density: the fraction of the prunable layers' weights kept (not pruned: "
            f"{', '.join(rows[0]['excluded']) or 'none'}). Search: {settings}. Accuracies in "
            "percent; the magnitude mask is the search's initial mask.\n\n"
        )
    text += format_table(rows) + "\n\n![accuracy and IoU over the search](jackpot.png)\n"
    return write_files(
        folder, "jackpot", {"results": list(rows)}, text, lambda png: plot(rows, png)
    )


__all__ = ["format_table", "plot", "write_results"]
