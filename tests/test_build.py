"""dgsnet._C builds as CPU here, and its CUDA sources compile and link when forced."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dgsnet.surgery.backends import extension as _ext

ROOT = Path(__file__).resolve().parents[1]


def test_extension_loaded_and_registers_ops():
    assert _ext.available(), f"dgsnet._C did not load: {_ext.LOAD_ERROR}"
    import torch

    assert hasattr(torch.ops.dgsnet, "dgs_forward")


def _cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return candidate
    return None


def _gpu_visible():
    import torch

    return torch.cuda.device_count() > 0


@pytest.mark.skipif(_cuda_home() is None, reason="no CUDA toolkit (nvcc) on this machine")
def test_forced_cuda_build_without_gpu_defaults_the_arch_list():
    """DGSNET_BUILD=cuda with no TORCH_CUDA_ARCH_LIST and no visible GPU: setup.py sets
    9.0+PTX and says so (torch's own detection would fail with an IndexError)."""
    env = dict(os.environ, DGSNET_BUILD="cuda", CUDA_HOME=_cuda_home(), CUDA_VISIBLE_DEVICES="")
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no visible GPU and TORCH_CUDA_ARCH_LIST unset" in proc.stderr
    assert "TORCH_CUDA_ARCH_LIST=9.0+PTX" in proc.stderr
    env["TORCH_CUDA_ARCH_LIST"] = "8.0"  # an explicit list is left alone
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "9.0+PTX" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(_cuda_home() is None, reason="no CUDA toolkit (nvcc) on this machine")
def test_cuda_extension_compiles_and_links(tmp_path):
    """Forces the CUDA build into a scratch dir: proves every .cu compiles for sm_90 and links.
    Without TORCH_CUDA_ARCH_LIST and a GPU, setup.py's default (9.0+PTX) is what is built."""
    env = dict(os.environ, DGSNET_BUILD="cuda", CUDA_HOME=_cuda_home(),
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    defaulted = not os.environ.get("TORCH_CUDA_ARCH_LIST") and not _gpu_visible()
    if not defaulted:  # a GPU host builds for sm_90 too, whatever its own GPU
        env["TORCH_CUDA_ARCH_LIST"] = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(tmp_path / "tmp"),
         "--build-lib", str(tmp_path / "lib")],
        cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if defaulted:
        assert "TORCH_CUDA_ARCH_LIST=9.0+PTX" in proc.stderr, proc.stderr[-3000:]
    (lib,) = (tmp_path / "lib").rglob("_C*.so")
    objdump = shutil.which("cuobjdump") or str(Path(env["CUDA_HOME"]) / "bin" / "cuobjdump")
    if Path(objdump).exists():
        listing = subprocess.run([objdump, "--list-elf", str(lib)], capture_output=True, text=True).stdout
        assert "sm_90" in listing, listing
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    assert "libcudart" in ldd, ldd
