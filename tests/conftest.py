"""Shared test set-up: Triton's interpreter where no GPU is visible, devices, tolerances."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before Triton is imported: Triton kernels then run on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Absolute slack added to the "twice PyTorch's own error" bound, per dtype.
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def assert_close_to_reference(out, ref64, ref_same_precision, what=""):
    """flash-attention's bound: |out − ref64| ≤ 2·|ref_same_precision − ref64| + atol(dtype)."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == ref_same_precision.dtype, f"{what}: dtype {out.dtype}"
    if out.numel() == 0:
        return
    err = (out.double() - ref64.double()).abs().max().item()
    torch_err = (ref_same_precision.double() - ref64.double()).abs().max().item()
    scale = ref64.double().abs().max().item()
    bound = 2 * torch_err + ATOL[out.dtype] * max(1.0, scale)
    assert err <= bound, (
        f"{what}: max error {err:.3g} > bound {bound:.3g} (torch's {torch_err:.3g})"
    )


def load_benchmark(name: str):
    """The module of benchmarks/bench_<name>.py (the benchmarks folder is not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", f"bench_{name}.py")  # fmt: skip
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder with MNIST-1D generated once for the whole test session."""
    import sparse_lottery as sl

    path = tmp_path_factory.mktemp("data")
    sl.data.load_dataset("mnist1d", path)
    return path


def cli_error(capsys, argv: list[str]) -> str:
    """The one-line message of a `sparse-lottery` command that must fail on bad input: it
    exits with status 2 and prints `sparse-lottery <command>: error: <message>` alone."""
    from sparse_lottery.__main__ import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    command = next(a for a in argv if not a.startswith("-"))
    assert err.startswith(f"sparse-lottery {command}: error: ") and err.count("\n") == 1, err
    return err.strip()
