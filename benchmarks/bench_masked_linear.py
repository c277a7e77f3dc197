"""Training-step benchmark of masked linear layers: forward + backward, input requiring grad.

Compares, in one run and on the same random data:
  fused_packed  sparse_lottery.ops.masked_linear with a packed (1-bit) mask
  fused_bool    sparse_lottery.ops.masked_linear with a bool mask
  dense         F.linear(x, w, b)                 (no mask: the floor)
  w*m           F.linear(x, w * m, b)             (float mask, the usual hand-written way)
  prune         nn.Linear + torch.nn.utils.prune.custom_from_mask (weight_orig * weight_mask)

Every method runs y = layer(x); y.backward(gy) with a fixed random gy and fresh gradients
(grad = None, as zero_grad(set_to_none=True) does). Methods are timed interleaved, round by round,
so that drifts of a shared machine hit all of them alike; times are medians over rounds, ratios
medians over rounds of the per-round ratio.

    python benchmarks/bench_masked_linear.py                  # CPU, fp32, full sweep
    python benchmarks/bench_masked_linear.py --device cuda    # GPU: 8192 tokens, bf16
    python benchmarks/bench_masked_linear.py --quick          # smoke run, tiny shapes

Writes <out>.json and <out>.md (default benchmarks/results/masked_linear_<device>) and prints the
Markdown table and one PASS/FAIL line per target.
"""

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, interleaved, machine, paired_ratio, results_path, write_results  # noqa: E402

import sparse_lottery as sl  # noqa: E402

SPARSITIES = (0.0, 0.5, 0.9, 0.95, 0.99)
METHODS = ("fused_packed", "fused_bool", "dense", "w*m", "prune")
NOISE = 0.02  # allowed slack for "never slower than w*m" (shared-machine measurement noise)
PRUNE_TARGET = 1.3  # fused must beat prune by this factor at the large shape


def shapes(device: str, quick: bool):
    """(name, batch, in_features, out_features, large) per benchmarked layer."""
    if quick:
        return [("tiny 8x64->32", 8, 64, 32, False), ("small 16x300->100", 16, 300, 100, True)]
    big = (
        ("8192x4096->4096", 8192, 4096, 4096, True)
        if device == "cuda"
        else ("256x4096->4096", 256, 4096, 4096, True)
    )
    return [
        ("LeNet 128x784->300", 128, 784, 300, False),
        ("LeNet 128x300->100", 128, 300, 100, False),
        big,
    ]


def make_steps(batch, k, n, sparsity, dtype, device, gen):
    """One closure per method running a full training step on shared random data."""
    x = torch.randn(batch, k, generator=gen, dtype=dtype, device="cpu").to(device)
    x.requires_grad_(True)
    w0 = torch.randn(n, k, generator=gen, dtype=dtype).to(device) / k**0.5
    b0 = torch.randn(n, generator=gen, dtype=dtype).to(device)
    gy = torch.randn(batch, n, generator=gen, dtype=dtype).to(device)
    mask = (torch.rand(n, k, generator=gen) >= sparsity).to(device)
    packed = sl.pack_mask(mask)
    fmask = mask.to(dtype)
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    lin = torch.nn.Linear(k, n, device=device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(w0)
        lin.bias.copy_(b0)
    prune.custom_from_mask(lin, "weight", mask)
    params = (x, w, b, lin.weight_orig, lin.bias)

    def run(forward):
        def step():
            for p in params:
                p.grad = None
            forward().backward(gy)

        return step

    steps = {
        "fused_packed": run(lambda: sl.ops.masked_linear(x, w, packed, b)),
        "fused_bool": run(lambda: sl.ops.masked_linear(x, w, mask, b)),
        "dense": run(lambda: F.linear(x, w, b)),
        "w*m": run(lambda: F.linear(x, w * fmask, b)),
        "prune": run(lambda: lin(x)),
    }
    # Correctness before speed: the fused op against the float-mask product.
    with torch.no_grad():
        ref = F.linear(x.double(), (w0 * fmask).double(), b0.double())
        out = sl.ops.masked_linear(x, w0, packed, b0).double()
        err = (out - ref).abs().max().item() / max(1.0, ref.abs().max().item())
        tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
        assert err <= tol, f"fused output differs from F.linear(x, w*m): rel err {err:.3g}"
    return steps


def markdown(rows, info, targets) -> str:
    lines = [
        f"# masked_linear training step ({info['device']}, {rows[0]['dtype'] if rows else ''})",
        "",
        f"{info['date']} · torch {info['torch']} · {info.get('gpu') or info['cpu']} · "
        f"{info['threads']} threads · {info['platform']}",
        "",
        "Forward + backward (input, weight and bias gradients), median ms over interleaved "
        "rounds. Speedups (> 1: the fused op with a packed mask is faster) and fused/dense are "
        "medians of per-round ratios (methods timed back to back in each round).",
        "",
        "| layer | sparsity | fused packed ms | fused bool ms | dense ms | w*m ms | prune ms "
        "| vs w*m | vs prune | fused/dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["ms"]
        lines.append(
            f"| {r['layer']} | {r['sparsity']:.2f} | {t['fused_packed']:.3f} | "
            f"{t['fused_bool']:.3f} | {t['dense']:.3f} | {t['w*m']:.3f} | {t['prune']:.3f} | "
            f"{r['speedup_vs_wm']:.3f}× | {r['speedup_vs_prune']:.3f}× | "
            f"{r['ratio_to_dense']:.3f} |"
        )
    lines += ["", *targets, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per config")
    parser.add_argument("--out", default=None, help="output path without extension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", default="", help="only layers whose name contains this")
    args = parser.parse_args(argv)

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU visible")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    rounds = args.rounds or (3 if args.quick else 21)
    min_round_s = 0.002 if args.quick else 0.1
    out = results_path(f"masked_linear_{device}", args.quick, args.out)
    info = machine(device, ("masked_linear", "masked_linear_backward"))
    gen = torch.Generator().manual_seed(args.seed)
    timer = Timer(device)
    sparsities = (0.0, 0.9) if args.quick else SPARSITIES

    rows, targets, failed = [], [], 0
    for layer, batch, k, n, large in shapes(device, args.quick):
        if args.layers not in layer:
            continue
        for s in sparsities:
            steps = make_steps(batch, k, n, s, dtype, device, gen)
            samples = interleaved(steps, timer, rounds, min_round_s)
            ms = {m: statistics.median(samples[m]) * 1e3 for m in METHODS}
            row = {
                "layer": layer,
                "batch": batch,
                "in_features": k,
                "out_features": n,
                "sparsity": s,
                "dtype": str(dtype).removeprefix("torch."),
                "ms": ms,
                "min_ms": {m: min(samples[m]) * 1e3 for m in METHODS},
                "samples_ms": {m: [v * 1e3 for v in samples[m]] for m in METHODS},
                "speedup_vs_wm": paired_ratio(samples, "w*m", "fused_packed"),
                "speedup_vs_prune": paired_ratio(samples, "prune", "fused_packed"),
                "ratio_to_dense": paired_ratio(samples, "fused_packed", "dense"),
                "bool_speedup_vs_wm": paired_ratio(samples, "w*m", "fused_bool"),
            }
            rows.append(row)
            ok = row["speedup_vs_wm"] >= 1 - NOISE
            failed += not ok
            targets.append(
                f"{'PASS' if ok else 'FAIL'}: fused (packed) not slower than F.linear(x, w*m) "
                f"[{layer}, sparsity {s:.2f}]: {row['speedup_vs_wm']:.3f}× "
                f"(needs ≥ {1 - NOISE:.2f}, noise allowance {NOISE:.0%})"
            )
            if large:
                ok = row["speedup_vs_prune"] >= PRUNE_TARGET
                failed += not ok
                targets.append(
                    f"{'PASS' if ok else 'FAIL'}: fused (packed) ≥ {PRUNE_TARGET}× faster than "
                    f"torch.nn.utils.prune [{layer}, sparsity {s:.2f}]: "
                    f"{row['speedup_vs_prune']:.3f}×"
                )
            print(
                f"{layer} sparsity {s:.2f}: " + ", ".join(f"{m} {ms[m]:.3f} ms" for m in METHODS),
                flush=True,
            )

    md = markdown(rows, info, targets)
    print()
    print(md)
    payload = {"machine": info, "rounds": rounds, "noise_allowance": NOISE, "targets": targets}
    write_results(out, payload | {"rows": rows}, md)
    print(f"wrote {out}.json and {out}.md")
    # The quick run is a smoke test: tiny layers are dominated by per-call overheads, so its
    # PASS/FAIL lines are informational and do not set the exit status.
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
