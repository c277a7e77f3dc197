"""`report`: Markdown + a self-contained HTML page, with plots, of every experiment under a root.

Per experiment: the hyperparameters that differ from the defaults, a table per level (density,
test accuracy of the ticket and of every branch kind, mean ± spread over replicates), and plots:
accuracy vs density (log axis, one line per method, the band spans the replicates), per-layer
density by level, early-stopping iteration vs density, and time per level. Then one section per
analysis result found under the root (`stability`, `sanity`, `finetune`, `jackpot`, `transfer`,
`overlap`: each analysis's own Markdown and plot).

Example:
    >>> from sparse_lottery.lottery.report import write_report
    >>> out = write_report("runs")  # doctest: +SKIP
"""

import base64
import html
import json
import statistics
from collections import defaultdict
from pathlib import Path

from . import checkpoint

REPORT_FIX = "delete it and rerun the experiment: the step that wrote it is redone"


def collect(root: str | Path) -> list[dict]:
    """[{"name", "config", "rows": [{"replicate", "level", "method", **summary}]}] for every
    experiment folder under `root` (finished levels and branches only)."""
    experiments = []
    for config_path in sorted(Path(root).glob("lottery_*/config.json")):
        folder = config_path.parent
        config = checkpoint.read_json(config_path, REPORT_FIX)
        rows = []
        for summary_path in sorted(folder.glob("replicate_*/level_*/**/summary.json")):
            rel = summary_path.relative_to(folder).parts
            if len(rel) > 4 or (len(rel) == 4 and not rel[2].startswith("branch_")):
                continue  # an analysis's training (stability copies, rewind points)
            replicate = int(rel[0].removeprefix("replicate_"))
            level = int(rel[1].removeprefix("level_"))
            summary = checkpoint.read_json(summary_path, REPORT_FIX)
            method = "ticket"
            if len(rel) == 4:
                kind = rel[2].removeprefix("branch_").rsplit("_", 1)[0]
                method = _method(kind, summary.get("experiment", {}), config.get("experiment"))
            rows.append({"replicate": replicate, "level": level, "method": method, **summary})
        experiments.append({"name": folder.name, "config": config, "rows": rows})
    return experiments


def _method(kind: str, branch: dict, run: dict | None) -> str:
    """A branch's method name: its kind, and the training or data settings that differ from the
    run's ("retrain (lr=0.5)"), so that branches with other settings are not pooled as one."""
    changed = [f"{k}={v}" for section in ("dataset", "training")
               for k, v in branch.get(section, {}).items()
               if run is not None and v != run.get(section, {}).get(k)]  # fmt: skip
    return f"{kind} ({', '.join(changed)})" if changed else kind


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.fmean(values), min(values), max(values)


def _by(rows, *keys):
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def table(rows: list[dict]) -> str:
    """Markdown: one line per level; per method the mean test accuracy (min–max over
    replicates when there are several)."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "ticket", m))
    head = ["level", "density", *[f"{m} acc" for m in methods], "early stop it", "seconds"]
    body = []
    groups = _by(rows, "level", "method")
    for level in sorted({r["level"] for r in rows}):
        ticket = groups.get((level, "ticket"), [])
        dens = statistics.fmean(r["density"] for r in ticket) if ticket else float("nan")
        cells = [str(level), f"{dens:.4f}"]
        for method in methods:
            group = groups.get((level, method))
            if not group:
                cells.append("–")
                continue
            mean, lo, hi = _spread([r["test_accuracy"] for r in group])
            cells.append(f"{mean:.4f}" + (f" ({lo:.4f}–{hi:.4f})" if len(group) > 1 else ""))
        stops = [r["early_stop_step"] for r in ticket if r["early_stop_step"] is not None]
        cells.append(str(round(statistics.fmean(stops))) if stops else "–")
        cells.append(f"{statistics.fmean(r['seconds'] for r in ticket):.1f}" if ticket else "–")
        body.append(cells)
    return markdown_table(head, body)


def plot(rows: list[dict], out: Path) -> list[Path]:
    """The four figures of one experiment as PNGs in `out`; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, group in sorted(_by(rows, "method").items()):
        levels = _by(group, "level")
        xs = sorted(levels, key=lambda k: -statistics.fmean(r["density"] for r in levels[k]))
        dens = [statistics.fmean(r["density"] for r in levels[k]) for k in xs]
        stats = [_spread([r["test_accuracy"] for r in levels[k]]) for k in xs]
        ax.plot(dens, [s[0] for s in stats], marker="o", label=method[0])
        ax.fill_between(dens, [s[1] for s in stats], [s[2] for s in stats], alpha=0.2)
    ax.set(xscale="log", xlabel="density (log)", ylabel="test accuracy",
           title="accuracy vs density")  # fmt: skip
    ax.invert_xaxis()
    paths.append(_save(fig, ax, out / "accuracy_vs_density.png"))

    first = min(r["replicate"] for r in rows)
    ticket = [r for r in rows if r["method"] == "ticket" and r["replicate"] == first]
    ticket.sort(key=lambda r: r["level"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in ticket[0]["layer_density"] if ticket else []:
        ax.plot([r["level"] for r in ticket], [r["layer_density"][layer] for r in ticket],
                marker=".", label=layer or "(root)")  # fmt: skip
    ax.set(yscale="log", xlabel="level", ylabel="density (log)", title="per-layer density")
    paths.append(_save(fig, ax, out / "layer_density.png", legend_size=7))

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, group in sorted(_by(rows, "method").items()):
        pts = [(r["density"], r["early_stop_step"]) for r in group if r["early_stop_step"]]
        if pts:
            ax.scatter(*zip(*pts), label=method[0], s=14)
    ax.set(xscale="log", xlabel="density (log)", ylabel="iteration of min test loss",
           title="early-stopping iteration")  # fmt: skip
    ax.invert_xaxis()
    paths.append(_save(fig, ax, out / "early_stop.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    levels = sorted({r["level"] for r in ticket})
    ax.bar(levels, [statistics.fmean(r["seconds"] for r in ticket if r["level"] == lv)
                    for lv in levels])  # fmt: skip
    ax.set(xlabel="level", ylabel="seconds", title="training time per level (ticket)")
    paths.append(_save(fig, ax, out / "time_per_level.png", legend_size=None, grid_axis="y"))
    return paths


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the header line, its rule, then one line per row of cells.

    Example:
        >>> print(markdown_table(["a", "b"], [["1", "2"]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def save_figure(fig, path: Path) -> Path:
    """`fig` laid out tightly, written to `path` (its folder made) at 110 dpi, and closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(
    fig, ax, path: Path, legend_size: int | str | None = "medium", grid_axis: str = "both"
) -> Path:
    """Legend (unless `legend_size` is None) and grid on `ax`, then `fig` written to `path`."""
    if legend_size is not None:
        ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3, axis=grid_axis)
    return save_figure(fig, path)


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.md` and `report.html` (images embedded) into `out` (default
    `<root>/report`); returns the folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: {root} is not a folder (run `sparse-lottery imp` first)")
    out = Path(out) if out else root / "report"
    experiments = collect(root)
    if not experiments:
        raise FileNotFoundError(f"root: no experiment (lottery_*/config.json) under {root}")
    md, body = ["# sparse_lottery report", ""], ["<h1>sparse_lottery report</h1>"]
    for exp in experiments:
        rows = exp["rows"]
        settings = json.dumps(exp["config"]["non_default"]) or "{}"
        md += [f"## {exp['name']}", "", f"Non-default hyperparameters: `{settings}`", ""]
        body += [
            f"<h2>{html.escape(exp['name'])}</h2>",
            f"<p>Non-default hyperparameters: <code>{html.escape(settings)}</code></p>",
        ]
        if not rows:
            md += ["No finished level yet.", ""]
            body.append("<p>No finished level yet.</p>")
            continue
        text = table(rows)
        md += [text, ""]
        body.append(_html_table(text))
        for path in plot(rows, out / exp["name"]):
            md.append(f"![{path.stem}]({path.relative_to(out)})")
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<img alt="{path.stem}" src="data:image/png;base64,{data}">')
        md.append("")
    more_md, more_html = analysis_sections(root, out)
    md += more_md
    body += more_html
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(md) + "\n")
    style = "body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{padding:2px 8px}"
    head = f"<meta charset='utf-8'><title>sparse_lottery report</title><style>{style}</style>"
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
    return out


ANALYSES = ("stability", "sanity", "finetune", "jackpot", "transfer", "overlap")


def analysis_sections(root: Path, out: Path) -> tuple[list[str], list[str]]:
    """Markdown lines and HTML parts of every analysis result under `root`: the analysis's own
    Markdown (headings demoted below the report's) and its plot, copied to `out/analyses/`."""
    md, body = [], []
    found = [(name, path) for name in ANALYSES for path in sorted(root.glob(f"**/{name}.md"))]
    if found:
        md += ["# Analyses", ""]
        body.append("<h1>Analyses</h1>")
    for name, path in found:
        where = path.parent.relative_to(root)
        md += [f"## {name}: `{where}`", ""]
        body.append(f"<h2>{html.escape(name)}: <code>{html.escape(str(where))}</code></h2>")
        text = "\n".join(
            "##" + line if line.startswith("#") else line for line in path.read_text().splitlines()
        )
        md += [text, ""]
        body.append(f"<pre>{html.escape(text)}</pre>")
        image = path.with_suffix(".png")
        if image.is_file():
            copy = out / "analyses" / f"{'_'.join(where.parts) or 'root'}_{image.name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            png = image.read_bytes()
            copy.write_bytes(png)
            md += [f"![{name}]({copy.relative_to(out)})", ""]
            data = base64.b64encode(png).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    return md, body


def _html_table(markdown: str) -> str:
    lines = [line.strip("|").split("|") for line in markdown.splitlines()]
    head, rows = lines[0], lines[2:]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"
