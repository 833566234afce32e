#!/usr/bin/env bash
# The compressed store on the GPU and the end-to-end benchmark, on the GPU machine,
# in two calls (each under the device's 10-minute limit; the build in /tmp persists
# while the machine stays warm):
#   PHASE=check: the whole-project build (scripts/device_build.sh), the whole suite,
#     compute-sanitizer memcheck on the device store's tests, and `ekva generate
#     --device cuda` with SnapKV at 10% on the shipped model.
#   PHASE=quick: for a call with little device time left, in one go: the device
#     store's and the GPU engine's tests only, the end-to-end benchmark (LAYERS=2 by
#     default there), memcheck on the store's tests, then transformers at batch 1.
#   PHASE=bench: a Mixtral-8x7B-shaped checkpoint with LAYERS (4) layers (tools/make_reference.py
#     --bench-mixtral-layers 4, ~12 GB in /tmp), ekva_bench_cuda_e2e at 32k contexts
#     (full cache vs the compressed store in the same KV memory), and transformers'
#     own generate on the same checkpoint (scripts/device_transformers_decode.py).
# Under $OUT: summary.txt (VERDICT last) and each step's log / JSON.
#   OUT=/tmp/out PHASE=check EKVA_COMMIT=<hash> bash scripts/device_e2e.sh
set -u
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out/device-e2e}
BUDGET=${BUDGET:-570}
PHASE=${PHASE:-check}
[ "$PHASE" = quick ] && export BUILD_TARGETS=${BUILD_TARGETS:-"ekva_tests ekva_bench_cuda_e2e"}
[ "$PHASE" = quick ] && LAYERS=${LAYERS:-2}
LAYERS=${LAYERS:-4}
EKVA_BUILD_ONLY=1 source "$ROOT/scripts/device_build.sh" || exit 1
B=$BUILD
PROMPT=$(for i in $(seq 60); do printf 'The kernel of the system keeps a table of every page. '; done)
if [ "$PHASE" = check ]; then
  step "ctest (whole suite, CUDA tests included)" 200 "$OUT/ctest.txt" \
    ctest --test-dir "$B" -j "$(nproc)" --output-on-failure -E "$NO_CORPUS"
  grep -E "tests passed|tests failed|\(Failed\)" "$OUT/ctest.txt" | head -20 | sed 's/^/    /' >> "$OUT/summary.txt"
  "$B/tests/ekva_tests" --gtest_filter='DeviceCompressedCache*:CudaEngineApi*:DeviceKvStore*' 2>&1 |
    grep -E "^\[ (compressed|generate) |FAILED|PASSED" > "$OUT/figures.txt"
  sed 's/^/    /' "$OUT/figures.txt" >> "$OUT/summary.txt"
  if [ -n "$SANITIZER" ]; then
    step "compute-sanitizer memcheck (device KV store, compressed cache on the GPU)" 150 \
      "$OUT/memcheck.txt" "$SANITIZER" --tool memcheck --error-exitcode 3 "$B/tests/ekva_tests" \
      --gtest_filter='*DeviceKvStore*:DeviceCompressedCache.*'
    grep -E 'ERROR SUMMARY' "$OUT/memcheck.txt" | tail -1 | sed 's/^/    /' >> "$OUT/summary.txt"
  fi
  for dev in cpu cuda; do
    step "ekva generate --device $dev, snapkv 10% (shipped model)" 60 "$OUT/generate_snapkv_$dev.json" \
      "$B/ekva" generate -m "$ROOT/models/ekva-moe-tiny" -p "$PROMPT" -n 32 --ignore-eos \
      --device "$dev" --policy snapkv --budget 10% --json
  done
else
  if [ "$PHASE" = quick ]; then
    step "tests: device KV store, compressed cache and engine on the GPU" 90 "$OUT/tests.txt" \
      "$B/tests/ekva_tests" --gtest_filter='*DeviceKvStore*:DeviceCompressedCache*:CudaEngineApi*:CudaEngineBatch*:CudaEngineShipped*'
    grep -E "^\[ (compressed|generate|worst|shipped) |FAILED|PASSED|tests ran" "$OUT/tests.txt" |
      sed 's/^/    /' >> "$OUT/summary.txt"
  fi
  MODEL=/tmp/ekva-mixtral-${LAYERS}l
  if [ ! -f "$MODEL/config.json" ]; then
    step "make a Mixtral-8x7B-shaped ${LAYERS}-layer checkpoint" 200 "$OUT/bench_model.txt" \
      "${PY:-python3}" "$ROOT/tools/make_reference.py" --bench-model "$MODEL" --bench-mixtral-layers "$LAYERS"
  fi
  step "bench: end to end, 32k contexts, full vs ${E2E_BUDGET:-10%} in ${KV_GIB:-64} GiB" 330 "$OUT/cuda_e2e.txt" \
    "$B/bench/ekva_bench_cuda_e2e" -m "$MODEL" --context 32768 --kv-gib "${KV_GIB:-64}" \
    --budget "${E2E_BUDGET:-10%}" --methods "${METHODS:-adakv:snapkv}" --steps "${STEPS:-10}" --max-batch "${MAX_BATCH:-1024}" \
    --fill-seconds "${FILL_S:-150}" --commit "$COMMIT" --json-out "$OUT/cuda_e2e.json"
  sed 's/^/    /' "$OUT/cuda_e2e.txt" | tail -12 >> "$OUT/summary.txt"
  if [ "$PHASE" = quick ] && [ -n "$SANITIZER" ]; then
    step "compute-sanitizer memcheck (device KV store, head dim 40, the first case)" 60 "$OUT/memcheck.txt" \
      "$SANITIZER" --tool memcheck --error-exitcode 3 "$B/tests/ekva_tests" \
      --gtest_filter='*DeviceKvStore*/0'
    grep -E 'ERROR SUMMARY' "$OUT/memcheck.txt" | tail -1 | sed 's/^/    /' >> "$OUT/summary.txt"
  fi
  [ "${HF_BATCH:-1,8,16}" != none ] && step "transformers generate on the same checkpoint" 150 "$OUT/transformers.txt" \
    "${PY:-python3}" "$ROOT/scripts/device_transformers_decode.py" "$MODEL" --context 32768 \
    --batch "${HF_BATCH:-1,8,16}" --steps 10 --json-out "$OUT/transformers.json"
  tail -6 "$OUT/transformers.txt" | sed 's/^/    /' >> "$OUT/summary.txt"
fi
if (( FAILED == 0 )); then say "VERDICT PASS ($(elapsed) s)"; else say "VERDICT FAIL ($(elapsed) s)"; fi
exit $FAILED
