#!/usr/bin/env bash
# One prepared device run for the GPU issue (Pallas kernels natively vs cuDNN), < 8 minutes.
#
# On the lent GPU machine, from the repository root (the device tool's `run`):
#   bash scripts/gpu_check.sh "$OUT"
# The machine's image has JAX (CUDA), flax, optax, chex and pytest; a missing package travels as
# wheels in .whl/ (see the device tool's README), installed here when the folder exists.
# Everything lands in the output folder (default results/gpu_check): nvidia-smi, the native
# kernel-test log, the benchmark JSON and its log. Commit the JSON under results/<gpu name>/.
set -uo pipefail
out="${1:-results/gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$out/jax.txt"

# 1. Native kernel tests: the GPU cases, then the interpret-mode cases run natively (the
#    default interpret flag is False off CPU). ~3 min.
timeout 200 python3 -m pytest -p no:cacheprovider -o addopts="" -q -x \
  tests/kernels/test_gpu.py tests/kernels/test_kernels_flash.py tests/kernels/test_kernels_api.py \
  2>&1 | tee "$out/pytest-native.log"

# 2. The seq-8192 targets: attnlab pallas vs cuDNN, XLA and JAX's Pallas ops. ~2 min.
timeout 150 python3 -m attnlab.bench attention --target --out "$out" 2>&1 | tee "$out/bench.log"
# 3. The README table (time left permitting): head_dim 64 and 128 at seq 1k / 8k / 32k.
timeout 200 python3 -m attnlab.bench attention --seq 1024 8192 32768 --head_dim 64 128 --runs 5 \
  --out "$out" 2>&1 | tee "$out/bench-table.log"
ls -l "$out"
