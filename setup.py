"""Build sparse_lottery: the package, its Triton kernels and the `sparse_lottery._C` extension.

The C++ CPU kernels are always built. The CUDA kernels are built whenever PyTorch has CUDA and a
CUDA toolkit is found; no GPU is needed. Environment flags:

  SPARSE_LOTTERY_SKIP_EXTENSION=1   build no extension (the PyTorch reference path runs)
  SPARSE_LOTTERY_NO_CUDA=1          build the C++ CPU kernels only
  TORCH_CUDA_ARCH_LIST="8.0;9.0"    CUDA architectures (default below when no GPU is visible)
  MAX_JOBS=N                        parallel compile jobs (honoured by ninja through BuildExtension)
  DEBUG=1                           -O0 -g, device debug info
  CUDA_HOME=/path/to/toolkit        the toolkit, when it is not found on its own
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;9.0+PTX"  # Ampere (A100, RTX 30) and Hopper (H100/H200)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _is_toolkit(path: str | None) -> bool:
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "bin", "nvcc"))
        and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))
    )


def _toolkit_from_nvcc_dryrun(nvcc: str) -> str | None:
    """Ask nvcc where it lives: works when the `nvcc` on PATH is a wrapper script."""
    try:
        out = subprocess.run(
            [nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def find_cuda_toolkit() -> str | None:
    """The real toolkit folder: $CUDA_HOME/$CUDA_PATH, nvcc's own TOP, then /usr/local/cuda*."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append(_toolkit_from_nvcc_dryrun(nvcc))
    candidates.append("/usr/local/cuda")
    candidates.extend(sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    return next((c for c in candidates if _is_toolkit(c)), None)


# The C++ standard library must be the shared one that PyTorch uses. Some toolchains' g++ links
# it statically by default (the lent GPU image's wrapper did, 2026-11-22): the extension then had
# a private copy whose locale was never initialised, and every TORCH_CHECK message that formats a
# number crashed (SIGSEGV in std::ostream) instead of raising. Naming the shared library by file
# (the driver maps a plain -lstdc++ to the static archive there) before the driver's own makes
# the linker resolve everything from it.
_SHARED_LIBSTDCXX = (
    ["-Wl,--push-state,--no-as-needed,-Bdynamic", "-l:libstdc++.so.6", "-Wl,--pop-state"]
    if sys.platform.startswith("linux")
    else []
)


def extension_modules():
    if _flag("SPARSE_LOTTERY_SKIP_EXTENSION"):
        print("sparse_lottery: SPARSE_LOTTERY_SKIP_EXTENSION set, building no extension")
        return [], {}

    toolkit = None if _flag("SPARSE_LOTTERY_NO_CUDA") else find_cuda_toolkit()
    if toolkit:
        # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
        os.environ["CUDA_HOME"] = toolkit
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = toolkit is not None and torch.version.cuda is not None
    debug = _flag("DEBUG")
    openmp = ["-fopenmp"]
    # x86-64-v3 = AVX2 + FMA (Haswell, Zen and later); SPARSE_LOTTERY_CPU_ARCH overrides it.
    arch = os.environ.get("SPARSE_LOTTERY_CPU_ARCH", "x86-64-v3" if _is_x86() else "native")
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0", f"-march={arch}"]
    cxx += ["-std=c++20", *openmp]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    define_macros = []
    extra = {"cxx": cxx}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = (["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]) + [
            "-std=c++20",
            "--expt-relaxed-constexpr",
            "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
        print(
            f"sparse_lottery: building C++ CPU + CUDA kernels (toolkit {toolkit}, "
            f"archs {os.environ['TORCH_CUDA_ARCH_LIST']})"
        )
        ext_cls = CUDAExtension
    else:
        why = (
            "SPARSE_LOTTERY_NO_CUDA set"
            if _flag("SPARSE_LOTTERY_NO_CUDA")
            else ("PyTorch has no CUDA" if torch.version.cuda is None else "no CUDA toolkit found")
        )
        print(f"sparse_lottery: building C++ CPU kernels only ({why})")
        ext_cls = CppExtension
    ext = ext_cls(
        "sparse_lottery._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=openmp + _SHARED_LIBSTDCXX,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def _is_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__ too
    ext_modules, cmdclass = extension_modules()
    setup(
        packages=[
            *find_packages(include=["sparse_lottery", "sparse_lottery.*"]),
            "sparse_lottery.kernels",
        ],
        package_dir={"sparse_lottery.kernels": "kernels"},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        zip_safe=False,
    )
