"""The files each analysis writes: `<name>.json`, `<name>.md`, with matplotlib `<name>.png`."""

from collections.abc import Callable
from pathlib import Path

from ..lottery import checkpoint


def write_files(
    folder: Path, name: str, payload: dict, markdown: str, draw: Callable[[Path], Path | None]
) -> list[Path]:
    """Write `payload` as JSON and `markdown` atomically into `folder`, then `draw(png path)`;
    returns the paths written (the plot's only when `draw` made one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_json(folder / f"{name}.json", payload)
    checkpoint.atomic_write(folder / f"{name}.md", markdown.encode())
    png = draw(folder / f"{name}.png")
    return [folder / f"{name}.json", folder / f"{name}.md"] + ([png] if png else [])
