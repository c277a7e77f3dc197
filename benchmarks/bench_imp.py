"""IMP end to end: the sparse_lottery driver against the same loop written with
`torch.nn.utils.prune`, in one run.

Both loops train the same model from the same θ0 on the same minibatches (the driver's data
order), evaluate on the same cadence, prune by the same rule and rewind to θ0. The baseline is
what a researcher writes today: plain layers with `prune.l1_unstructured` /
`prune.global_unstructured` forward hooks (weight = weight_orig * mask every forward), the
torch optimiser over dense tensors, rewinding by copying θ0 into `weight_orig`. The driver runs
with `--execution auto` (sparse kernels where they are faster) and the masked optimisers, and
also writes its checkpoints and metrics; its time includes all of that. The two run level by
level, alternating which goes first, so that a drift of the shared machine's speed hits both;
a level's time covers its pruning, rewinding, training and evaluation.

Workloads: the MNIST-1D MLP (40→500→500→10, Adam, 10 levels) and ResNet-20 on CIFAR-shaped
synthetic inputs (SGD, 10 levels, few iterations per level). The per-level rate is chosen so
that level 10 is past 95% sparsity.

Targets (issue #5): ≥ 2× faster end to end on the CPU, and a level at ≥ 95% sparsity faster
than the dense level.

Usage:
    python benchmarks/bench_imp.py [--quick] [--device cpu]
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, results_path, write_results  # noqa: E402

from sparse_lottery import models  # noqa: E402
from sparse_lottery.lottery import Runtime, apply_preset  # noqa: E402
from sparse_lottery.lottery.runner import Run  # noqa: E402
from sparse_lottery.lottery.schedule import learning_rate  # noqa: E402
from sparse_lottery.lottery.trainer import evaluate  # noqa: E402

RATE = 0.26  # 0.74^10 = 0.049: level 10 is at 95.1% sparsity


def workloads(quick: bool) -> list[dict]:
    mlp = {"name": "MNIST-1D MLP", "levels": 10, "overrides": {
        "training": {"steps": "100it" if quick else "1500it"},
        "pruning": {"prune_fraction": RATE}}}  # fmt: skip
    resnet = {"name": "ResNet-20, synthetic CIFAR", "levels": 10, "overrides": {
        "dataset": {"dataset": "synthetic_cifar", "batch_size": 64, "augmentation": "none"},
        "model": {"model": "resnet20"},
        "training": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                     "steps": "3it" if quick else "20it"},
        "pruning": {"prune_method": "global_magnitude", "prune_fraction": RATE}}}  # fmt: skip
    return [mlp, resnet]


def torch_prune_levels(run: Run, levels: int, device):
    """The same IMP written with torch.nn.utils.prune, one level per `next()`: yields (test
    accuracy, density) after training each level (pruning and rewinding included)."""
    exp = run.exp
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.get_model(exp.model.model, run.data.train.num_classes,
                                 run.data.train.input_shape).to(device)  # fmt: skip
    init = {k: v for k, v in run.init_weights(run.build(0)).items() if "mask" not in k}
    model.load_state_dict(init)
    layers = [(m, "weight") for m in model.modules()
              if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]  # fmt: skip
    theta0 = {id(m): m.weight.detach().clone() for m, _ in layers}
    for m, _ in layers:
        prune.identity(m, "weight")
    spe, total = run.data.steps_per_epoch, run.total
    eval_every = spe
    for level in range(levels + 1):
        if level > 0:
            if exp.pruning.prune_method == "global_magnitude":
                prune.global_unstructured(layers, prune.L1Unstructured, amount=_amount(layers))
            else:
                for m, name in layers:
                    kept = int(m.weight_mask.sum())
                    prune.l1_unstructured(m, name, amount=round(RATE * kept))
            with torch.no_grad():  # rewind to θ0 (biases and norms too)
                for m, _ in layers:
                    m.weight_orig.copy_(theta0[id(m)])
                for k, v in model.state_dict().items():
                    base = k.removesuffix("_orig")
                    if base in init and not k.endswith("weight_orig") and "mask" not in k:
                        v.copy_(init[base])
        opt = _optimizer(model, exp)
        model.train()
        for step in range(total):
            for g in opt.param_groups:
                g["lr"] = learning_rate(exp.training, step, total, spe)
            x, y = run.data.minibatch(step, run.seeds, device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % eval_every == 0 or step + 1 == total:
                _, acc = evaluate(model, run.data.test, device, contextlib.nullcontext)
        kept = sum(int(m.weight_mask.sum()) for m, _ in layers)
        yield acc, kept / sum(m.weight_mask.numel() for m, _ in layers)


def _amount(layers) -> int:
    """torch's pruning containers apply an amount to the survivors of the previous mask."""
    return round(RATE * sum(int(m.weight_mask.sum()) for m, _ in layers))


def _optimizer(model, exp):
    t = exp.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def warm_up() -> None:
    """Pay the process's one-time costs before any timing: torch imports `torch._dynamo` at the
    first optimiser it builds and the nested-tensor module at the first backward (~2.6 s
    together on the CPU machine), which would otherwise land in whichever loop runs first."""
    p = torch.nn.Parameter(torch.zeros(1))
    torch.optim.SGD([p], lr=0.1)
    (p * 2).sum().backward()


def warm_kernels(run: Run, device: torch.device) -> None:
    """One training step and one evaluation of a throwaway model of the workload before any
    timing: the first calls at each operator shape pay one-time costs (oneDNN's primitive
    creation, the allocator's growth) that later calls in the process skip, and that would
    otherwise land in whichever loop's level 0 runs first (ours)."""
    with torch.random.fork_rng(devices=[]):
        model = models.get_model(run.exp.model.model, run.data.train.num_classes,
                                 run.data.train.input_shape).to(device)  # fmt: skip
    x, y = run.data.minibatch(0, run.seeds, device)
    F.cross_entropy(model(x), y).backward()
    evaluate(model, run.data.test, device, contextlib.nullcontext)


def bench(work: dict, device: str) -> dict:
    """Both loops level by level, alternating which runs first: a drift of the shared
    machine's speed (seconds to minutes long) then hits both alike. A level's time is all of
    it: pruning, rewinding, choosing execution forms, training, evaluation, files."""
    exp = apply_preset("mnist1d_mlp", work["overrides"])
    with tempfile.TemporaryDirectory() as root:
        rt = Runtime(root=root, device=device, progress=False, eval_every="1ep",
                     checkpoint_every="100000it")  # fmt: skip
        run = Run(exp, rt)  # data generated/loaded before timing
        warm_kernels(run, torch.device(device))
        base = torch_prune_levels(run, work["levels"], torch.device(device))
        ours, theirs = [], []

        def ours_level(level: int) -> None:
            start = time.perf_counter()
            summary = run.level(level)
            ours.append((time.perf_counter() - start, summary))

        def base_level(level: int) -> None:
            start = time.perf_counter()
            acc, density = next(base)
            theirs.append((time.perf_counter() - start, acc, density))

        for level in range(work["levels"] + 1):
            first, second = (ours_level, base_level) if level % 2 == 0 else (base_level, ours_level)
            first(level)
            second(level)
            density = ours[-1][1]["density"]
            print(f"level {level}: density {density:.4f}, ours {ours[-1][0]:.2f} s, "
                  f"torch prune {theirs[-1][0]:.2f} s", flush=True)  # fmt: skip
    ours_levels = [t for t, _ in ours]
    base_levels = [t for t, _, _ in theirs]
    density = [summary["density"] for _, summary in ours]
    high = max(range(len(ours)), key=lambda i: 1 - density[i])
    return {
        "workload": work["name"], "levels": work["levels"],
        "iterations_per_level": run.total,
        "density": density, "torch_prune_density": [d for _, _, d in theirs],
        "ours_seconds": sum(ours_levels), "torch_prune_seconds": sum(base_levels),
        "speedup": sum(base_levels) / sum(ours_levels),
        "ours_level_seconds": ours_levels, "torch_prune_level_seconds": base_levels,
        "ours_accuracy": [summary["test_accuracy"] for _, summary in ours],
        "torch_prune_accuracy": [acc for _, acc, _ in theirs],
        "execution_last_level": ours[-1][1]["execution"],
        "sparsest_level": high, "sparsest_sparsity": 1 - density[high],
        "sparsest_vs_dense": ours_levels[0] / ours_levels[high],
    }  # fmt: skip


def markdown(results: list[dict], info: dict) -> str:
    lines = [f"# IMP end to end ({info['device']})", "",
             f"{info['date']} · torch {info['torch']} · {info['cpu']} · {info['threads']} threads",
             "", "| workload | levels × it | ours s | torch prune s | speedup | sparsest level "
             "(sparsity) | its time vs dense level |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['workload']} | {r['levels'] + 1} × {r['iterations_per_level']} | "
            f"{r['ours_seconds']:.1f} | {r['torch_prune_seconds']:.1f} | {r['speedup']:.2f}× | "
            f"{r['sparsest_level']} ({r['sparsest_sparsity']:.3f}) | "
            f"{r['sparsest_vs_dense']:.2f}× faster |"
        )
    for r in results:
        lines += ["", f"## {r['workload']}: per level", "",
                  "| level | density | ours s | torch prune s | ours acc | torch prune acc |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for i, d in enumerate(r["density"]):
            lines.append(
                f"| {i} | {d:.4f} | {r['ours_level_seconds'][i]:.2f} | "
                f"{r['torch_prune_level_seconds'][i]:.2f} | {r['ours_accuracy'][i]:.4f} | "
                f"{r['torch_prune_accuracy'][i]:.4f} |"
            )
    return "\n".join(lines) + "\n"


def verdicts(results: list[dict], device: str) -> list[str]:
    out = []
    for r in results:
        if device == "cpu":
            ok = r["speedup"] >= 2.0
            out.append(f"{'PASS' if ok else 'FAIL'}: ≥ 2× torch.nn.utils.prune end to end "
                       f"[{r['workload']}]: {r['speedup']:.2f}×")  # fmt: skip
        ok = r["sparsest_sparsity"] >= 0.95 and r["sparsest_vs_dense"] > 1.0
        out.append(f"{'PASS' if ok else 'FAIL'}: level at ≥ 95% sparsity faster than the dense "
                   f"level [{r['workload']}]: sparsity {r['sparsest_sparsity']:.3f}, "
                   f"{r['sparsest_vs_dense']:.2f}×")  # fmt: skip
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke test)")
    parser.add_argument("--out", default=None, help="output path without extension")
    args = parser.parse_args(argv)
    info = machine(args.device, ("sparse_linear", "masked_linear"))
    warm_up()
    results = []
    for work in workloads(args.quick):
        print(f"== {work['name']}", flush=True)
        results.append(bench(work, args.device))
        print(json.dumps({k: v for k, v in results[-1].items() if not isinstance(v, list)}))
    report = markdown(results, info)
    checks = verdicts(results, args.device)
    report += "\n" + "\n".join(checks) + "\n"
    print(report)
    out = results_path(f"imp_{args.device}", args.quick, args.out)
    write_results(out, {"machine": info, "results": results, "verdicts": checks}, report)
    print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
