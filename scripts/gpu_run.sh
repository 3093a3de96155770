#!/usr/bin/env bash
# Runs `python -m bench.gpu` on a lent GPU machine: its python3 has JAX (CUDA)
# but no virtualenv, no TensorFlow and no internet, so the packages it lacks
# come as wheels in .gpu/whl and the slices in .gpu/data (scripts/gpu_pack.sh
# makes both here; the device tool carries .gpu).
#
# Usage, on the device from the repo root: bash scripts/gpu_run.sh [bench.gpu args]
# With $OUT set (the device tool sets it), the output is also kept in $OUT/gpu.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SITE=${SITE:-/tmp/site}

if ! compgen -G ".gpu/whl/*.whl" >/dev/null || [ ! -d .gpu/data/iqoth-nccd ]; then
    echo "no .gpu/whl or .gpu/data: run scripts/gpu_pack.sh here first, then carry .gpu" >&2
    exit 1
fi

# --no-deps --no-index: the wheels are exactly what the image lacks, and
# nothing can be fetched there.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" .gpu/whl/*.whl

export PYTHONPATH=$SITE:$ROOT
export KERAS_BACKEND=jax # no TensorFlow there; Keras 3 runs the same .keras file
export DATA_DIR=$ROOT/.gpu/data
export TF_CPP_MIN_LOG_LEVEL=2
export PYTHONUNBUFFERED=1 # output in order when tee'd or cut off at a time limit

# Which card gave the figures, and whether JAX sees it (else it runs on the CPU).
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "no nvidia-smi here"; fi
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
if [ -n "${OUT:-}" ]; then
    python3 -m bench.gpu "$@" 2>&1 | tee "$OUT/gpu.txt"
else
    python3 -m bench.gpu "$@"
fi
