"""Global magnitude selection at model scale: `sparse_lottery.ops.magnitude_prune` against what
users do today.

Each size N is a pool of 8 weight tensors of mixed shapes (like a model's layers) with bool
masks at density 0.8 (a second IMP level); every method removes 20% of the survivors.

  ours bool / ours packed   magnitude_prune with bool / packed masks: new masks, exact count
  kthvalue, topk, sort,     torch on the magnitudes already concatenated into one vector
  quantile                  (the concatenation is *not* timed: the baselines get a head start),
                            computing only a threshold, not the masks
  global_unstructured       torch.nn.utils.prune.global_unstructured(L1Unstructured), whole

Reported per method: median seconds, GB/s and its share of the copy bandwidth measured in the
same run, speedup of ours over each baseline, and peak extra memory (CPU: the process's peak RSS
above its level before the call, the C heap's free pages released to the OS first so that reused
memory counts, with the kernel's output masks subtracted for ours; CUDA: the caching
allocator's peak). GB/s counts the bytes a single ideal pass moves: the weights and
masks read once, the new masks written once; the copy bandwidth is that of `out.copy_(w)` (read
+ write bytes) on the pool's largest tensor.

    python benchmarks/bench_selection.py                  # CPU: 1e6 ... 2e8 weights, fp32
    python benchmarks/bench_selection.py --device cuda    # GPU: 1e6 ... 1e9 weights, fp32
    python benchmarks/bench_selection.py --quick          # smoke run, small sizes

Writes <out>.json and <out>.md (default benchmarks/results/selection_<device>) and prints the
Markdown table and one PASS/FAIL line per target.
"""

import argparse
import contextlib
import ctypes
import gc
import os
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, results_path, write_results  # noqa: E402

import sparse_lottery as sl  # noqa: E402

DENSITY, AMOUNT = 0.8, 0.2
SHARES = (1, 3, 2, 8, 4, 6, 1, 5)  # relative sizes of the pool's 8 tensors
BASELINES = ("kthvalue", "topk", "sort", "quantile", "global_unstructured")
# Targets of issue #3: (device, smallest N, largest N, baseline, speedup, bandwidth share).
TARGETS = {
    "cpu": [(5 * 10**7, 5 * 10**7, "kthvalue", 20.0, 0.25)],
    "cuda": [(10**8, 10**9, "sort", 100.0, 0.50)],
}
MEMORY_TARGET = 0.10  # peak extra memory of ours, as a share of the weights' bytes
BASELINE_BUDGET_S = 60.0  # per baseline and size: fewer repetitions beyond this


def sizes(device: str, quick: bool) -> list[int]:
    if quick:
        return [10**5, 10**6]
    return [10**6, 10**7, 5 * 10**7, 2 * 10**8] if device == "cpu" else [10**6, 10**7, 10**8, 10**9]


def make_pool(n: int, device: str, dtype: torch.dtype, seed: int = 0):
    """8 weight tensors (rows, cols) holding about n weights, and bool masks at DENSITY."""
    g = torch.Generator(device=device).manual_seed(seed)
    weights, masks = [], []
    for share in SHARES:
        numel = max(1, n * share // sum(SHARES))
        rows = max(1, int(numel**0.5) // 8 * 8)
        shape = (rows, max(1, numel // rows))
        weights.append(
            torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
        )
        masks.append(torch.rand(shape, generator=g, device=device) < DENSITY)
    return weights, masks


# --------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: str, reps: int, budget: float = float("inf")) -> tuple[float, int]:
    """Median wall time of fn() after one warm-up call (skipped when that call alone exceeds the
    budget, which then also caps the repetitions); returns (seconds, repetitions)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    if first * (reps + 1) > budget:
        reps = max(1, int(budget / first) - 1)
        if reps == 1:
            return first, 1
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), reps


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _release_free_heap() -> None:
    """Returns the C heap's free pages to the OS (glibc), so that memory fn() takes from the heap
    shows in the RSS instead of hiding in pages already resident from earlier calls."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: reused memory may hide
        ctypes.CDLL(None).malloc_trim(0)


def peak_extra_bytes(fn, device: str) -> int:
    """Peak memory fn() needs above what was in use before it, its returned tensors included
    (CPU: page-granular, so a few KiB of noise)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        _release_free_heap()
        before = _rss("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        out = fn()
        peak = _rss("VmHWM")
    del out
    return peak - before


def check_memory_probe(nbytes: int, device: str) -> None:
    """The probe must see a known allocation of nbytes (written, so resident) within 5%, once
    warm (like every method measured: their first call pays one-time costs)."""

    def alloc():
        return torch.ones(nbytes, dtype=torch.uint8, device=device)

    alloc()
    got = peak_extra_bytes(alloc, device)
    if abs(got - nbytes) > 0.05 * nbytes + 65536:
        raise RuntimeError(f"memory probe: a {nbytes}-byte tensor read as {got} bytes")


def copy_bandwidth(weights, device: str) -> float:
    """Read + write bytes per second of copying the pool's largest tensor."""
    w = max(weights, key=torch.Tensor.numel)
    out = torch.empty_like(w)
    t, _ = median_time(lambda: out.copy_(w), device, reps=10)
    return 2 * w.numel() * w.element_size() / t


# --------------------------------------------------------------------------- methods
def ours(weights, masks):
    return sl.ops.magnitude_prune(weights, masks, AMOUNT).masks


def baseline(name: str, weights, masks):
    """A callable running baseline `name`, or None where it does not apply at this size."""
    if name == "global_unstructured":
        if sum(w.numel() for w in weights) > 5 * 10**7:  # it copies every weight several times
            return None
        return lambda: global_unstructured(weights, masks)
    mags = torch.cat([(w.abs() * m).reshape(-1).float() for w, m in zip(weights, masks)])
    survivors = int(sum(int(m.sum()) for m in masks))
    k = mags.numel() - survivors + round(AMOUNT * survivors)  # zeros of pruned weights first
    return {
        "kthvalue": lambda: torch.kthvalue(mags, k).values,
        "topk": lambda: torch.topk(mags, k, largest=False).values,
        "sort": lambda: torch.sort(mags).values[k - 1],
        "quantile": lambda: torch.quantile(mags, k / mags.numel()),
    }[name]


def global_unstructured(weights, masks):
    """torch.nn.utils.prune's global L1 pruning of layers already pruned by `masks`."""
    layers = []
    for w, m in zip(weights, masks):
        layer = nn.Module()
        layer.weight = nn.Parameter(w.clone())
        prune.custom_from_mask(layer, "weight", m)
        layers.append(layer)
    params = [(layer, "weight") for layer in layers]
    prune.global_unstructured(params, prune.L1Unstructured, amount=AMOUNT)
    return [layer.weight_mask for layer in layers]


def measure_size(n: int, device: str, dtype: torch.dtype, reps: int) -> dict:
    weights, masks = make_pool(n, device, dtype)
    packed = [sl.pack_mask(m) for m in masks]
    nominal, n = n, sum(w.numel() for w in weights)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    row = {
        "nominal": nominal,
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "weight_bytes": weight_bytes,
    }
    row["copy_gbs"] = copy_bandwidth(weights, device) / 1e9
    check_memory_probe(weight_bytes // 10, device)
    # Correctness first: ours must remove exactly the k smallest, like the sort oracle.
    got = ours(weights, masks)
    expected = sl.reference.magnitude_prune(weights, masks, [AMOUNT], False, False)[0]
    if n <= 5 * 10**7 and not all(torch.equal(a, b) for a, b in zip(got, expected)):
        raise AssertionError(f"magnitude_prune disagrees with the sort reference at n={n}")
    del got, expected
    for label, mask_list, mask_bytes in (
        ("ours bool", masks, n),
        ("ours packed", packed, sum(p.numel() for p in packed)),
    ):
        t, r = median_time(lambda ml=mask_list: ours(weights, ml), device, reps)
        moved = weight_bytes + 2 * mask_bytes
        extra = peak_extra_bytes(lambda ml=mask_list: ours(weights, ml), device) - mask_bytes
        row[label] = {
            "s": t,
            "reps": r,
            "gbs": moved / t / 1e9,
            "extra_bytes": extra,
        }
    for name in BASELINES:
        try:
            fn = baseline(name, weights, masks)
            if fn is None:
                row[name] = {"skipped": "needs several copies of the weights (n > 5e7)"}
                continue
            t, r = median_time(fn, device, reps, BASELINE_BUDGET_S)
            extra = peak_extra_bytes(fn, device)
            row[name] = {"s": t, "reps": r, "extra_bytes": extra}
        except (RuntimeError, MemoryError) as exc:  # e.g. a size limit of the op
            row[name] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
        finally:
            fn = None
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- report
def markdown(rows, info) -> str:
    head = [
        f"# Global magnitude selection ({info['device']}, {rows[0]['dtype'] if rows else ''})",
        "",
        f"{info['date']} · torch {info['torch']} · {info['cpu']} · {info['threads']} threads"
        + (f" · {info['gpu']}" if "gpu" in info else "")
        + f" · backend {info['backends']['magnitude_prune']}",
        "",
        f"8 tensors, bool masks at density {DENSITY}, remove {AMOUNT:.0%} of the survivors. "
        "Median seconds; GB/s = (weights + masks read + new masks written) / time; copy = "
        "`copy_` read+write bandwidth in the same run; speedup = baseline time / ours (bool) "
        "time; extra = peak memory above the level before the call (ours: output masks "
        "excluded), as a share of the weights' bytes. Baselines run on the concatenated "
        "magnitudes (concatenation not timed) and return only a threshold.",
        "",
        "| N | method | s | GB/s | % of copy | speedup of ours | extra memory |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = []
    for row in rows:
        ref = row["ours bool"]["s"]
        for label in ("ours bool", "ours packed", *BASELINES):
            m = row[label]
            if "skipped" in m:
                lines.append(f"| {row['n']:.0e} | {label} | n/a | | | | {m['skipped']} |")
                continue
            gbs = f"{m['gbs']:.3g}" if "gbs" in m else ""
            share = f"{m['gbs'] / row['copy_gbs']:.0%}" if "gbs" in m else ""
            speedup = "" if label.startswith("ours") else f"{m['s'] / ref:.1f}×"
            extra = f"{m['extra_bytes'] / row['weight_bytes']:.1%}"
            lines.append(
                f"| {row['n']:.0e} | {label} | {m['s']:.4g} | {gbs} | {share} | {speedup} | "
                f"{extra} |"
            )
        lines.append(f"| {row['n']:.0e} | copy | | {row['copy_gbs']:.2f} | 100% | | |")
    return "\n".join(head + lines) + "\n"


def verdicts(rows, device: str) -> list[str]:
    out = []
    for lo, hi, name, speedup, share in TARGETS[device]:
        for row in rows:
            if not lo <= row["nominal"] <= hi:
                continue
            ours_row, base = row["ours bool"], row[name]
            if "skipped" in base:
                out.append(f"FAIL: {name} could not run at n={row['n']:.0e}: {base['skipped']}")
                continue
            got = base["s"] / ours_row["s"]
            ok = "PASS" if got >= speedup else "FAIL"
            out.append(f"{ok}: ≥ {speedup:.0f}× faster than {name} [n={row['n']:.0e}]: {got:.1f}×")
            got = ours_row["gbs"] / row["copy_gbs"]
            ok = "PASS" if got >= share else "FAIL"
            out.append(
                f"{ok}: ≥ {share:.0%} of copy bandwidth [n={row['n']:.0e}]: {got:.0%} "
                f"({ours_row['gbs']:.2f} of {row['copy_gbs']:.2f} GB/s)"
            )
    for row in rows:
        for label in ("ours bool", "ours packed"):
            got = row[label]["extra_bytes"] / row["weight_bytes"]
            ok = "PASS" if got <= MEMORY_TARGET else "FAIL"
            out.append(
                f"{ok}: peak extra memory ≤ {MEMORY_TARGET:.0%} of the weights [{label}, "
                f"n={row['n']:.0e}]: {got:.1%}"
            )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--sizes", type=float, nargs="*", help="pool sizes (default: sweep)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per method")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--out", help="output path without extension")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU visible")
    dtype = getattr(torch, args.dtype)
    info = machine(args.device, ("magnitude_prune",))
    rows = []
    for n in [int(s) for s in args.sizes] if args.sizes else sizes(args.device, args.quick):
        print(f"== n = {n:.0e}", flush=True)
        rows.append(measure_size(n, args.device, dtype, args.reps))
    report = markdown(rows, info)
    checks = verdicts(rows, args.device) if not args.quick else []
    report += "\n" + "\n".join(checks) + ("\n" if checks else "")
    print(report)
    out = results_path(f"selection_{args.device}", args.quick, args.out)
    write_results(out, {"machine": info, "rows": rows, "checks": checks}, report)
    print(f"wrote {out}.json and {out}.md")
    return 1 if any(c.startswith("FAIL") for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
