#!/usr/bin/env bash
# One call on a GPU machine (torch and triton preinstalled, no package registry),
# at most 10 minutes: build the C++ and CUDA extensions, run the GPU tests, run the
# full benchmark suite, write the results under $OUT (or bench/results/).
# Usage, from the repository root:
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
nvcc --version | tail -1 || true

log "build (CPU and CUDA extensions, in parallel)"
timeout 300 $PY -c "import laaf_kernels.ops.extension as e; print('cpp:', e.load(verbose=False) or 'ok')" &
timeout 300 $PY -c "import laaf_kernels.ops.extension as e; print('cuda:', e.cuda_problem(verbose=False) or 'ok')" &
wait

log "GPU tests"
# LAAF_REQUIRE_CUDA=1: a CUDA build that failed is an error here, not a skip.
LAAF_REQUIRE_CUDA=1 timeout 200 $PY -m pytest -q -x -rs -n 4 -m gpu tests/ 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

log "benchmark (full suite)"
timeout 300 $PY -m bench.run --full --device cuda --deadline-s 200 --out "$OUT"
bench_rc=$?

log "done: tests rc=$tests_rc, bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
