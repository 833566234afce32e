#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite, then runs it again under
# AddressSanitizer + UndefinedBehaviorSanitizer, then gives each libFuzzer target a
# short run, after checking the sources' format. This is what CI runs (EKVA_SKIP_SANITIZERS=1 / EKVA_SKIP_FUZZ=1 skip steps).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
jobs=$(nproc)
# Every C++/CUDA source matches the committed .clang-format (Debian's clang-format 14).
./scripts/check_format.sh

cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs"
ctest --preset release -j "$jobs"

if [ "${EKVA_SKIP_SANITIZERS:-0}" != 1 ]; then
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j "$jobs"
  ctest --preset asan -j "$jobs"
fi

if [ "${EKVA_SKIP_FUZZ:-0}" != 1 ]; then
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j "$jobs"
  corpus=$(mktemp -d)
  trap 'rm -rf "$corpus"' EXIT
  mkdir -p "$corpus/safetensors" "$corpus/tokenizer"
  # The first directory collects new inputs; the committed seeds stay untouched.
  build/fuzz/fuzz_safetensors -max_total_time=20 -print_final_stats=1 \
    "$corpus/safetensors" tests/data/fuzz_safetensors_seed 2>&1 | tail -3
  build/fuzz/fuzz_tokenizer -max_total_time=20 -max_len=4096 -print_final_stats=1 \
    "$corpus/tokenizer" tests/data/tokenizer_bad 2>&1 | tail -3
fi
echo "test.sh: all steps passed"
