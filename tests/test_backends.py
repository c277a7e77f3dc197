"""The build and the backend report: the compiled kernels are present wherever they can be."""

import os
import runpy
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparse_lottery as sl

ROOT = Path(__file__).resolve().parents[1]
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_module")


def test_backends_report_shape():
    report = sl.backends()
    for name in ("cpp_cpu", "cuda_cpp", "triton_cuda", "reference"):
        assert set(report[name]) >= {"available", "reason"}
        assert isinstance(report[name]["reason"], str) and report[name]["reason"]
    assert report["reference"]["available"]
    assert set(report["selected"]) == {
        op for op in sl._library.SCHEMAS if not op.startswith("masked_conv")
    }
    assert "| cpp_cpu |" in sl.format_backends(report)


def test_cpp_cpu_kernels_are_built_and_selected():
    report = sl.backends()
    assert report["cpp_cpu"]["available"], report["cpp_cpu"]["reason"]
    assert all(choice["cpu"] == "cpp" for choice in report["selected"].values())


@pytest.mark.skipif(
    SETUP["find_cuda_toolkit"]() is None or torch.version.cuda is None,
    reason="no CUDA toolkit or a CPU-only torch: the CUDA kernels are not built here",
)
def test_cuda_kernels_compiled_where_a_toolkit_exists():
    report = sl.backends()["cuda_cpp"]
    assert report["compiled"], report["reason"]
    assert "9.0" in report["archs"] or "90" in report["archs"], report["archs"]
    if not torch.cuda.is_available():
        assert report["reason"] == "compiled, but no CUDA GPU visible"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_toolkit_found_through_a_wrapper_script(tmp_path):
    real = SETUP["find_cuda_toolkit"]()
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    assert SETUP["_toolkit_from_nvcc_dryrun"](str(wrapper)) == os.path.realpath(real)
    assert not SETUP["_is_toolkit"](str(tmp_path))  # what torch's own lookup would have taken


def test_without_extension_the_package_warns_once_and_works():
    code = (
        "import sys, warnings; sys.modules['sparse_lottery._C'] = None\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import torch, sparse_lottery as sl\n"
        "msgs = [str(x.message) for x in w if 'sparse_lottery' in str(x.message)]\n"
        "assert len(msgs) == 1 and 'not built' in msgs[0], msgs\n"
        "m = torch.rand(4, 5) < 0.5\n"
        "y = sl.ops.masked_linear(torch.randn(3, 5), torch.ones(4, 5), sl.pack_mask(m))\n"
        "assert sl.backends()['selected']['masked_linear']['cpu'] == 'reference'\n"
        "print('ok', tuple(y.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPARSE_LOTTERY_REQUIRE_EXTENSION"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok (3, 4)"


def test_without_extension_in_place_ops_keep_torchs_semantics():
    """The in-place ops' reference kernels bump versions and refuse tensors that require grad,
    as the C++ ones do: test_ops' check, run with the extension blocked."""
    code = (
        "import sys; sys.modules['sparse_lottery._C'] = None\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-W', 'ignore',\n"
        "    'tests/test_ops.py', '-k', 'in_place_ops_count_versions']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPARSE_LOTTERY_REQUIRE_EXTENSION"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout[-3000:]
