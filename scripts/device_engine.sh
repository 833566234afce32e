#!/usr/bin/env bash
# The engine on the GPU machine, in one call: the whole-project build
# (scripts/device_build.sh, deps from .device/deps.tar.xz), the whole test suite there
# (CUDA tests included: ops, attention, the engine against the references),
# compute-sanitizer memcheck on the engine tests, `ekva generate --device cuda` on the
# shipped model, and ekva_bench_cuda_decode on the shipped model and on a random
# Mixtral-shaped checkpoint (tools/make_reference.py --bench-model). Under $OUT:
#   summary.txt (VERDICT last), ctest.txt, memcheck.txt, generate.json,
#   cuda_decode_shipped.json/.txt, cuda_decode_bench.json/.txt
#   OUT=/tmp/out bash scripts/device_engine.sh   (BENCH_MB=2000 by default)
set -u
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out/device-engine}
BUDGET=${BUDGET:-570}
EKVA_BUILD_ONLY=1 source "$ROOT/scripts/device_build.sh" || exit 1
B=$BUILD
step "ctest (whole suite, CUDA tests included)" 150 "$OUT/ctest.txt" \
  ctest --test-dir "$B" -j "$(nproc)" --output-on-failure -E "$NO_CORPUS"
grep -E "tests passed|tests failed|\(Failed\)" "$OUT/ctest.txt" | head -20 | sed 's/^/    /' >> "$OUT/summary.txt"
grep -hE "^\[ (worst|shipped|generate) " "$OUT/ctest.txt" > "$OUT/engine_errors.txt"
# ctest hides passing tests' output: run the engine tests once more for their figures.
"$B/tests/ekva_tests" --gtest_filter='CudaEngine*' 2>&1 | grep -E "^\[ (worst|shipped|generate) |FAILED|PASSED" \
  > "$OUT/engine_errors.txt"
sed 's/^/    /' "$OUT/engine_errors.txt" >> "$OUT/summary.txt"
if [ -n "$SANITIZER" ]; then
  step "compute-sanitizer memcheck (engine on the GPU: mixtral, qwen3_moe, batch, errors)" 150 \
    "$OUT/memcheck.txt" "$SANITIZER" --tool memcheck --error-exitcode 3 "$B/tests/ekva_tests" \
    --gtest_filter='CudaEngineReference.*/mixtral:CudaEngineReference.*/qwen3_moe:CudaEngineBatch.*:CudaEngineErrors.*'
  grep -E 'ERROR SUMMARY' "$OUT/memcheck.txt" | tail -1 | sed 's/^/    /' >> "$OUT/summary.txt"
fi
step "ekva generate --device cuda (shipped model)" 60 "$OUT/generate.json" \
  "$B/ekva" generate -m "$ROOT/models/ekva-moe-tiny" -p "The kernel of the system" -n 64 \
  --ignore-eos --device cuda --json
step "bench: decode on the GPU, shipped model" 60 "$OUT/cuda_decode_shipped.txt" \
  "$B/bench/ekva_bench_cuda_decode" -m "$ROOT/models/ekva-moe-tiny" --batch 1,8,32,64 \
  --context 1024 --steps 24 --commit "$COMMIT" --json-out "$OUT/cuda_decode_shipped.json"
sed 's/^/    /' "$OUT/cuda_decode_shipped.txt" >> "$OUT/summary.txt"
if step "make a ${BENCH_MB:-2000} MB Mixtral-shaped checkpoint" 120 "$OUT/bench_model.txt" \
     "${PY:-python3}" "$ROOT/tools/make_reference.py" --bench-model /tmp/ekva-bench-model \
     --bench-size-mb "${BENCH_MB:-2000}"; then
  step "bench: decode on the GPU, ${BENCH_MB:-2000} MB checkpoint" 120 "$OUT/cuda_decode_bench.txt" \
    "$B/bench/ekva_bench_cuda_decode" -m /tmp/ekva-bench-model --batch 1,8,32,64 --context 4096 \
    --steps 16 --commit "$COMMIT" --json-out "$OUT/cuda_decode_bench.json"
  sed 's/^/    /' "$OUT/cuda_decode_bench.txt" >> "$OUT/summary.txt"
fi
if (( FAILED == 0 )); then say "VERDICT PASS ($(elapsed) s)"; else say "VERDICT FAIL ($(elapsed) s)"; fi
exit $FAILED
