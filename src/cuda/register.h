// Makes the CUDA backend and its device KV cache available to the runtime under the
// device kind "cuda" (runtime/devices.h). Call once at program start.
#pragma once

namespace ekva::cuda {
void register_cuda();
}  // namespace ekva::cuda
