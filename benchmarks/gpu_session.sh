#!/usr/bin/env bash
# One short session on a GPU machine (see README, Speed): the grid benchmark on CUDA and the language-model
# checks of benchmarks/gpu_checks.py. Results go to $OUT (default /tmp/landscape-gpu). Needs the repository's
# dependencies importable; wheels in .whl/ (zarr and its codecs) are installed into /tmp/site first if present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/landscape-gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 110 python3 benchmarks/gpu_checks.py 2>&1 | tee "$OUT/lm_checks.txt"
timeout 170 python3 benchmarks/grid_speed.py --device cuda --repeat 1 --points-per-pass 16,64 --json \
    >"$OUT/grid_speed.json" 2> >(tee "$OUT/grid_speed.txt" >&2)
