#!/usr/bin/env bash
# The GPU plan: everything a lent GPU machine should run for this project, in order of value,
# in as few device calls as the lease allows. The machine starts bare (torch 2.11.0+cu130,
# Triton 3.6.0, torchvision, timm, nvcc 13.0, ncu, compute-sanitizer; no network).
#
# Steps, in order, with the seconds each is planned for (each also gets a hard timeout):
#   build          120  the extension for sm_90 (MAX_JOBS=16), build_info, available backends
#   gpu-tests      240  pytest -m gpu: every backend on CUDA tensors, every kernel path, the real
#                       ResNeXt / SE-ResNeXt shapes, opcheck, torch.compile, the swapped models
#   bench          220  benchmarks/grouped_conv.py: resnext50_32x4d + resnext101_32x8d, batch
#                       128, fp16/bf16, channels_last, cudnn_eager cudnn_folded reference triton
#                       cuda, and CUDA v3 with bands of at most 128 and 64 output pixels
#                       (Triton v2's rows for comparison with v3: the H100 runs of 46be7db and
#                       f43d976; the triton_v2 provider would cost this step its margin)
#                       (cuda_v3_band128/64: more, smaller CTAs; device time, host time,
#                       CUDA-graph time); then the auto table
#   host            60  benchmarks/overhead_gpu.py: host time per call, layer by layer (aten, the
#                       original and swapped modules, the op direct and dispatched, the C++ op)
#                       and per resnext50 forward, with a cProfile of the swapped model
#   sanitize       130  compute-sanitizer memcheck + racecheck on small cases of every path
#                       (and of the Triton training path: masked forward, dgrad, wgrad)
#   ncu            170  Nsight Compute on one call of every kernel path (scripts/ncu_cases.py):
#                       DRAM bytes vs floor, sectors/request, shared wavefronts, occupancy;
#                       then the CUDA conv cases again for their warp-stall reasons
#                       (ncu-stalls.md; about 40 s, an estimate: not yet run)
#   se-models      150  benchmarks/squeeze_excite.py (seresnext50 SE stages; then the SE's auto
#                       table) + models.py
#   max-autotune   240  grouped_conv.py's torch.compile(max-autotune) provider, resnext50 fp16
#   train-bench    200  benchmarks/grouped_conv_backward.py: the fused op's backward and
#                       forward+backward against cuDNN eager (conv + BN + ReLU autograd),
#                       resnext50_32x4d, batch 128, fp16, channels_last then NCHW: triton and
#                       cuda with their default backward (aten's), triton_kernels and
#                       cuda_kernels with their own, cuda_dgrad with CUDA's dgrad and aten's
#                       wgrad; each fwd+bwd row with its kernels' device times (the profiler);
#                       then a quarter of it: the SE tail's forward+backward
#                       (squeeze_excite.py --backward: eager, triton, cuda; fp16 channels_last)
#                       (first timed at 659b2c1 with 4 providers, ~110 s then; correctness is
#                       in gpu-tests)
#   train-models   120  models.py, training steps only: resnext50_32x4d then seresnext50_32x4d
#                       (its SE tail fused in training too), batch 64, channels_last
#                       fp16: eager, replace_modules(fuse_training=True) (train-mode BN op,
#                       backend auto), and replace_modules without it (an estimate: not yet run)
#   train-bn-bench 120  grouped_conv_backward.py --bn train: forward+backward of each grouped
#                       layer with train-mode BatchNorm (batch statistics), resnext50_32x4d,
#                       batch 128, fp16, channels_last: cuDNN eager (conv + BN(train) + ReLU),
#                       triton and cuda (aten's backward), triton_kernels (grad_z written),
#                       triton_kernels_prologue (grad_z formed in dgrad's and wgrad's prologue),
#                       cuda_kernels; each row with its kernels' device times (an estimate:
#                       not yet run; 42 rows)
#
# One call runs the next steps not yet done on this machine that fit in its --budget (default
# 540 s, for a 600 s call), each under its own timeout, and skips the rest: call it again on the
# warm machine for the next ones (state in /tmp/resnext_kernels_plan). Device time per session
# was 15 minutes at the last reading (a start takes 1-2 of them), calls at most 10 minutes:
#   15-minute lease:  call 1  scripts/gpu_session.sh --budget 540   (build, gpu-tests, bench,
#                                                                   and host where it fits)
#                     call 2  scripts/gpu_session.sh --budget 300   (sanitize, ncu, + what fits)
# (measured on an H100, 2026-11-26: build 46 s, gpu-tests 194 s, bench 114 s, sanitize 106 s,
# ncu 151 s, se-models 96 s; a start 1-2 minutes. At 344631f, 2026-11-27: build 33 s, bench 83 s,
# host 13 s, sanitize 151 s, ncu 121 s; gpu-tests, one process, past 360 s at 1024 of 1196 tests,
# hence its xdist workers. A session whose forward kernels did not change since the last bench
# may name the steps, most valuable first, e.g. --budget 540 gpu-tests train-bench se-models.)
#   30-minute lease:  as above with call 2 --budget 540, then call 3 for se-models/max-autotune.
# Without .git in the copied tree, name the commit: RESNEXT_KERNELS_COMMIT=<sha> scripts/...
# A fresh machine (the warm one was given back) forgets the state: name the steps instead,
# e.g. `scripts/gpu_session.sh --budget 400 sanitize ncu se-models` (build always runs first,
# and is skipped when this machine already built these sources).
#
# Results: every file to commit is written under a staging tree that mirrors the repository
# (benchmarks/results/..., resnext_kernels/backends/auto_tables/sm_XX.json), and each call
# packs the whole tree into $OUT/results.tar.gz (device calls return at most 8 files), next to
# $OUT/session.log. Back on the development machine:
#   scripts/gpu_session.sh --unpack <files_at>     # extracts into the repository, lists files
# then commit them unedited. Logs (tests, sanitizer, ncu) land in
# benchmarks/results/gpu-session-<GPU>-<commit>-<date>/.
#
# --dry-run: the same steps, paths, arguments and files on the CPU (CI runs it): no build, the GPU
# tests collected (they skip), the benchmarks on CPU providers and small shapes, the sanitizer
# and ncu cases run without the tools (the exact tool command lines are printed), the auto table
# builder shown to refuse CPU results.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}

DRY=0; BUDGET=540; UNPACK=""; STEPS=()
ALL_STEPS=(gpu-tests bench host sanitize ncu se-models max-autotune train-bench train-models
           train-bn-bench)
declare -A PLANNED=([build]=120 [gpu-tests]=240 [bench]=220 [host]=60 [sanitize]=130 [ncu]=170
                    [se-models]=150 [max-autotune]=240 [train-bench]=200 [train-models]=120
                    [train-bn-bench]=120)
usage() { sed -n '2,60p' "$0"; echo "usage: $0 [--dry-run] [--budget SECONDS] [STEP...] | --unpack DIR"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    --unpack) UNPACK=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    build) ;;
    *) [ -n "${PLANNED[$1]:-}" ] || { echo "unknown step '$1'"; usage; exit 2; }; STEPS+=("$1") ;;
  esac
  shift
done

if [ -n "$UNPACK" ]; then  # on the development machine: the results into the repository
  tarball="$UNPACK/results.tar.gz"
  [ -f "$tarball" ] || { echo "no $tarball"; exit 1; }
  tar -xzf "$tarball" -C "$REPO" && tar -tzf "$tarball" | grep -v '/$' | sed 's/^/unpacked: /'
  exit
fi

START=$(date +%s)
if [ "$DRY" = 1 ]; then
  STATE=$(mktemp -d)/plan
  OUT=${OUT:-$STATE/out}
else
  STATE=/tmp/resnext_kernels_plan
  OUT=${OUT:-/tmp/gpu_session_out}
fi
STAGE=$STATE/stage
mkdir -p "$OUT" "$STAGE/benchmarks/results" "$STATE"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1   # the CPU path of the Triton backend, as in the test suite
fi

# The commit the results are of: result files are named by it. The device tool copies the working
# tree, maybe without .git: then pass it, RESNEXT_KERNELS_COMMIT=$(git rev-parse --short=12 HEAD).
if [ -z "${RESNEXT_KERNELS_COMMIT:-}" ]; then
  RESNEXT_KERNELS_COMMIT=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] \
    || RESNEXT_KERNELS_COMMIT+="-dirty"
fi
export RESNEXT_KERNELS_COMMIT  # benchmarks/common.py records this as the results' commit

# One folder per session for the logs; its name is fixed at the first call on this machine.
[ -f "$STATE/session_dir" ] || (cd "$REPO" && $PY - <<'PY' > "$STATE/session_dir"
import datetime, os
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
except Exception:
    gpu = "unknown"
commit = os.environ["RESNEXT_KERNELS_COMMIT"]
stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
print(f"benchmarks/results/gpu-session-{gpu.replace(' ', '-').replace('/', '-')}-{commit}-{stamp}")
PY
)
SESSION_DIR=$(cat "$STATE/session_dir")
LOGDIR="$STAGE/$SESSION_DIR"
mkdir -p "$LOGDIR"
LOG="$LOGDIR/session.log"

log() { printf '\n=== %s (%s, t=%ss)\n' "$1" "$(date +%T)" "$(( $(date +%s) - START ))" | tee -a "$LOG"; }
remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }
# run_logged SECONDS LOGFILE CMD...: runs CMD (from /tmp, so the installed package is imported,
# not the source tree) under a hard timeout, output to LOGFILE; its tail goes to the session log
# TIMEOUT_SIGNAL=INT (for pytest): at the limit SIGINT goes to pytest alone (--foreground), which
# stops its xdist workers itself, prints its summary with the failures' messages and writes its
# junit XML; sent to the whole process group (timeout's default) it interrupted that summary
# (both tried on the CPU with pytest-xdist 3.8).
run_logged() {
  local limit=$1 logfile=$2; shift 2
  local how=(-s TERM)
  [ "${TIMEOUT_SIGNAL:-TERM}" = INT ] && how=(--foreground -s INT)
  (cd /tmp && timeout "${how[@]}" --kill-after=20 "$limit" "$@") > "$logfile" 2>&1
  local rc=$?
  tail -n 40 "$logfile" | tee -a "$LOG" > /dev/null
  [ $rc -eq 124 ] && echo "(stopped at its ${limit}s limit)" | tee -a "$LOG"
  return $rc
}

pack() {  # everything staged so far, for the device tool to bring back
  tar -czf "$OUT/results.tar.gz" -C "$STAGE" . && cp "$LOG" "$OUT/session.log"
}

sources_hash() { (cd "$REPO" && find csrc setup.py resnext_kernels -type f -name '*.*' \
                   ! -name '*.pyc' | sort | xargs md5sum | md5sum | cut -c1-16); }

step_build() {
  if [ "$DRY" = 1 ]; then
    log "build (dry run: the installed package is used as it is)"
    (cd /tmp && $PY -c "import json, resnext_kernels as rk; print(json.dumps(rk.build_info())); print(rk.available_backends())") 2>&1 | tee -a "$LOG"
    return
  fi
  if [ -f "$STATE/built_from" ] && [ "$(cat "$STATE/built_from")" = "$(sources_hash)" ]; then
    log "build: this machine already built these sources"
    return
  fi
  log "GPU, versions and build (sm_$TORCH_CUDA_ARCH_LIST)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
  $PY -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$LOG"
  (cd "$REPO" && timeout 300 env RESNEXT_KERNELS_FORCE_CUDA=1 $PY -m pip install \
      --no-build-isolation --no-deps --no-index -q .) > "$LOGDIR/build.log" 2>&1 \
    || { tail -n 60 "$LOGDIR/build.log" | tee -a "$LOG"; echo "BUILD FAILED" | tee -a "$LOG"; pack; exit 1; }
  sources_hash > "$STATE/built_from"
  (cd /tmp && $PY -c "import json, resnext_kernels as rk; print(json.dumps(rk.build_info(), indent=1)); print(rk.available_backends('cuda'))") 2>&1 | tee -a "$LOG"
}

step_gpu_tests() {
  log "GPU tests: pytest -m gpu (every backend on CUDA tensors, real model shapes)"
  # -m gpu selects the tests that need a GPU: every (backend, cuda) parametrisation of the op
  # tests and the real-shape and real-model tests; the CPU suite already runs in CI.
  # RESNEXT_KERNELS_TRITON_AUTOTUNE=0: one launch configuration per Triton path, not ~1 s of
  # autotuning per new test shape (test_triton_every_launch_config runs each configuration).
  # pytest-xdist where the machine has it (the GPU image does): GPU_TEST_WORKERS (8) processes
  # compile Triton kernels and torch.compile graphs side by side (one process ran past 360 s at
  # 1024 of 1196 tests on 344631f), and a worker that crashes fails its test instead of ending
  # the run (344631f's first call lost every result to one segfault). SIGINT at the limit: the
  # failures' messages and the junit XML are still written.
  # --dist worksteal (xdist >= 3.2): at 659b2c1, 6 workers with the default scheduling ended at
  # the limit with 32 tests never started, the AOTInductor test and 31 backward tests, all
  # likely queued on one worker (inferred: xdist logs no assignment); worksteal lets an idle
  # worker take over another's queue. OMP_NUM_THREADS: each worker's CPU work (float64 references,
  # compilation) in 2 threads, not 16 each on 16 cores.
  local workers=()
  if [ "$DRY" = 0 ] && $PY -c "import xdist" 2>/dev/null; then
    workers=(-n "${GPU_TEST_WORKERS:-8}")
    $PY -c "import xdist, sys; v = tuple(map(int, xdist.__version__.split('.')[:2])); \
sys.exit(v < (3, 2))" 2>/dev/null && workers+=(--dist worksteal)
  fi
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TIMEOUT_SIGNAL=INT RESNEXT_KERNELS_TRITON_AUTOTUNE=0 \
    run_logged "$1" "$LOGDIR/gpu-tests.log" \
    $PY -m pytest "$REPO/tests" -m gpu -q -rfE ${workers[@]+"${workers[@]}"} \
    -p no:cacheprovider -o addopts="" --durations=15 \
    --junitxml="$LOGDIR/gpu-tests.xml"
}

step_bench() {
  log "per-layer benchmark (grouped conv + BN + ReLU)"
  local args=(--out "$STAGE/benchmarks/results" --time-budget $(( $1 - 30 )))
  if [ "$DRY" = 1 ]; then
    args+=(--batch 1 --dtypes fp32 --layouts nhwc --shape 64,8,8,16,1 --reps 2)
  else
    args+=(--batch 128 --models resnext50_32x4d resnext101_32x8d --dtypes fp16 bf16
           --layouts nhwc --providers cudnn_eager cudnn_folded reference triton cuda
           cuda_v3_band128 cuda_v3_band64 --reps 20)
  fi
  run_logged "$1" "$LOGDIR/bench.log" $PY "$REPO/benchmarks/grouped_conv.py" "${args[@]}"
  local rc=$?
  local results
  results=$(ls -t "$STAGE"/benchmarks/results/grouped_conv-*.json 2>/dev/null | head -1)
  [ -n "$results" ] || { echo "no grouped_conv results file" | tee -a "$LOG"; return 1; }
  log "backend=auto table from $(basename "$results")"
  mkdir -p "$STAGE/resnext_kernels/backends/auto_tables"
  (cd "$REPO" && $PY benchmarks/auto_table.py "$results" \
      --source "benchmarks/results/$(basename "$results")" \
      --out-dir "$STAGE/resnext_kernels/backends/auto_tables") > "$LOGDIR/auto_table.log" 2>&1
  local auto_rc=$?
  cat "$LOGDIR/auto_table.log" | tee -a "$LOG"
  if [ "$DRY" = 1 ]; then  # CPU results must be refused: that is what the dry run checks
    grep -q "not a GPU run" "$LOGDIR/auto_table.log" || { echo "auto table: expected a refusal"; return 1; }
    return $rc
  fi
  return $(( rc || auto_rc ))
}

step_host() {
  log "host overhead per call and per model forward (benchmarks/overhead_gpu.py)"
  local args=(--out "$STAGE/benchmarks/results")
  [ "$DRY" = 1 ] && args+=(--quick)
  run_logged "$1" "$LOGDIR/host.log" $PY "$REPO/benchmarks/overhead_gpu.py" "${args[@]}"
}

step_sanitize() {
  log "compute-sanitizer memcheck + racecheck (small cases of every path)"
  local cases=("$REPO/scripts/sanitize_cases.py")
  local rc=0 tool
  for tool in memcheck racecheck; do
    if [ "$DRY" = 1 ]; then
      echo "would run: compute-sanitizer --tool $tool --print-limit 20 --error-exitcode 3 $PY ${cases[*]} --backends cuda triton" | tee -a "$LOG"
      run_logged "$1" "$LOGDIR/sanitize-$tool.log" $PY "${cases[@]}" --device cpu --backends reference || rc=$?
    else
      # memcheck first and with the larger share; the cases print a timed progress line per
      # group, so a run stopped at its limit still says how far it got
      local share=$(( $1 * 2 / 5 ))
      [ "$tool" = memcheck ] && share=$(( $1 * 3 / 5 ))
      run_logged "$share" "$LOGDIR/sanitize-$tool.log" compute-sanitizer --tool "$tool" \
        --print-limit 20 --error-exitcode 3 $PY "${cases[@]}" --backends cuda triton || rc=$?
    fi
  done
  return $rc
}

# --clock-control none: measure the card as it is (no clock locking); --profile-from-start off:
# only the region scripts/ncu_cases.py opens, after its warm-up; base units (bytes, ns)
NCU_ARGS=(--target-processes all --profile-from-start off --clock-control none --csv
          --page details --print-units base)

step_ncu() {
  log "Nsight Compute: one call of every kernel path"
  local manifest="$LOGDIR/ncu-cases.json" raw="$LOGDIR/ncu.csv" rc=0 t_step=$SECONDS
  if [ "$DRY" = 1 ]; then
    echo "would run: ncu ${NCU_ARGS[*]} --metrics $($PY "$REPO/scripts/ncu_summary.py" --metrics) $PY $REPO/scripts/ncu_cases.py --manifest $manifest" | tee -a "$LOG"
    run_logged "$1" "$LOGDIR/ncu.log" $PY "$REPO/scripts/ncu_cases.py" --device cpu \
      --manifest "$manifest" || return $?
    $PY "$REPO/scripts/ncu_summary.py" --metrics > /dev/null || return $?
    # the summary on a profile made up in ncu's format, so a parsing error shows here, not on
    # the GPU (tests/test_gpu_plan.py checks the figures themselves)
    $PY "$REPO/tests/ncu_fixture.py" "$manifest" > "$raw" || return $?
  else
    ncu --query-metrics > "$LOGDIR/ncu-query-metrics.txt" 2>&1
    local metrics
    metrics=$($PY "$REPO/scripts/ncu_summary.py" --metrics \
                --query-output "$LOGDIR/ncu-query-metrics.txt" 2>>"$LOG")
    # an unreadable query leaves nothing to filter by: ask for the whole list then
    [ -n "$metrics" ] || metrics=$($PY "$REPO/scripts/ncu_summary.py" --metrics)
    # --log-file: ncu's CSV apart from the program's own output
    local t0=$SECONDS
    (cd /tmp && timeout --kill-after=10 "$1" ncu "${NCU_ARGS[@]}" --metrics "$metrics" \
        --log-file "$raw" $PY "$REPO/scripts/ncu_cases.py" --manifest "$manifest") \
      > "$LOGDIR/ncu.log" 2>&1
    rc=$?
    # the launch__ attributes are asked for although ncu's query does not list them; if this
    # ncu refuses them, once more without them (registers and waves then stay blank)
    if [ $rc -ne 0 ] && grep -q "launch__" "$LOGDIR/ncu.log" "$raw" 2>/dev/null; then
      echo "ncu refused the launch__ metrics: again without them" | tee -a "$LOG"
      metrics=$(echo "$metrics" | tr ',' '\n' | grep -v '^launch__' | paste -sd, -)
      (cd /tmp && timeout --kill-after=10 $(( $1 - (SECONDS - t0) )) ncu "${NCU_ARGS[@]}" \
          --metrics "$metrics" --log-file "$raw" $PY "$REPO/scripts/ncu_cases.py" \
          --manifest "$manifest") > "$LOGDIR/ncu.log" 2>&1
      rc=$?
    fi
    tail -n 20 "$LOGDIR/ncu.log" | tee -a "$LOG"
  fi
  (cd "$LOGDIR" && $PY "$REPO/scripts/ncu_summary.py" "$raw" "$manifest" \
      --out-prefix "$LOGDIR/ncu-summary") 2>&1 | tail -n 60 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  # Then where the CUDA conv kernels' warps wait (stall reasons per issued instruction): a
  # second, smaller run (the CUDA conv cases only) with the Warp State metrics.
  local smanifest="$LOGDIR/ncu-stall-cases.json" sraw="$LOGDIR/ncu-stalls.csv"
  local left=$(( $1 - (SECONDS - t_step) ))
  if [ "$DRY" = 1 ]; then
    echo "would run: ncu ${NCU_ARGS[*]} --metrics $($PY "$REPO/scripts/ncu_summary.py" --stalls --metrics) $PY $REPO/scripts/ncu_cases.py --backends cuda --ops conv --manifest $smanifest" | tee -a "$LOG"
    $PY "$REPO/scripts/ncu_cases.py" --device cpu --backends reference --ops conv \
      --manifest "$smanifest" >> "$LOGDIR/ncu.log" 2>&1 || return $?
    $PY "$REPO/tests/ncu_fixture.py" "$smanifest" > "$sraw" || return $?
  elif [ "$left" -gt 20 ]; then
    local smetrics
    smetrics=$($PY "$REPO/scripts/ncu_summary.py" --stalls --metrics \
                 --query-output "$LOGDIR/ncu-query-metrics.txt" 2>>"$LOG")
    [ -n "$smetrics" ] || smetrics=$($PY "$REPO/scripts/ncu_summary.py" --stalls --metrics)
    (cd /tmp && timeout --kill-after=10 "$left" ncu "${NCU_ARGS[@]}" --metrics "$smetrics" \
        --log-file "$sraw" $PY "$REPO/scripts/ncu_cases.py" --backends cuda --ops conv \
        --manifest "$smanifest") > "$LOGDIR/ncu-stalls.log" 2>&1 || rc=1
  else
    echo "no time left for the warp-stall run ($left s)" | tee -a "$LOG"
    return $rc
  fi
  (cd "$LOGDIR" && $PY "$REPO/scripts/ncu_summary.py" --stalls "$sraw" "$smanifest" \
      --out-prefix "$LOGDIR/ncu-stalls") 2>&1 | tail -n 30 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  return $rc
}

step_se_models() {
  log "SE block benchmark (seresnext50 SE stages) and whole-model throughput"
  local half=$(( $1 / 2 )) rc=0
  local se_args=(--out "$STAGE/benchmarks/results" --time-budget $(( half - 20 )))
  local model_args=(--out "$STAGE/benchmarks/results" --time-budget $(( half - 30 )))
  if [ "$DRY" = 1 ]; then
    se_args+=(--quick); model_args+=(--quick)
  else
    se_args+=(--batch 128 --dtypes fp16 bf16)
    # the modes that say what replace_modules gives a user, first (rows run model by model and
    # mode by mode, and the budget stops at a row boundary)
    model_args+=(--batch 64 --reps 10 --backend cuda --cuda-graphs --no-train
                 --models resnext50_32x4d seresnext50_32x4d --modes eager_cl_fp16 fused_cl_fp16
                 compile_cl_fp16 fused_compile_cl_fp16)
  fi
  run_logged "$half" "$LOGDIR/se-bench.log" $PY "$REPO/benchmarks/squeeze_excite.py" "${se_args[@]}" || rc=$?
  local results
  results=$(ls -t "$STAGE"/benchmarks/results/squeeze_excite-*.json 2>/dev/null | head -1)
  if [ -n "$results" ]; then  # the SE's backend="auto" table (refused in a dry run: CPU results)
    mkdir -p "$STAGE/resnext_kernels/backends/auto_tables"
    (cd "$REPO" && $PY benchmarks/auto_table.py "$results" \
        --source "benchmarks/results/$(basename "$results")" \
        --out-dir "$STAGE/resnext_kernels/backends/auto_tables") 2>&1 | tail -n 3 | tee -a "$LOG"
  fi
  run_logged "$half" "$LOGDIR/models.log" $PY "$REPO/benchmarks/models.py" "${model_args[@]}" || rc=$?
  return $rc
}

step_max_autotune() {
  log "torch.compile(mode=max-autotune) against cuDNN folded and ours (resnext50, fp16, NHWC)"
  local args=(--out "$STAGE/benchmarks/results" --time-budget $(( $1 - 30 )))
  if [ "$DRY" = 1 ]; then
    args+=(--batch 1 --dtypes fp32 --layouts nhwc --shape 64,8,8,16,1 --reps 2 --providers cudnn_folded)
  else
    args+=(--batch 128 --models resnext50_32x4d --dtypes fp16 --layouts nhwc
           --providers compile_max_autotune cudnn_folded triton cuda --reps 20)
  fi
  run_logged "$1" "$LOGDIR/max-autotune.log" $PY "$REPO/benchmarks/grouped_conv.py" "${args[@]}"
}

step_train_bench() {
  log "training: the fused op's backward and forward+backward against cuDNN eager; the SE tail's"
  # three quarters for the conv, a quarter for the SE tail's forward+backward (12 rows)
  local conv_s=$(( $1 * 3 / 4 )) rc=0
  local se_s=$(( $1 - conv_s ))
  local args=(--out "$STAGE/benchmarks/results" --time-budget $(( conv_s - 30 )))
  local se_args=(--out "$STAGE/benchmarks/results" --time-budget $(( se_s - 15 )) --backward)
  if [ "$DRY" = 1 ]; then
    args+=(--batch 1 --dtypes fp32 --layouts nhwc --shape 64,8,8,16,1 --reps 2)
    se_args+=(--quick --layouts nhwc)
  else
    args+=(--batch 128 --models resnext50_32x4d --dtypes fp16 --layouts nhwc nchw
           --providers cudnn_eager triton triton_kernels cuda cuda_dgrad cuda_kernels --reps 10)
    se_args+=(--batch 128 --dtypes fp16 --layouts nhwc --providers eager triton cuda --reps 10)
  fi
  run_logged "$conv_s" "$LOGDIR/train-bench.log" $PY "$REPO/benchmarks/grouped_conv_backward.py" "${args[@]}" || rc=$?
  run_logged "$se_s" "$LOGDIR/se-train-bench.log" $PY "$REPO/benchmarks/squeeze_excite.py" "${se_args[@]}" || rc=$?
  return $rc
}

step_train_models() {
  log "training steps of whole models: eager, replace_modules with and without fuse_training"
  local args=(--out "$STAGE/benchmarks/results" --time-budget $(( $1 - 30 )) --phases train)
  if [ "$DRY" = 1 ]; then
    args+=(--batch 2 --image 32 --reps 2 --modes fusedtrain_cl_bf16)
  else
    args+=(--batch 64 --reps 10 --models resnext50_32x4d seresnext50_32x4d
           --modes eager_cl_fp16 fusedtrain_cl_fp16 fused_cl_fp16)
  fi
  run_logged "$1" "$LOGDIR/train-models.log" $PY "$REPO/benchmarks/models.py" "${args[@]}"
}

step_train_bn_bench() {
  log "training with train-mode BatchNorm, layer by layer: the fused kernels against cuDNN eager"
  local args=(--out "$STAGE/benchmarks/results" --time-budget $(( $1 - 20 )) --bn train
              --phases fwd+bwd)
  if [ "$DRY" = 1 ]; then
    args+=(--batch 1 --dtypes fp32 --layouts nhwc --shape 64,8,8,16,1 --reps 2)
  else
    args+=(--batch 128 --models resnext50_32x4d --dtypes fp16 --layouts nhwc --reps 10
           --providers cudnn_eager triton triton_kernels triton_kernels_prologue cuda
           cuda_kernels)
  fi
  run_logged "$1" "$LOGDIR/train-bn-bench.log" $PY "$REPO/benchmarks/grouped_conv_backward.py" "${args[@]}"
}

# --- the plan ---------------------------------------------------------------------------------
[ ${#STEPS[@]} -gt 0 ] || for s in "${ALL_STEPS[@]}"; do
  grep -qx "$s" "$STATE/done" 2>/dev/null || STEPS+=("$s")
done
log "plan: ${STEPS[*]:-nothing left} (budget ${BUDGET}s; dry run: $DRY)"
step_build
failed=()
for step in "${STEPS[@]}"; do
  left=$(remaining)
  if [ "$left" -lt "${PLANNED[$step]}" ] && [ "$DRY" = 0 ]; then
    echo "not started: $step (planned ${PLANNED[$step]}s, ${left}s left in this call)" | tee -a "$LOG"
    continue
  fi
  # a step may run to 1.5x its plan, but never past the call's budget
  limit=$(( PLANNED[$step] * 3 / 2 )); [ "$limit" -le "$left" ] || limit=$left
  [ "$DRY" = 0 ] || limit=$(( PLANNED[$step] * 3 ))
  status=0
  "step_${step//-/_}" "$limit" || status=$?
  # a step that ran to its end is done, failures included (they are results, and a rerun would
  # spend the lease on the same answer); one stopped at its time limit is left for a later call
  if [ $status -ne 124 ] && [ $status -ne 137 ]; then echo "$step" >> "$STATE/done"; fi
  [ $status -eq 0 ] || failed+=("$step (exit $status)")
  echo "step $step: exit $status" | tee -a "$LOG"
  pack
done
pack
left_over=()
for s in "${ALL_STEPS[@]}"; do grep -qx "$s" "$STATE/done" 2>/dev/null || left_over+=("$s"); done
log "done in this call: ${#STEPS[@]} planned; failed: ${failed[*]:-none}; not done yet: ${left_over[*]:-none}"
ls -la "$OUT" | tee -a "$LOG"
[ ${#failed[@]} -eq 0 ]
