"""Training step of one pruned 3×3 convolution on the CPU: `SparseConv2d` (the direct sparse
convolution) against `torch.nn.Conv2d`, both from the same weights.

A step is the forward and the backward to the input, the weights (values) and the bias (no
optimiser). The two are timed interleaved (`_common.interleaved`: rounds, each in a new random
order), and the table gives the median over rounds of each time and of the per-round ratio
conv2d / sparse (> 1: sparse faster). Layers: ResNet-20 (16→16 @32×32, 32→32 @16×16,
64→64 @8×8) and VGG-16 (256→256 @8×8, 512→512 @2×2), stride 1, padding 1.

    OMP_NUM_THREADS=2 python benchmarks/bench_sparse_conv.py [--batch 16] [--rounds 21]
    python benchmarks/bench_sparse_conv.py --quick      # smoke run: one layer, few rounds

CPU only: on CUDA `SparseConv2d` runs the dense reference convolution (`--device cuda` skips).

Writes <out>.json and <out>.md (default benchmarks/results/sparse_conv_cpu) and prints the
Markdown table.
"""

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timer, interleaved, machine, paired_ratio, results_path, write_results  # noqa: E402

import sparse_lottery as sl  # noqa: E402

LAYERS = [(16, 32), (32, 16), (64, 8), (256, 8), (512, 2)]  # (channels, map size)
SPARSITIES = [0.9, 0.95, 0.99]


def _step(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    return run


def measure(channels: int, size: int, sparsity: float, batch: int, rounds: int) -> dict:
    """One row: the median ms of each method over interleaved rounds and the median ratio."""
    torch.manual_seed(0)
    masked = sl.nn.MaskedConv2d(channels, channels, 3, padding=1)
    masked.set_mask(torch.rand(masked.weight.shape) >= sparsity)
    sparse = sl.nn.SparseConv2d.from_masked(masked)
    dense = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    steps = {"conv2d": _step(dense, x), "sparse": _step(sparse, x)}
    samples = interleaved(steps, Timer("cpu"), rounds, min_round_s=0.05)
    return {
        "layer": f"{channels}→{channels} @{size}×{size}", "channels": channels, "size": size,
        "sparsity": sparsity, "batch": batch,
        "ms": {name: statistics.median(s) * 1e3 for name, s in samples.items()},
        "speedup": paired_ratio(samples, "conv2d", "sparse"),
    }  # fmt: skip


def markdown(rows: list[dict], info: dict, rounds: int) -> str:
    batch = rows[0]["batch"] if rows else 0
    lines = [
        "# SparseConv2d vs nn.Conv2d, CPU training step (benchmarks/bench_sparse_conv.py)",
        "",
        f"{info['date']} · torch {info['torch']} · {info['cpu']} · {info['threads']} threads · "
        f"fp32, batch {batch}, 3×3, stride 1, padding 1; forward + backward to input, values "
        f"(weight) and bias; medians over {rounds} interleaved rounds.",
        "",
        "| layer | sparsity | conv2d ms | sparse ms | conv2d / sparse |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['sparsity']} | {r['ms']['conv2d']:.3f} | "
                     f"{r['ms']['sparse']:.3f} | {r['speedup']:.2f}× |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="one layer, 3 rounds: a smoke run")
    parser.add_argument("--out", help="output path without extension")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.device != "cpu":  # `sparse-lottery bench --device cuda` runs every benchmark
        print("bench_sparse_conv: CPU only (on CUDA, SparseConv2d runs the dense reference "
              "convolution: nothing to compare); skipped")  # fmt: skip
        return 0
    layers, sparsities = (LAYERS[2:3], SPARSITIES[1:2]) if args.quick else (LAYERS, SPARSITIES)
    rounds = 3 if args.quick else args.rounds
    info = machine("cpu", ("sparse_conv2d",))
    rows = []
    for channels, size in layers:
        for sparsity in sparsities:
            rows.append(measure(channels, size, sparsity, args.batch, rounds))
            row = rows[-1]
            ms = row["ms"]
            print(f"{row['layer']} sparsity {sparsity}: conv2d {ms['conv2d']:.3f} ms, "
                  f"sparse {ms['sparse']:.3f} ms, {row['speedup']:.2f}×", flush=True)  # fmt: skip
    report = markdown(rows, info, rounds)
    print(report)
    out = results_path("sparse_conv_cpu", args.quick, args.out)
    write_results(out, {"machine": info, "rounds": rounds, "rows": rows}, report)
    print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
