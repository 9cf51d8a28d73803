"""Builds dgsnet and its extension dgsnet._C.

Which extension is built:
  DGSNET_BUILD=auto (default)  CUDA when torch has CUDA and a toolkit is found
                               (CUDA_HOME/CUDA_PATH set, or a visible GPU);
                               the C++ (CPU) build otherwise.
  DGSNET_BUILD=cuda            force the CUDA build (fails if no toolkit).
  DGSNET_BUILD=cpu             force the C++ (CPU) build.
Build with `pip install --no-build-isolation -e .` so the extension is compiled
against the torch already in the environment. MAX_JOBS and
TORCH_CUDA_ARCH_LIST are honoured as usual by torch.utils.cpp_extension.
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version():
    about = {}
    with open(os.path.join(ROOT, "dgsnet", "version.py")) as fh:
        exec(fh.read(), about)
    return about["__version__"]


def _want_cuda():
    mode = os.environ.get("DGSNET_BUILD", "auto").lower()
    if mode not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"DGSNET_BUILD={mode!r}: use auto, cpu or cuda")
    if mode == "cpu":
        return False
    has_toolkit = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if mode == "cuda":
        if not has_toolkit:
            raise SystemExit(
                "DGSNET_BUILD=cuda but no CUDA toolkit was found for torch "
                f"(torch.version.cuda={torch.version.cuda}); set CUDA_HOME=/usr/local/cuda")
        return True
    # Auto: torch's own guess of CUDA_HOME is not trusted without a GPU or an
    # explicit CUDA_HOME, since a wrong guess fails late at link time.
    explicit = bool(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"))
    return has_toolkit and (explicit or torch.cuda.is_available())


def _pip_cuda_includes():
    """Headers of the pip CUDA wheels torch depends on (cuBLAS, cuSPARSE, ...),
    which a system toolkit may lack."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [d for d in dict.fromkeys(found) if os.path.isdir(d)]


def _extension():
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -Wno-psabi: csrc/cpu/simd.h passes 512-bit vectors between always-inlined helpers.
    cxx = ["-O3", "-Wno-psabi"]  # torch.utils.cpp_extension adds the C++ standard torch needs (C++20)
    if _want_cuda():
        cu = sorted(glob.glob("csrc/cuda/*.cu"))
        return cpp_extension.CUDAExtension(
            "dgsnet._C", cpp + cu,
            define_macros=[("DGSNET_WITH_CUDA", "1")],
            include_dirs=_pip_cuda_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )
    return cpp_extension.CppExtension("dgsnet._C", cpp, extra_compile_args={"cxx": cxx})


setup(
    name="dgsnet",
    version=_version(),
    description="DGS-Net: distillation-guided gradient surgery for AI-generated image detection",
    # export/ ships as dgsnet_export: exporter/ (torch) and runtime/ (no torch needed to import it).
    packages=find_packages(include=["dgsnet", "dgsnet.*"]) + ["dgsnet_export", "dgsnet_export.exporter",
                                                               "dgsnet_export.runtime"],
    package_dir={"dgsnet_export": "export"},
    package_data={"dgsnet": ["model_configs/*.json"]},
    python_requires=">=3.10",
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["dgsnet=dgsnet.cli:main",
                                      "dgsnet-predict=dgsnet_export.cli:main"]},
)
