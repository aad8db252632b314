#!/usr/bin/env bash
# One call on a GPU machine (torch and triton preinstalled, no package registry),
# at most 10 minutes: build the C++ and CUDA extensions, run the GPU tests, run the
# full benchmark suite, write the results under $OUT (or bench/results/).
# Usage, from the repository root:
#     bash bench/gpu.sh          # all: build, GPU tests (capped at 200 s), benchmark
#     bash bench/gpu.sh tests    # build, then every GPU test, with the whole call's time
#     bash bench/gpu.sh bench    # build, then the benchmark alone
# The ~1060 GPU tests compile hundreds of Triton kernels on a fresh machine, and may
# not finish inside "all"'s 200 s (a cut-short run says so in gpu-tests.log and the
# exit status). Where the session's device time allows, run "tests" and "bench" as
# two calls: each one builds for itself, since a machine may be a fresh one.
set -uo pipefail
MODE=${1:-all}
case "$MODE" in
  all | tests | bench) ;;
  *) echo "bench/gpu.sh: the mode must be all, tests or bench, not '$MODE'" >&2; exit 2 ;;
esac
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

tests_rc=0
if [[ "$MODE" != bench ]]; then
  log "GPU tests"
  # all: at most 200 s, leaving the benchmark >= 200 s; tests: the rest of the call.
  if [[ "$MODE" == all ]]; then tests_s=$(phase_limit 200 200); else tests_s=$(phase_limit 600 10); fi
  # LAAF_REQUIRE_CUDA=1: a CUDA build that failed is an error here, not a skip. 8 workers
  # of the machine's 16 cores: the phase is mostly Triton's compiler, on the CPU.
  LAAF_REQUIRE_CUDA=1 timeout "$tests_s" $PY -m pytest -q -x -rs -n 8 -m gpu tests/ 2>&1 \
    | tee "$OUT/gpu-tests.log" | tail -25
  tests_rc=${PIPESTATUS[0]}
  (( tests_rc == 124 )) && echo "GPU tests: cut short at ${tests_s} s (run 'bash bench/gpu.sh tests')" \
    | tee -a "$OUT/gpu-tests.log"
fi

bench_rc=0
if [[ "$MODE" != tests ]]; then
  log "benchmark (full suite)"
  # The rows are written after every case, so a run cut short keeps what it measured;
  # torch.compile providers stop being started 90 s before the end.
  if [[ "$MODE" == all ]]; then bench_s=$(phase_limit 400 10); else bench_s=$(phase_limit 600 10); fi
  timeout "$bench_s" $PY -m bench.run --full --device cuda --deadline-s $(( bench_s - 90 )) --out "$OUT"
  bench_rc=$?
fi

log "done ($MODE): tests rc=$tests_rc, bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
