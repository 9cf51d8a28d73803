#!/usr/bin/env bash
# scripts/gpu-check.sh: validate dgsnet on this machine's GPU with one command, leaving the
# results behind (README.md, "Validating on a GPU").
#
#   bash scripts/gpu-check.sh [--wheels DIR] [OUT_DIR]   the GPU check (OUT_DIR: ./gpu-check-out)
#   bash scripts/gpu-check.sh --dry-run-cpu [OUT_DIR]    the same steps at tiny sizes on the CPU
#
# Steps, each with its own time limit (coreutils `timeout`), each run whatever happened to the
# one before, the elapsed time printed after each: install (only what is missing, from --wheels),
# env (device, versions), build (dgsnet._C for this GPU), pytest -m gpu, bench_surgery,
# bench_layerwise, train (bench/bench_train_gpu.py: a short bf16 stage-2 run per surgery mode),
# bench_step (the whole step and the training loop, last: the budget cuts it first). Results:
# OUT_DIR/*.json + *.md (the benchmarks'), OUT_DIR/logs/<step>.log, OUT_DIR/summary.md and
# OUT_DIR/gpu_check.json. Exit status 1 when a step failed or timed out, after summary.md is
# written; 2 on a usage error (nothing run, no summary).
#
# needs (what a bare GPU host must have; each line says what happens without it):
#   - bash, coreutils (`timeout`), a Linux x86_64 host. Without `timeout` the script stops at once.
#   - $PYTHON (default python3), Python >= 3.10 (3.12 on the images this was written for), with
#     torch >= 2.11 built with CUDA, triton, pytest, safetensors, onnx, onnxruntime. torch is never
#     installed or changed here; a CPU-only torch fails the env step (use --dry-run-cpu there).
#   - everything else dgsnet, its benchmarks and its tests import (open_clip_torch, ftfy, wcwidth,
#     regex, timm, torchvision, huggingface_hub, PyYAML, Pillow, matplotlib, scikit-image,
#     onnxscript, ...; `python3 scripts/gpu_check.py --wheel-list` prints the whole list):
#     already installed, or as wheels in --wheels DIR. What is missing is installed with
#     `pip install --no-index --no-deps --target WORK/site` (never into the system
#     site-packages; WORK/site goes first on PYTHONPATH); that needs pip in $PYTHON. A missing
#     module without a wheel fails the install step and names the wheel; the steps that import it
#     fail too, the others still run. torchvision must be the build made for the host's torch
#     (torch 2.11 -> torchvision 0.26): a wheel pinned to another torch is refused, never installed.
#   - the build: a CUDA toolkit whose nvcc matches torch's CUDA major version (found through
#     CUDA_HOME, /usr/local/cuda, or nvcc on PATH: the first with include/cuda_runtime.h), a C++
#     compiler that nvcc accepts (g++; a too new one stops nvcc with its own message),
#     setuptools; ninja (a wheel is enough) makes it parallel (MAX_JOBS = the core count), without it the build is
#     serial and may not fit its 150 s. TORCH_CUDA_ARCH_LIST is this GPU's compute capability
#     (e.g. 9.0 on H100/H200) unless already set. A failed build leaves the cuda backend out; the
#     reference and triton backends are still tested.
#   - a writable checkout (the build writes dgsnet/_C*.so and build/; pytest and Python write
#     caches). A read-only checkout is copied to WORK/src first and everything runs there.
#   - WORK (--work, default ${TMPDIR:-/tmp}/dgsnet-gpu-check-$USER): private packages, the Triton,
#     inductor and matplotlib caches (HOME may be read-only) and that copy. No network is used:
#     HF_HUB_OFFLINE=1, every backbone is random-initialised. WORK must allow executing shared
#     libraries (binary wheels are imported from WORK/site): with a noexec /tmp, pass --work.
#   - GPU memory: sized on 80 GB-class GPUs (H100, H200). train and bench_step run ViT-L/14 at
#     batch 32 (bench_step's published-style step in fp32 is the largest); a smaller GPU may run
#     out of memory there, which fails that step only.
#   - git, optional: the commit in summary.md (read from .git directly when git is missing or
#     refuses the repository).
#   - time: the GPU check is sized for one H100 in 8 minutes (--budget 480) including the build:
#     install 60 s, env 60 s, build 150 s, pytest 120 s, bench_surgery 75 s, bench_layerwise 60 s,
#     train 90 s, bench_step 150 s at most each, and no step runs past the budget (a step that
#     would start with under 10 s left is skipped and reported so). Triton kernels compile
#     once per shape with DGSNET_TRITON_PINNED=1 (one config, no autotuning), set for every step.
#   Test-only: DGSNET_GPU_CHECK_FAIL=step[,step] makes those steps fail (tests/test_gpu_check.py).
#   Test-only: DGSNET_GPU_CHECK_HOLD=step[,step] makes those steps run until stopped (same tests).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu-check: no Python at PYTHON=$PY: set PYTHON to the interpreter that has torch" >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "gpu-check: $PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); dgsnet needs 3.10 or newer: set PYTHON" >&2
  exit 2
fi
if ! command -v timeout >/dev/null 2>&1; then
  echo "gpu-check: the coreutils 'timeout' command is missing; install coreutils" >&2
  exit 2
fi
exec "$PY" "$here/gpu_check.py" "$@"
