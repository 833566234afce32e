#!/usr/bin/env bash
# Runs the CUDA backend (cuda::CudaBackend: every op, attention included) as host threads
# on a machine without a GPU, against the case table of the device checker
# (tests/cuda_ops_check.cpp, vs ref::):
#   bash tools/cuda_emu/run_ops.sh [--small] [--case NAME]... [--op OP]...   (default: --small)
# Verification aid only: see patch_ops.py and patch_kernels.py for what it does and does
# not check.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build/cuda-emu}
mkdir -p "$BUILD"
python3 "$ROOT/tools/cuda_emu/patch_kernels.py" "$ROOT/src/cuda/attention.cu" "$BUILD/attention_emu.cpp"
KERNELS=()
for k in embedding elementwise matmul rmsnorm rope route; do
  KERNELS+=("$ROOT/src/cuda/$k.cu" "$BUILD/${k}_emu.cpp")
done
python3 "$ROOT/tools/cuda_emu/patch_ops.py" "${KERNELS[@]}"
# cuda_runtime.h, cuda_bf16.h and cublas_v2.h here shadow the real ones; shim/ stands in
# for the fmt-based error header.
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$ROOT/tools/cuda_emu" -I"$ROOT/bench/cuda/shim" \
  -I"$ROOT/src" -I"$ROOT/include" -I"$ROOT/tests" -o "$BUILD/emu_ops_check" \
  "$BUILD/attention_emu.cpp" "$BUILD"/{embedding,elementwise,matmul,rmsnorm,rope,route}_emu.cpp \
  "$ROOT/src/cuda/cuda_backend.cpp" "$ROOT/tools/cuda_emu/emu_check.cpp" \
  "$ROOT/tests/cuda_ops_check.cpp" "$ROOT/bench/cuda/ops_check_main.cpp" \
  "$ROOT/src/ops/attention_plan.cpp" "$ROOT/src/cpu/ref/attention_ref.cpp" \
  "$ROOT/src/cpu/ref/elementwise_ref.cpp" "$ROOT/src/cpu/ref/matmul_ref.cpp" "$ROOT/src/core/dtype.cpp"
if [ $# -eq 0 ]; then set -- --small; fi
exec "$BUILD/emu_ops_check" "$@"
