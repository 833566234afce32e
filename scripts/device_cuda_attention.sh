#!/usr/bin/env bash
# The CUDA ragged attention on a GPU machine (H200, CUDA 13, CMake, nvcc; no package
# registry): builds the standalone project bench/cuda/ (CUDA toolkit only: the main
# library's fmt, nlohmann-json, CLI11, hwy, pcre2, icu and liblzma are not needed, and their
# presence is only reported), runs the correctness checker, compute-sanitizer memcheck
# and racecheck on small cases, and the benchmark. Everything goes under $OUT:
#   summary.txt               one PASS/FAIL/SKIP line per step, the verdict last
#   env.txt, main_build_deps.txt, build.txt, resource_usage.txt, check.txt, memcheck.txt, racecheck.txt,
#   bench.txt, bench_cuda_attention.json (device, date, commit, ceiling, per case),
#   peers.txt, peers.json (bench/cuda/peers.py on the same inputs), ncu.txt,
#   bench_s<N>.txt / bench_cuda_attention_s<N>.json for EKVA_VARIANTS="N ..." (kStages)
#   bench_p<T>_<E>.txt / bench_cuda_attention_p<T>_<E>.json for EKVA_PLAN_SWEEP="T:E ..."
#   (plan options: tasks per SM, minimum item entries)
# Each step has a time limit and the script skips what no longer fits in 7 minutes.
# Exit status: 0 when every step that ran passed.
#   OUT=/tmp/out bash scripts/device_cuda_attention.sh     (EKVA_COMMIT=sha optional)
set -u
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out/cuda-attention}
BUILD=${BUILD:-/tmp/ekva-cuda-attention-build}
BUDGET=${BUDGET:-420}   # seconds for the whole script
source "$ROOT/scripts/device_lib.sh"
say "commit $COMMIT; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"

# What the main build would lack here (informational: the standalone build needs none).
{
  for h in fmt/format.h nlohmann/json.hpp CLI/CLI.hpp hwy/highway.h gtest/gtest.h; do
    if [ -e "/usr/include/$h" ] || [ -e "/usr/local/include/$h" ]; then echo "found   $h"; else echo "missing $h"; fi
  done
  for pc in libpcre2-8 icu-uc liblzma; do
    if command -v pkg-config > /dev/null && pkg-config --exists "$pc"; then echo "found   $pc"; else echo "missing $pc"; fi
  done
} > "$OUT/main_build_deps.txt" 2>&1
say "main-library packages: $(grep -c '^missing' "$OUT/main_build_deps.txt") of 8 missing (see main_build_deps.txt; not needed here)"

for tool in nvcc cmake g++; do
  if ! command -v $tool > /dev/null; then
    say "FAIL $tool not found: cannot build"
    exit 1
  fi
done
GEN=""
command -v ninja > /dev/null && GEN="-G Ninja"
if ! step "build (bench/cuda standalone, sm_90a)" 200 "$OUT/build.txt" bash -c \
  "cmake -S '$ROOT/bench/cuda' -B '$BUILD' $GEN -DCMAKE_BUILD_TYPE=Release -DEKVA_WERROR=OFF && cmake --build '$BUILD' -j $(nproc)"; then
  say "VERDICT FAIL (no build)"
  exit 1
fi
CHECK=$BUILD/ekva_cuda_attention_check
BENCH=$BUILD/ekva_bench_cuda_attention

# Registers, shared memory and spills per kernel (informational).
command -v cuobjdump > /dev/null &&
  cuobjdump --dump-resource-usage "$BUILD/libekva_attention.a" > "$OUT/resource_usage.txt" 2>&1

step "correctness: all cases vs ref::attention, per request, graph replay" 90 "$OUT/check.txt" "$CHECK"
grep -E '^(PASS|FAIL)' "$OUT/check.txt" | sed 's/^/    /' >> "$OUT/summary.txt"

if [ -n "$SANITIZER" ]; then
  step "compute-sanitizer memcheck (small cases)" 75 "$OUT/memcheck.txt" \
    "$SANITIZER" --tool memcheck --error-exitcode 3 --leak-check full "$CHECK" --small
  grep -E 'ERROR SUMMARY' "$OUT/memcheck.txt" | tail -1 | sed 's/^/    /' >> "$OUT/summary.txt"
  step "compute-sanitizer racecheck (3 small cases)" 75 "$OUT/racecheck.txt" \
    "$SANITIZER" --tool racecheck --racecheck-report all --error-exitcode 3 "$CHECK" --small \
    --case d64_g1_scored_paged --case d128_g8_window_scored_fine --case d64_g7_odd_group_window
  grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.txt" | tail -1 | sed 's/^/    /' >> "$OUT/summary.txt"
else
  say "FAIL compute-sanitizer not found"
  FAILED=1
fi

DUMP=$BUILD/dump
mkdir -p "$DUMP"
step "benchmark" 90 "$OUT/bench.txt" "$BENCH" --runs 25 --json-out "$OUT/bench_cuda_attention.json" \
  --commit "$COMMIT" --dump-dir "$DUMP"
sed 's/^/    /' "$OUT/bench.txt" | head -20 >> "$OUT/summary.txt"

# Peers on the same inputs (bench/cuda/peers.py rebuilds them from the bench's fills),
# outputs checked against this kernel's dumps.
if [ "${EKVA_SKIP_PEERS:-0}" != 1 ]; then
  PY=$(command -v python3 || command -v python)
  step "peers: SDPA cuDNN/flash, flash varlen, Triton" 240 "$OUT/peers.txt" \
    "$PY" "$ROOT/bench/cuda/peers.py" --bench-json "$OUT/bench_cuda_attention.json" \
    --dump-dir "$DUMP" --json-out "$OUT/peers.json" --runs 25
  grep -E 'error|Error' "$OUT/peers.txt" | head -5 | sed 's/^/    /' >> "$OUT/summary.txt"
fi

# Where the kernel's time goes on a large dense case (informational).
if [ "${EKVA_NCU:-1}" = 1 ] && command -v ncu > /dev/null; then
  step "ncu: attend_kernel on dense_8x32k" 120 "$OUT/ncu.txt" ncu --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    --section SchedulerStats -k regex:attend_kernel --launch-skip 3 --launch-count 1 \
    "$BENCH" --runs 20 --case dense_8x32k
fi

# Plan sweep (EKVA_PLAN_SWEEP="TASKS_PER_SM:MIN_ITEM_ENTRIES ..."): the same build,
# other plan options, benchmark only.
for opt in ${EKVA_PLAN_SWEEP:-}; do
  tps=${opt%%:*}
  mie=${opt##*:}
  step "plan tasks/SM=$tps min_item_entries=$mie: benchmark" 60 "$OUT/bench_p${tps}_${mie}.txt" \
    "$BENCH" --runs 25 --tasks-per-sm "$tps" --min-item-entries "$mie" \
    --json-out "$OUT/bench_cuda_attention_p${tps}_${mie}.json" --commit "$COMMIT+plan${tps}:${mie}"
  sed 's/^/    /' "$OUT/bench_p${tps}_${mie}.txt" | head -14 >> "$OUT/summary.txt"
done

# Tuning variants: pipeline depth (EKVA_VARIANTS="5 7": kStages per build), benchmark only.
for stages in ${EKVA_VARIANTS:-}; do
  VB=$BUILD-s$stages
  step "variant kStages=$stages: build" 200 "$OUT/build_s$stages.txt" bash -c \
    "cmake -S '$ROOT/bench/cuda' -B '$VB' $GEN -DCMAKE_BUILD_TYPE=Release -DEKVA_WERROR=OFF \
       -DCMAKE_CUDA_FLAGS=-DEKVA_ATTN_STAGES=$stages && cmake --build '$VB' -j $(nproc) --target ekva_bench_cuda_attention" &&
  step "variant kStages=$stages: benchmark" 90 "$OUT/bench_s$stages.txt" "$VB/ekva_bench_cuda_attention" \
    --runs 25 --json-out "$OUT/bench_cuda_attention_s$stages.json" --commit "$COMMIT+stages$stages"
  sed 's/^/    /' "$OUT/bench_s$stages.txt" | head -14 >> "$OUT/summary.txt"
done

if (( FAILED == 0 )); then say "VERDICT PASS ($(elapsed) s)"; else say "VERDICT FAIL ($(elapsed) s)"; fi
exit $FAILED
