"""Progress of long loops: a bar with rate and ETA on a terminal, a log line every few seconds
otherwise (CI logs, files).

Example:
    >>> bar = Progress(total=100, label="level 0", enabled=False)
    >>> for _ in range(100):
    ...     bar.update(1, loss=0.5)
    >>> bar.close()
"""

import logging
import sys
import time

log = logging.getLogger("sparse_lottery")


class Progress:
    """`total` steps of work named `label`, `start` of them done before (a resumed run); shown
    on stderr when `enabled`: redrawn at most 5 times a second on a terminal, else logged every
    `every_s` seconds."""

    def __init__(self, total: int, label: str, start: int = 0, enabled: bool = True,
                 every_s: float = 10.0) -> None:  # fmt: skip
        self.total, self.label, self.done, self.first = total, label, start, start
        self.enabled, self.every_s = enabled, every_s
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        self.info: dict[str, float] = {}

    def update(self, n: int = 1, **info: float) -> None:
        """`n` more steps done; `info` (e.g. loss=0.5) is shown after the rate and ETA."""
        self.done += n
        self.info.update(info)
        now = time.perf_counter()
        if not self.enabled or (now - self.last < (0.2 if self.tty else self.every_s)):
            return
        self.last = now
        self._show(now)

    def line(self, now: float | None = None) -> str:
        """The progress text: label, count, percent, rate, ETA and the latest info."""
        now = time.perf_counter() if now is None else now
        rate = (self.done - self.first) / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        extra = "  ".join(f"{k} {v:.4g}" for k, v in self.info.items())
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        return (f"{self.label} [{bar}] {self.done}/{self.total}  {rate:.1f} it/s  "
                f"ETA {_clock(eta)}  {extra}")  # fmt: skip

    def _show(self, now: float) -> None:
        if self.tty:
            sys.stderr.write("\r" + self.line(now)[:160].ljust(120))
            sys.stderr.flush()
        else:
            log.info("%s", self.line(now))

    def close(self) -> None:
        """Show the final state (and end the terminal line)."""
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r" + self.line()[:160].ljust(120) + "\n")
            sys.stderr.flush()
        else:
            log.info("%s", self.line())


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
