#!/usr/bin/env bash
# The one prepared GPU check (about 5 minutes on an H200): the GPU tests, then the GEMM benchmark.
# Run through the device tool from the repository root:  bash scripts/gpu_check.sh
# It installs nothing heavy: the machine's own torch and triton are used; transformers, gguf and
# accelerate come as wheels carried in .whl/ (see the device README) when the image lacks them.
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/kernels/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 240 python3 scripts/gpu_bench.py --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"
