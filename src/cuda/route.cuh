// The MoE router on the GPU: softmax over the experts, top-k by probability (ties to
// the lower expert id), optionally renormalised; the semantics of cpu::route.
#pragma once

#include <cuda_runtime.h>

#include "ops/ops.h"

namespace ekva::cuda {

// Most experts one call supports (the CPU backend's limit too).
constexpr int kRouteMaxExperts = 512;

// The op of ops/ops.h with logits, experts and weights in device memory.
void route(const RouteParams& p, cudaStream_t stream);

}  // namespace ekva::cuda
