#!/usr/bin/env bash
# The CUDA backend's ops (cuda::CudaBackend) on a GPU machine (H200, CUDA 13, CMake,
# nvcc; no package registry): builds the standalone project bench/cuda/ (CUDA toolkit
# only), runs every case of tests/cuda_ops_check.cpp against ref::, then
# compute-sanitizer memcheck on the small cases and racecheck on the router and RoPE
# kernels (the two that share data between threads of a block: shared memory and
# reductions). Everything goes under $OUT:
#   summary.txt     one PASS/FAIL/SKIP line per step and per case, the VERDICT line last
#   env.txt, build.txt, check.txt, memcheck.txt, racecheck.txt
# Each step has a time limit and the script skips what no longer fits in its budget.
# Exit status: 0 when every step passed.
#   OUT=/tmp/out bash scripts/device_cuda_ops.sh     (EKVA_COMMIT=sha optional)
set -u
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out/cuda-ops}
BUILD=${BUILD:-/tmp/ekva-cuda-ops-build}
BUDGET=${BUDGET:-480}   # seconds for the whole script
source "$ROOT/scripts/device_lib.sh"
say "commit $COMMIT; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"

for tool in nvcc cmake g++; do
  if ! command -v $tool > /dev/null; then
    say "FAIL $tool not found: cannot build"
    say "VERDICT FAIL (no build)"
    exit 1
  fi
done
GEN=""
command -v ninja > /dev/null && GEN="-G Ninja"
# Only the op checker (and what it links): the attention benchmark is
# scripts/device_cuda_attention.sh's.
if ! step "build (bench/cuda standalone: ekva_cuda_ops_check, sm_90a)" 240 "$OUT/build.txt" bash -c \
  "cmake -S '$ROOT/bench/cuda' -B '$BUILD' $GEN -DCMAKE_BUILD_TYPE=Release -DEKVA_WERROR=OFF && cmake --build '$BUILD' -j $(nproc) --target ekva_cuda_ops_check"; then
  say "VERDICT FAIL (no build)"
  exit 1
fi
CHECK=$BUILD/ekva_cuda_ops_check

step "correctness: every op vs ref::, all cases" 120 "$OUT/check.txt" "$CHECK"
grep -E '^(PASS|FAIL|SKIP)|cases failed' "$OUT/check.txt" | sed 's/^/    /' >> "$OUT/summary.txt"

if [ -n "$SANITIZER" ]; then
  step "compute-sanitizer memcheck (small cases)" 150 "$OUT/memcheck.txt" \
    "$SANITIZER" --tool memcheck --error-exitcode 3 --leak-check full "$CHECK" --small \
    --skip allocate_align_and_errors  # its 1 PiB cudaMalloc fails on purpose (an API error)
  grep -E 'ERROR SUMMARY|LEAK SUMMARY' "$OUT/memcheck.txt" | tail -2 | sed 's/^/    /' >> "$OUT/summary.txt"
  step "compute-sanitizer racecheck (route, rope: small cases)" 120 "$OUT/racecheck.txt" \
    "$SANITIZER" --tool racecheck --racecheck-report all --error-exitcode 3 "$CHECK" --small \
    --op route --op rope
  grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.txt" | tail -1 | sed 's/^/    /' >> "$OUT/summary.txt"
else
  say "FAIL compute-sanitizer not found"
  FAILED=1
fi

if (( FAILED == 0 )); then say "VERDICT PASS ($(elapsed) s)"; else say "VERDICT FAIL ($(elapsed) s)"; fi
exit $FAILED
