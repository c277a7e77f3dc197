"""Training step of one pruned 3×3 convolution on the CPU: `SparseConv2d` (the direct sparse
convolution) against `torch.nn.Conv2d`, both from the same weights.

A step is the forward and the backward to the input, the weights (values) and the bias (no
optimiser). The two are timed interleaved, round by round in alternating order, and the table
gives the median over rounds of each time and of the per-round ratio conv2d / sparse (> 1:
sparse faster). Layers: ResNet-20 (16→16 @32×32, 32→32 @16×16, 64→64 @8×8) and VGG-16
(256→256 @8×8, 512→512 @2×2) at batch 16, stride 1, padding 1.

    OMP_NUM_THREADS=2 python benchmarks/bench_sparse_conv.py [--rounds 15]
"""

import argparse
import statistics
import time

import torch

import sparse_lottery as sl

LAYERS = [(16, 32), (32, 16), (64, 8), (256, 8), (512, 2)]  # (channels, map size)
SPARSITIES = [0.9, 0.95, 0.99]


def _step(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    return run


def _time(fn, min_seconds=0.05):
    """Seconds per call: as many back-to-back calls as fill min_seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def bench(channels, size, sparsity, batch, rounds):
    torch.manual_seed(0)
    masked = sl.nn.MaskedConv2d(channels, channels, 3, padding=1)
    masked.set_mask(torch.rand(masked.weight.shape) >= sparsity)
    sparse = sl.nn.SparseConv2d.from_masked(masked)
    dense = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    methods = {"conv2d": _step(dense, x), "sparse": _step(sparse, x)}
    for fn in methods.values():  # warm-up
        fn()
        fn()
    times = {name: [] for name in methods}
    for r in range(rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            times[name].append(_time(methods[name]))
    ratio = statistics.median(d / s for d, s in zip(times["conv2d"], times["sparse"]))
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, batch {args.batch}")
    print("| layer | sparsity | conv2d ms | sparse ms | conv2d / sparse |")
    print("|---|---|---|---|---|")
    for channels, size in LAYERS:
        for sparsity in SPARSITIES:
            ms, ratio = bench(channels, size, sparsity, args.batch, args.rounds)
            print(
                f"| {channels}→{channels} @{size}×{size} | {sparsity} | {ms['conv2d']:.3f} | "
                f"{ms['sparse']:.3f} | {ratio:.2f}× |",
                flush=True,
            )


if __name__ == "__main__":
    main()
