#!/usr/bin/env bash
# Runs the tests under another torch than the lock's (by default the oldest supported one, 2.11:
# the GPU image's), without touching the repo's .venv or its dgsnet._C.
#
#   bash scripts/torch-compat.sh [--torch 2.11.0] [--torchvision 0.26.0] [--dir DIR] [--record]
#                                [-- PYTEST ARGS]
#
# In DIR (default /tmp/dgsnet-torch-<version>): a venv with that torch + torchvision from PyPI
# (CUDA wheels, about 3 GB the first time) and the rest of requirements.txt, a copy of the working
# tree (tracked and new files), dgsnet._C built there for that torch (CPU; rebuilt only when csrc/,
# setup.py or pyproject.toml change). Then, in the copy:
#   default   python -m pytest -q -p no:warnings -m "not slow" (or the PYTEST ARGS given)
#   --record  writes the repo's tests/torch_api_min.json: the names this torch has where the
#             project uses them (scripts/torch_api.py; tests/test_torch_api.py checks against it)
# torchvision must be the release paired with torch (2.11 -> 0.26, 2.14 -> 0.29): open_clip imports
# torchvision, and a mismatched pair fails at import.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH=2.11.0 TV=0.26.0 DIR="" RECORD=0 PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) TORCH=$2; shift 2 ;;
    --torchvision) TV=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --record) RECORD=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "torch-compat.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
DIR=${DIR:-/tmp/dgsnet-torch-$TORCH}
VENV=$DIR/venv TREE=$DIR/tree
mkdir -p "$DIR"
start=$(date +%s)
step() { echo "[torch-compat $(( $(date +%s) - start ))s] $*"; }

if ! "$VENV/bin/python" -c "import torch, torchvision, open_clip, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  step "venv $VENV: torch==$TORCH torchvision==$TV + requirements.txt (less torch, torchvision, triton)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  grep -v -E '^(torch|torchvision|triton)==' requirements.txt > "$DIR/requirements-rest.txt"
  # setuptools: the project builds with >=77; pip keeps it under what that torch allows (2.11: <82).
  "$VENV/bin/python" -m pip install --quiet "torch==$TORCH" "torchvision==$TV" "setuptools>=77" \
    onnxruntime -r "$DIR/requirements-rest.txt"
fi
"$VENV/bin/python" -c "import torch, torchvision, triton, open_clip; print('[torch-compat] torch', torch.__version__, 'torchvision', torchvision.__version__, 'triton', triton.__version__, 'open_clip', open_clip.__version__)"

step "copying the working tree to $TREE (the built extension and its stamp are kept)"
mkdir -p "$TREE"
find "$TREE" -mindepth 1 -maxdepth 1 ! -name dgsnet ! -name .stamp -exec rm -rf {} +
find "$TREE/dgsnet" -mindepth 1 -maxdepth 1 ! -name '_C*.so' -exec rm -rf {} + 2>/dev/null || true
tar -cf - --exclude=./.venv --exclude=./.git --exclude=./runs --exclude=./build --exclude='*.so' \
  --exclude=__pycache__ --exclude=.pytest_cache . | tar -xf - -C "$TREE"
if command -v git > /dev/null; then  # tests that list the project's files need a checkout
  (cd "$TREE" && rm -rf .git && git init -q && git add -A && \
   git -c user.name=torch-compat -c user.email=torch-compat@localhost commit -qm snapshot)
fi

want=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$TREE/.stamp" 2>/dev/null)" != "$want" ] || ! ls "$TREE"/dgsnet/_C*.so > /dev/null 2>&1; then
  step "building dgsnet._C for torch $TORCH (CPU; a few minutes)"
  (cd "$TREE" && DGSNET_BUILD=cpu MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m pip install --quiet \
    --no-build-isolation --no-deps -e .)
  echo "$want" > "$TREE/.stamp"
fi

if [ "$RECORD" = 1 ]; then
  step "recording tests/torch_api_min.json under torch $TORCH"
  (cd "$TREE" && "$VENV/bin/python" scripts/torch_api.py record --out "$ROOT/tests/torch_api_min.json")
  exit 0
fi
[ $# -gt 0 ] || set -- -q -p no:warnings -m "not slow"
step "pytest $* (in $TREE)"
set +e
(cd "$TREE" && PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pytest "$@")
rc=$?
set -e
step "done: pytest exit code $rc"
exit "$rc"
