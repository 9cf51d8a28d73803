#!/usr/bin/env bash
# scripts/gpu-check.sh: validate dgsnet on this machine's GPU with one command, leaving the
# results behind (README.md, "Validating on a GPU").
#
#   bash scripts/gpu-check.sh [--wheels DIR] [OUT_DIR]   the GPU check (OUT_DIR: ./gpu-check-out)
#   bash scripts/gpu-check.sh --dry-run-cpu [OUT_DIR]    the same steps at tiny sizes on the CPU
#   --archive FILE   also writes OUT_DIR as one .tar.gz at the end, even after a failed step or an
#                    interruption (atomically: a temporary file, then renamed). On a host that hands
#                    back only a few files (the device tool: 8 files from $OUT), keep OUT_DIR
#                    outside $OUT and archive into it:
#     DGSNET_COMMIT=<sha> bash scripts/gpu-check.sh --wheels .whl --archive "$OUT/gpu-check.tar.gz" /tmp/gpu-check-out
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
#     onnxscript, ...): already installed, or as wheels in --wheels DIR. The GPU image (Python
#     3.12, torch 2.11) lacks only open_clip_torch, ftfy and wcwidth: `python3
#     scripts/gpu_check.py --wheel-list` prints those (name==version), `--wheel-list all` the
#     whole list. A dependency is needed only where what imports it is missing too (httpx2,
#     which this environment's huggingface_hub 2 imports, is not needed beside a huggingface_hub
#     1 that imports). setuptools is never carried: the host's must suit its torch (< 82 for 2.11). What is missing is installed with
#     `pip install --no-index --no-deps --target WORK/site` (never into the system
#     site-packages; WORK/site goes first on PYTHONPATH); that needs pip in $PYTHON. A missing
#     module without a wheel fails the install step and names the wheel; the steps that import it
#     fail too, the others still run. torchvision must be the build made for the host's torch
#     (torch 2.11 -> torchvision 0.26): a wheel pinned to another torch is refused, never installed.
#   - dgsnet_export (export/) needs no install: WORK/site holds a link named dgsnet_export to the
#     checkout's export/, so pytest's collection and the benchmarks import it on a bare host.
#   - the build: a CUDA toolkit whose nvcc matches torch's CUDA major version (found through
#     CUDA_HOME, /usr/local/cuda, or nvcc on PATH: the first with include/cuda_runtime.h), a C++
#     compiler that nvcc accepts (g++; a too new one stops nvcc with its own message),
#     setuptools; ninja (a wheel is enough) makes it parallel (MAX_JOBS = the core count), without it the build is
#     serial and may not fit its 150 s. TORCH_CUDA_ARCH_LIST is this GPU's compute capability
#     (e.g. 9.0 on H100/H200) unless already set; with no device visible, setup.py's default
#     (9.0+PTX), said in a NOTE. A failed build leaves the cuda backend out; the reference and
#     triton backends are still tested.
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
#     refuses the repository; a checkout copied without .git takes it from DGSNET_COMMIT=<sha>).
#   - time: the GPU check is sized for one H100 in 8 minutes (--budget 480) including the build:
#     install 45 s, env 45 s, build 150 s, pytest 180 s, bench_surgery 60 s, bench_layerwise 45 s,
#     train 75 s, bench_step 120 s at most each, and no step runs past the budget (a step that
#     would start with under 10 s left is skipped and reported so; bench_step, last, is the one
#     cut first). Triton kernels compile once per shape with DGSNET_TRITON_PINNED=1 (one config,
#     no autotuning), set for every step; a first run on a cold Triton cache compiles them all in
#     the pytest step. pytest is stopped with SIGINT at its limit (SIGKILL 15 s later), so its
#     junit XML and counts of the tests that ran are kept; it runs with
#     --continue-on-collection-errors (a module that cannot import is an error, not a stop).
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
