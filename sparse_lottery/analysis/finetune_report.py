"""The fine-tuning comparison (`finetune.py`) as Markdown tables, a plot and the files
`finetune.json`, `finetune.md` and `finetune.png`. Replicates are averaged: "mean ± sd".

Example:
    >>> print(cell([90.0, 92.0]), cell([91.0]))
    91.00 ± 1.41 91.00
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from ..lottery.report import _save, markdown_table
from ._output import write_files
from .sanity import _jsonable, _key

LABELS = {"lt": "LT", "rr": "RR", "rewind": "rewind", "finetune": "fine-tune"}
R_P_COLUMNS = {
    "init_vs_pretrained": "θ0 vs pretrained θT",
    "lt": "LT: θ0 vs trained",
    "rr": "RR: θ0' vs trained",
    "rewind": "rewind: θk vs trained",
    "finetune": "fine-tuned vs pretrained θT",
}


def cell(values: list[float]) -> str:
    """ "mean ± sd" of replicate values (just the value for one)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def group(rows: list[dict]) -> dict[tuple[float, int], list[dict]]:
    """Rows by (lr, level), in order of appearance: the replicates of one point."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["lr"], row["level"])].append(row)
    return dict(groups)


def _mean_rp(rows: list[dict], column: str, ps: list[float]) -> str:
    return " / ".join(f"{statistics.fmean(r['r_p'][column][p] for r in rows):.3f}" for p in ps)


def format_markdown(result: dict) -> str:
    """Accuracy per (sparsity, lr) and method with the winner, the dense networks, and R_p.

    Example:
        >>> row = {"lr": 0.1, "replicate": 0, "level": 1, "sparsity": 0.2,
        ...        "accuracy": {"lt": 90.0, "rr": 89.0, "rewind": 90.5, "finetune": 91.0},
        ...        "r_p": {c: {0.5: 0.6} for c in R_P_COLUMNS}}
        >>> result = {"rows": [row], "dense": [], "ps": [0.5], "k": 40,
        ...           "methods": list(LABELS)}
        >>> print(format_markdown(result).splitlines()[2])
        | 0.2000 | 1 | 0.1 | 90.00 | 89.00 | 90.50 | 91.00 | fine-tune |
    """
    methods, ps = result["methods"], result["ps"]
    names = [LABELS[m] + (f" (k={result['k']})" if m == "rewind" else "") for m in methods]
    head = ["sparsity", "level", "lr", *names, "best"]
    body = []
    groups = group(result["rows"])
    for (lr, level), rows in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        accs = {m: [r["accuracy"][m] for r in rows] for m in methods}
        best = max(methods, key=lambda m: statistics.fmean(accs[m]))
        cells = [f"{rows[0]['sparsity']:.4f}", str(level), _key(lr)]
        body.append(cells + [cell(accs[m]) for m in methods] + [LABELS[best]])
    lines = [markdown_table(head, body)]
    p_text = " / ".join(_key(p) for p in ps)
    if result["dense"]:
        lines += ["", f"Dense networks (sparsity 0); R_p(θ0, θT) at p = {p_text}", "",
                  "| lr | accuracy | R_p(θ0, θT) |", "|---|---|---|"]  # fmt: skip
        by_lr = defaultdict(list)
        for d in result["dense"]:
            by_lr[d["lr"]].append(d)
        for lr, ds in by_lr.items():
            rp = " / ".join(f"{statistics.fmean(d['r_p'][p] for d in ds):.3f}" for p in ps)
            lines.append(f"| {_key(lr)} | {cell([d['accuracy'] for d in ds])} | {rp} |")
    columns = [c for c in R_P_COLUMNS if c == "init_vs_pretrained" or c in methods]
    lines += ["", f"R_p over the surviving weights at p = {p_text} (≈ p: no correlation)", "",
              "| sparsity | lr | " + " | ".join(R_P_COLUMNS[c] for c in columns) + " |",
              "|---|---|" + "---|" * len(columns)]  # fmt: skip
    for (lr, _), rows in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        cells = [_mean_rp(rows, c, ps) for c in columns]
        lines.append(f"| {rows[0]['sparsity']:.4f} | {_key(lr)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path | None:
    """Accuracy (%) vs sparsity, one panel per method, one line per learning rate starting at
    the dense network (sparsity 0); error bars: the sd over replicates. None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    methods = result["methods"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.6), sharey=True,
                             squeeze=False)  # fmt: skip
    groups = group(result["rows"])
    for ax, method in zip(axes[0], methods):
        for lr in result["lrs"]:
            dense = [d["accuracy"] for d in result["dense"] if d["lr"] == lr]
            points = [(0.0, dense)] if dense else []
            points += sorted((rows[0]["sparsity"], [r["accuracy"][method] for r in rows])
                             for (g_lr, _), rows in groups.items() if g_lr == lr)  # fmt: skip
            x = [100 * s for s, _ in points]
            y = [statistics.fmean(v) for _, v in points]
            err = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"lr {_key(lr)}")
        ax.set(title=LABELS[method], xlabel="sparsity (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{result.get('metric', 'test_accuracy')} (%)")
    return _save(fig, axes[0][-1], path, legend_size=8)


def write_outputs(result: dict, folder: Path) -> list[Path]:
    """`finetune.json`, `finetune.md` and `finetune.png` (with matplotlib) in `folder`."""
    text = "# Pruning & fine-tuning vs lottery tickets (Liu et al. 2021)\n\n"
    text += (f"Every method trains {result['iterations']} iterations with the same schedule and "
             f"data order; only the start differs. {result['metric']} in percent, mean ± sd "
             f"over replicates {result['replicates']}.\n\n")  # fmt: skip
    text += format_markdown(result) + "\n\n![accuracy vs sparsity](finetune.png)\n"
    payload = _jsonable(result)
    return write_files(folder, "finetune", payload, text, lambda png: plot(result, png))


__all__ = ["LABELS", "R_P_COLUMNS", "cell", "format_markdown", "group", "plot", "write_outputs"]
