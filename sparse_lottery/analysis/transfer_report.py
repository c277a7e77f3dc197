"""The transfer results as a Markdown table, a plot of target accuracy against the source
level's density (one panel per freeze mode, one colour per reset; tickets solid, random tickets
dashed, the dense transfer a horizontal line) and the files `transfer.json`, `.md`, `.png`.

Example:
    >>> from sparse_lottery.analysis.transfer_report import format_table
    >>> format_table([]).splitlines()[0]
    '| freeze | level | density | reset | ticket acc | random ticket acc |'
"""

from collections.abc import Sequence
from pathlib import Path

from ..lottery.report import markdown_table, save_figure
from ._output import write_files

_COLOURS = {"late": "tab:blue", "init": "tab:orange", "fresh": "tab:green"}


def _accuracy(rows: Sequence[dict], **key) -> dict | None:
    return next((r for r in rows if all(r[k] == v for k, v in key.items())), None)


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: the dense transfer, then one line per (freeze, level, reset) with the ticket's
    and the random ticket's final target test accuracy.

    Example:
        >>> rows = [{"level": 0, "kind": "dense", "reset": "late", "freeze": "frozen",
        ...          "density": 1.0, "test_accuracy": 0.61},
        ...         {"level": 1, "kind": "ticket", "reset": "late", "freeze": "frozen",
        ...          "density": 0.8, "test_accuracy": 0.6}]
        >>> print(format_table(rows))
        | freeze | level | density | reset | ticket acc | random ticket acc |
        |---|---|---|---|---|---|
        | frozen | dense | 1.0000 | late | 0.6100 | – |
        | frozen | 1 | 0.8000 | late | 0.6000 | – |
    """
    head = ["freeze", "level", "density", "reset", "ticket acc", "random ticket acc"]
    body = []
    for r in rows:
        if r["kind"] == "random":
            continue
        twin = _accuracy(rows, kind="random", level=r["level"], reset=r["reset"],
                         freeze=r["freeze"])  # fmt: skip
        cells = [
            r["freeze"],
            "dense" if r["kind"] == "dense" else str(r["level"]),
            f"{r['density']:.4f}",
            r["reset"],
            f"{r['test_accuracy']:.4f}",
            f"{twin['test_accuracy']:.4f}" if twin else "–",
        ]
        body.append(cells)
    return markdown_table(head, body)


def format_markdown(result: dict) -> str:
    """The title (source → target), the table and the plot's link.

    Example:
        >>> result = {"source": {"dataset": "mnist1d", "model": "mnist1d_mlp",
        ...                      "dense_accuracy": 0.7}, "target": "mnist1d_shifted",
        ...           "steps": 100, "rows": []}
        >>> format_markdown(result).splitlines()[0]
        '# Ticket transfer: mnist1d → mnist1d_shifted (mnist1d_mlp)'
    """
    src = result["source"]
    return (
        f"# Ticket transfer: {src['dataset']} → {result['target']} ({src['model']})\n\n"
        f"Target test accuracy after {result['steps']} iterations on the target, new dense "
        f"head; the source's dense accuracy on its own task was {src['dense_accuracy']:.4f}. "
        f"frozen: only the head trains; finetune: every surviving weight, mask fixed. "
        f"Resets: late = the level's trained weights (random tickets: the dense trained "
        f"weights), init = θ0, fresh = a new initialisation.\n\n"
        + format_table(result["rows"])
        + "\n\n![target accuracy against density](transfer.png)\n"
    )


def plot(result: dict, path: Path) -> Path | None:
    """Target accuracy (%) against the source level's density (log scale, densest left), one
    panel per freeze mode, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return None
    rows = result["rows"]
    freezes = list(dict.fromkeys(r["freeze"] for r in rows))
    fig, axes = plt.subplots(1, len(freezes), figsize=(5.5 * len(freezes), 4), squeeze=False)
    for ax, freeze in zip(axes[0], freezes, strict=True):
        mine = [r for r in rows if r["freeze"] == freeze]
        for reset in dict.fromkeys(r["reset"] for r in mine if r["kind"] != "dense"):
            for kind, style in (("ticket", "-o"), ("random", "--x")):
                line = sorted((r["density"], 100 * r["test_accuracy"]) for r in mine
                              if r["kind"] == kind and r["reset"] == reset)  # fmt: skip
                if line:
                    ax.plot(*zip(*line, strict=True), style, color=_COLOURS.get(reset),
                            label=f"{kind} ({reset})")  # fmt: skip
        for r in mine:
            if r["kind"] == "dense":
                ax.axhline(100 * r["test_accuracy"], color="black", ls=":", label="dense transfer")
        ax.set_xscale("log")
        ticks = sorted({r["density"] for r in mine}, reverse=True)
        ax.set_xticks(ticks, [f"{100 * d:.3g}%" for d in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_xaxis()
        ax.set(xlabel="density of the source ticket", ylabel="target test accuracy (%)",
               title=f"{result['source']['dataset']} → {result['target']}: {freeze}")  # fmt: skip
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_results(result: dict, folder: Path) -> list[Path]:
    """transfer.json (the result), transfer.md and transfer.png into `folder`."""
    markdown = format_markdown(result)
    return write_files(folder, "transfer", result, markdown, lambda png: plot(result, png))


__all__ = ["format_table", "format_markdown", "plot", "write_results"]
