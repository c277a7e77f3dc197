"""What the benchmarks share: the machine description and interleaved timing.

Methods are timed interleaved, round by round, each round in a new random order (seeded, so
reruns take the same orders), so that the drifts and stalls of a shared machine hit all of them
alike and no method always runs after the same other one (a fixed rotation keeps each method's
predecessor, and with it whatever cache or allocator state that predecessor leaves); ratios are
medians over rounds of the per-round ratio.
"""

import datetime
import json
import os
import platform
import random
import statistics
import time

import torch

from sparse_lottery import _registry


def machine(device: str, ops: tuple[str, ...]) -> dict:
    """Date, versions, CPU/GPU and the backend serving each op in `ops` on `device`."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "backends": {op: _registry.selected_backend(op, device) for op in ops},
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Timer:
    """Seconds per call of fn over `inner` back-to-back calls (CUDA events on a GPU)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, inner: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def interleaved(steps: dict, timer: Timer, rounds: int, min_round_s: float) -> dict:
    """Per-method lists of seconds per call, one per round; every round times each method once,
    in a random order, after a warm-up (allocator, BLAS buffers, lazy init)."""
    names = list(steps)
    for name in names:
        for _ in range(3):
            steps[name]()
    timer.sync()
    t1 = {name: min(timer(steps[name], 1) for _ in range(3)) for name in names}
    inner = {name: max(1, int(min_round_s / max(t1[name], 1e-7))) for name in names}
    samples = {name: [] for name in names}
    orders = random.Random(0)
    for _ in range(rounds):
        order = orders.sample(names, len(names))
        for name in order:
            samples[name].append(timer(steps[name], inner[name]))
    return samples


def paired_ratio(samples: dict, num: str, den: str) -> float:
    """Median over rounds of num/den, both timed in the same round (robust to drifts)."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den]))


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def results_path(name: str, quick: bool, out: str | None = None) -> str:
    """Where a benchmark writes <path>.json and .md: `out` when given, else
    benchmarks/results/<name>, ending in `_quick` for a --quick run (a smoke run never
    overwrites the committed full-size results)."""
    return out or os.path.join(RESULTS, name + ("_quick" if quick else ""))


def write_results(out: str, payload: dict, report: str) -> None:
    """`payload` as <out>.json and the Markdown `report` as <out>.md (folders made as needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(report)
