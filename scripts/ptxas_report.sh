#!/usr/bin/env bash
# Per-kernel register / spill / shared-memory report of the torch-free CUDA kernels, compiled
# with plain nvcc (no torch headers) for each arch given (default: sm_80 sm_90). Fails if any
# kernel fails to compile. Usage: scripts/ptxas_report.sh [sm_XX ...]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
archs=("$@"); [ ${#archs[@]} -gt 0 ] || archs=(sm_80 sm_90)
printf '%-8s %-70s %5s %12s %12s %8s\n' arch kernel regs spill_st_B spill_ld_B smem_B
for cu in csrc/kernels/*.cu; do
  for arch in "${archs[@]}"; do
    log=$("$NVCC" -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -arch="$arch" \
          --resource-usage -c "$cu" -o /dev/null 2>&1) || { echo "$log"; exit 1; }
    echo "$log" | awk -v arch="$arch" '
      /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name = substr($0, RSTART+1, RLENGTH-2) }
      /spill stores/ { st = $5; ld = $9 }
      /Used [0-9]+ registers/ {
        regs = $5; smem = 0
        if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH) + 0
        cmd = "c++filt \"" name "\""; cmd | getline pretty; close(cmd)
        gsub(/void |resnext_kernels::|\(anonymous namespace\)::/, "", pretty); sub(/\(.*$/, "", pretty)
        printf "%-8s %-70s %5s %12s %12s %8s\n", arch, pretty, regs, st, ld, smem }'
  done
done
