#!/usr/bin/env bash
# Creates (or reuses) the virtual environment at .venv in the repo root,
# installs the lock (requirements-cpu.txt, exact versions of every extra), and
# builds dgsnet._C in place. Re-running is cheap: each step is skipped while its
# inputs are unchanged.
#   DGSNET_BUILD=auto|cpu|cuda   which extension to build (see setup.py)
#   DGSNET_GPU_EXTRAS=1          requirements-gpu.txt instead: onnxruntime-gpu,
#                                and the CPU onnxruntime removed (never both)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

if ! "$VENV/bin/python" -c "import sys; assert sys.version_info >= (3, 10)" 2>/dev/null; then
  echo "[venv] creating $VENV with $($PY --version)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }

lock=requirements-cpu.txt
[ "${DGSNET_GPU_EXTRAS:-0}" = 1 ] && lock=requirements-gpu.txt
want=$(stamp requirements.txt "$lock"; echo "$lock")
if [ "$(cat "$VENV/.requirements.sha" 2>/dev/null)" != "$want" ] || \
   ! "$VENV/bin/python" -c "import torch, open_clip, onnxruntime" 2>/dev/null; then
  echo "[venv] installing $lock"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
  # onnxruntime and onnxruntime-gpu install the same module: beside the CPU one, the GPU one
  # loses its CUDA provider. Remove the other flavour (left by an earlier lock), then reinstall
  # ours, since the uninstall also deleted the files the two share.
  ours=$(grep -E '^onnxruntime(-gpu)?==' "$lock")
  other=onnxruntime-gpu; [ "$lock" = requirements-gpu.txt ] && other=onnxruntime
  if "$VENV/bin/python" -m pip show --quiet "$other" 2>/dev/null; then
    echo "[venv] removing $other ($ours replaces it)"
    "$VENV/bin/python" -m pip uninstall --quiet --yes "$other"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$ours"
  fi
  echo "$want" > "$VENV/.requirements.sha"
fi

# The extension (and the package's metadata) is rebuilt when its sources, setup.py,
# pyproject.toml or the build mode change.
want=$(stamp setup.py pyproject.toml $(find csrc -type f | sort); echo "${DGSNET_BUILD:-auto}")
if [ "$(cat "$VENV/.extension.sha" 2>/dev/null)" != "$want" ] || \
   ! "$VENV/bin/python" -c "import torch, dgsnet._C" 2>/dev/null; then
  echo "[venv] building dgsnet._C (DGSNET_BUILD=${DGSNET_BUILD:-auto})"
  MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps -e .
  echo "$want" > "$VENV/.extension.sha"
fi
echo "[venv] ready: $("$VENV/bin/python" -c 'import torch, dgsnet, dgsnet.surgery.backends.extension as e; print(f"dgsnet {dgsnet.__version__}, torch {torch.__version__}, extension built with CUDA: {e.cuda_compiled()}")')"
