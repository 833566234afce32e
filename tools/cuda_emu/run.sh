#!/usr/bin/env bash
# Runs the CUDA attention kernels as host threads on a machine without a GPU, against
# the same case table as the device checker (tests/cuda_attention_check.cpp):
#   bash tools/cuda_emu/run.sh [--small] [--case NAME]...     (default: --small, ~5 min on 2 cores)
# Verification aid only: see patch_kernels.py for what it does and does not check.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build/cuda-emu}
mkdir -p "$BUILD"
python3 "$ROOT/tools/cuda_emu/patch_kernels.py" "$ROOT/src/cuda/attention.cu" "$BUILD/attention_emu.cpp"
# cuda_runtime.h here shadows the real one; shim/ stands in for the fmt-based error header.
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$ROOT/tools/cuda_emu" -I"$ROOT/bench/cuda/shim" -I"$ROOT/src" \
  -I"$ROOT/include" -I"$ROOT/tests" -o "$BUILD/emu_check" "$BUILD/attention_emu.cpp" \
  "$ROOT/tools/cuda_emu/emu_check.cpp" "$ROOT/tests/cuda_attention_check.cpp" "$ROOT/bench/cuda/check_main.cpp" \
  "$ROOT/src/ops/attention_plan.cpp" "$ROOT/src/cpu/ref/attention_ref.cpp"
if [ $# -eq 0 ]; then set -- --small; fi
exec "$BUILD/emu_check" "$@"
