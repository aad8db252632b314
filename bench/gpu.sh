#!/usr/bin/env bash
# One call on a GPU machine (torch and triton preinstalled, no package registry),
# at most 10 minutes: build the CUDA extension (when csrc/ has one), run the GPU
# tests, run the full benchmark suite, write the results under $OUT (or
# bench/results/). Usage, from the repository root:
#     bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
log() { printf '\n== %s ==\n' "$*"; }

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

log "build"
if ls csrc/*.cpp >/dev/null 2>&1; then
  timeout 180 $PY -c "import laaf_kernels.ops.extension as e; e.load(verbose=True)" \
    || echo "extension build failed (see above); the cpp/cuda backends will be unavailable"
else
  echo "csrc/ has no C++ sources in this version: nothing to build"
fi

log "GPU tests"
timeout 170 $PY -m pytest -q -x -rs tests/test_triton_linear.py tests/test_triton_activation.py \
  tests/test_triton_integration.py tests/test_codegen.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

log "benchmark (full suite)"
timeout 360 $PY -m bench.run --full --device cuda --deadline-s 200 --out "$OUT"
bench_rc=$?

log "done: tests rc=$tests_rc, bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
