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
# The whole call's time (the device tool allows 600 s a call). Each phase gets at most its
# own cap and leaves the later phases their minimum, so a slow build shortens the
# benchmark instead of killing the call before any result is written.
BUDGET_S=${BUDGET_S:-570}
mkdir -p "$OUT"
log() { printf '\n== %s (%d s in, %d s left) ==\n' "$*" "$SECONDS" "$(( BUDGET_S - SECONDS ))"; }
# phase_limit CAP RESERVE: min(CAP, time left - RESERVE), at least 30 s.
phase_limit() {
  local left=$(( BUDGET_S - SECONDS - $2 ))
  (( left > $1 )) && left=$1
  (( left < 30 )) && left=30
  echo "$left"
}

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
nvcc --version | tail -1 || true

log "build (CPU and CUDA extensions, in parallel)"
build_s=$(phase_limit 300 300)  # leaves >= 300 s for the tests and the benchmark
timeout "$build_s" $PY -c "import laaf_kernels.ops.extension as e; print('cpp:', e.load(verbose=False) or 'ok')" &
timeout "$build_s" $PY -c "import laaf_kernels.ops.extension as e; print('cuda:', e.cuda_problem(verbose=False) or 'ok')" &
wait

log "GPU tests"
# LAAF_REQUIRE_CUDA=1: a CUDA build that failed is an error here, not a skip.
LAAF_REQUIRE_CUDA=1 timeout "$(phase_limit 200 200)" $PY -m pytest -q -x -rs -n 4 -m gpu tests/ 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

log "benchmark (full suite)"
# The rows are written after every case, so a run cut short keeps what it measured;
# torch.compile providers stop being started 90 s before the end.
bench_s=$(phase_limit 400 10)
timeout "$bench_s" $PY -m bench.run --full --device cuda --deadline-s $(( bench_s - 90 )) --out "$OUT"
bench_rc=$?

log "done: tests rc=$tests_rc, bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
