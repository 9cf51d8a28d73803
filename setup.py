"""The parts of dgsnet's build that need code; the metadata is in pyproject.toml.

The optional extension dgsnet._C (csrc/; the cpp and cuda surgery backends):
  DGSNET_BUILD=auto (default)  built when torch is importable here: CUDA when torch has CUDA
                               and a toolkit is found (CUDA_HOME/CUDA_PATH set, or a visible
                               GPU), the C++ (CPU) build otherwise; without torch (a plain
                               `pip install .`, whose isolated build has no torch) not built.
  DGSNET_BUILD=cuda | cpu      force that build (torch must be installed: an error otherwise).
  DGSNET_BUILD=none            never build it: a pure-Python package.
Without dgsnet._C the reference and Triton backends still run. Build it with
`pip install --no-build-isolation -e .` so it is compiled against the torch already in the
environment (scripts/venv.sh does). MAX_JOBS and TORCH_CUDA_ARCH_LIST are honoured as usual by
torch.utils.cpp_extension; a CUDA build with no TORCH_CUDA_ARCH_LIST and no visible GPU (where
torch's own detection fails) builds for DEFAULT_ARCH_LIST and says so.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

MODES = ("auto", "cpu", "cuda", "none")
# sm_90 code (H100/H200) plus PTX that newer GPUs compile when loading the extension.
DEFAULT_ARCH_LIST = "9.0+PTX"


def _mode():
    mode = os.environ.get("DGSNET_BUILD", "auto").lower()
    if mode not in MODES:
        raise SystemExit(f"DGSNET_BUILD={mode!r}: use {', '.join(MODES)}")
    return mode


def _torch():
    """torch, or None when it is not installed in the build environment."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _want_cuda(mode, torch, cpp_extension):
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


def _default_arch_list(torch):
    """Sets TORCH_CUDA_ARCH_LIST to DEFAULT_ARCH_LIST when it is unset and no GPU is visible:
    torch would otherwise read the list from the GPUs and fail (IndexError) with none."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.device_count() > 0:
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    print(f"dgsnet setup.py: no visible GPU and TORCH_CUDA_ARCH_LIST unset: building dgsnet._C for "
          f"TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH_LIST} (set TORCH_CUDA_ARCH_LIST to choose, e.g. "
          f"\"8.0;9.0\")", file=sys.stderr)


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


def _extension_args():
    """setup() keywords for dgsnet._C: none when it is not to be built."""
    mode = _mode()
    if mode == "none":
        return {}
    torch = _torch()
    if torch is None:
        if mode == "auto":
            return {}
        raise SystemExit(f"DGSNET_BUILD={mode} needs torch in the build environment: install torch "
                         "(pip install 'dgsnet[train]' or -r requirements.txt), then "
                         "pip install --no-build-isolation -e .")
    from torch.utils import cpp_extension

    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -Wno-psabi: csrc/cpu/simd.h passes 512-bit vectors between always-inlined helpers.
    cxx = ["-O3", "-Wno-psabi"]  # torch.utils.cpp_extension adds the C++ standard torch needs (C++20)
    if _want_cuda(mode, torch, cpp_extension):
        _default_arch_list(torch)
        cu = sorted(glob.glob("csrc/cuda/*.cu"))
        ext = cpp_extension.CUDAExtension(
            "dgsnet._C", cpp + cu,
            define_macros=[("DGSNET_WITH_CUDA", "1")],
            include_dirs=_pip_cuda_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )
    else:
        ext = cpp_extension.CppExtension("dgsnet._C", cpp, extra_compile_args={"cxx": cxx})
    return {"ext_modules": [ext],
            "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}}


setup(
    # Kept here, not in pyproject.toml: export/ ships renamed as dgsnet_export, which package
    # discovery alone cannot express. exporter/ needs torch; runtime/ imports without it.
    packages=find_packages(include=["dgsnet", "dgsnet.*"]) + ["dgsnet_export", "dgsnet_export.exporter",
                                                               "dgsnet_export.runtime", "dgsnet_export.serve"],
    package_dir={"dgsnet_export": "export"},
    package_data={"dgsnet": ["model_configs/*.json"], "dgsnet_export.serve": ["page.html"]},
    **_extension_args(),
)
