#!/usr/bin/env bash
# Everything a GPU session should run. Steps are named on the command line; each device call
# must end within 10 minutes, so a session runs three calls on one warm machine:
#   scripts/gpu_session.sh tests          (build ~1 min + GPU test suite, <= 9 min)
#   scripts/gpu_session.sh sanitize bench (compute-sanitizer <= 5 min, per-layer benchmark)
#   scripts/gpu_session.sh bench-full models
# The build is skipped when the installed extension was built from the same sources.
# Writes at most 8 files under $OUT (the device tool's limit): session.log, sanitizer.log and
# the benchmark result files. Copy the benchmark files into benchmarks/results/ and the auto
# table (sm_XX.json) into resnext_kernels/backends/auto_tables/ (fix its "source" path), and
# commit them.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
log() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)" | tee -a "$LOG"; }

sources_hash() { (cd "$REPO" && find csrc setup.py -type f | sort | xargs md5sum | md5sum | cut -c1-16); }

step_build() {
  local marker=/tmp/resnext_kernels_built_from
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$(sources_hash)" ]; then
    (cd "$REPO" && python3 -m pip install --no-build-isolation --no-deps --no-index -q . ) >>"$LOG" 2>&1
    log "build unchanged: Python files reinstalled"
    return
  fi
  log "GPU and build"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
  (cd "$REPO" && RESNEXT_KERNELS_FORCE_CUDA=1 python3 -m pip install --no-build-isolation \
      --no-deps --no-index -q . ) >>"$LOG" 2>&1 || { echo "BUILD FAILED" | tee -a "$LOG"; exit 1; }
  sources_hash > /tmp/resnext_kernels_built_from
  (cd /tmp && python3 -c "import json, resnext_kernels as rk; print(json.dumps(rk.build_info(), indent=1)); print(rk.available_backends('cuda'))") 2>&1 | tee -a "$LOG"
}

step_tests() {
  log "test suite (GPU)"
  # from /tmp, so the installed package (with _C) is imported, not the source tree
  (cd /tmp && timeout 540 python3 -m pytest "$REPO/tests" -q -rfEs -p no:cacheprovider \
      -o addopts="" 2>&1 | tail -n 120) | tee -a "$LOG"
}

step_sanitize() {
  log "compute-sanitizer memcheck + racecheck (small cases of every path)"
  for tool in memcheck racecheck; do
    (cd /tmp && timeout 140 compute-sanitizer --tool "$tool" --print-limit 20 \
        python3 "$REPO/scripts/sanitize_cases.py" --backends cuda triton 2>&1 | tail -n 40) \
        | tee -a "$OUT/sanitizer.log" | tail -n 5 | tee -a "$LOG"
  done
}

step_bench() {
  log "per-layer benchmark: resnext50 + resnext101_32x8d, fp16/bf16, batch 128, no max-autotune"
  (cd /tmp && timeout 300 python3 "$REPO/benchmarks/grouped_conv.py" --batch 128 \
      --models resnext50_32x4d resnext101_32x8d --dtypes fp16 bf16 \
      --providers cudnn_eager cudnn_folded reference triton cuda --reps 30 --out "$OUT" \
      2>/dev/null | tail -n 100) | tee -a "$LOG"
  log "backend=auto table from that run (commit it with the results file)"
  (cd "$REPO" && python3 benchmarks/auto_table.py "$(ls -t "$OUT"/grouped_conv-*.json | head -1)" \
      --out-dir "$OUT" 2>&1) | tee -a "$LOG"
}

step_bench_full() {
  log "per-layer benchmark with torch.compile max-autotune (resnext50 fp16 channels_last)"
  (cd /tmp && timeout 560 python3 "$REPO/benchmarks/grouped_conv.py" --batch 128 \
      --models resnext50_32x4d --dtypes fp16 --layouts nhwc --out "$OUT" 2>/dev/null \
      | tail -n 60) | tee -a "$LOG"
}

step_models() {
  log "whole-model throughput"
  (cd /tmp && timeout 560 python3 "$REPO/benchmarks/models.py" --batch 64 --reps 10 \
      --out "$OUT" 2>/dev/null | tail -n 60) | tee -a "$LOG"
}

[ $# -gt 0 ] || { echo "usage: $0 STEP... (build tests sanitize bench bench-full models)"; exit 2; }
step_build
for step in "$@"; do
  case "$step" in
    build) ;;
    tests) step_tests ;;
    sanitize) step_sanitize ;;
    bench) step_bench ;;
    bench-full) step_bench_full ;;
    models) step_models ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
