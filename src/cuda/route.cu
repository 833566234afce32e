#include <cmath>
#include <cstdint>

#include "cuda/check.cuh"
#include "cuda/route.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 128;

// Block-wide reduction of one float per thread (op: max or sum); every thread gets
// the result. `scratch` holds kThreads / 32 floats; a barrier at the end lets the
// caller reuse it.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) v = kMax ? fmaxf(v, scratch[w]) : v + scratch[w];
  __syncthreads();
  return v;
}

// One block per token. The probabilities are cpu::route's (expf(logit - max) / sum in
// f32), and each expert's rank is counted directly: the experts with a higher
// probability, or an equal one and a lower id, come before it. So ties go to the lower
// id exactly as the CPU's partial_sort comparator orders them, with no sorting pass and
// no data-dependent loop. (E^2 comparisons: 262k at the 512-expert limit, spread over
// the block; 4k for 64 experts.) Thread 0 then writes the top_k in rank order, summing
// them in that order for the renormalisation, as the CPU does.
__global__ void route_kernel(RouteParams p) {
  __shared__ float prob[kRouteMaxExperts];
  __shared__ int32_t top_expert[kRouteMaxExperts];
  __shared__ float scratch[kThreads / 32];
  const int E = p.n_experts;
  const float* logits = p.logits + static_cast<int64_t>(blockIdx.x) * E;

  float m = -INFINITY;
  for (int e = threadIdx.x; e < E; e += kThreads) m = fmaxf(m, logits[e]);
  m = block_reduce<true>(m, scratch);
  float s = 0.f;
  for (int e = threadIdx.x; e < E; e += kThreads) {
    prob[e] = expf(logits[e] - m);
    s += prob[e];
  }
  s = block_reduce<false>(s, scratch);  // its barriers also publish prob[]
  for (int e = threadIdx.x; e < E; e += kThreads) prob[e] /= s;
  for (int k = threadIdx.x; k < p.top_k; k += kThreads) top_expert[k] = -1;
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kThreads) {
    const float pe = prob[e];
    int rank = 0;
    for (int o = 0; o < E; ++o) {
      const float po = prob[o];
      rank += (po > pe || (po == pe && o < e)) ? 1 : 0;
    }
    if (rank < p.top_k) top_expert[rank] = e;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* experts = p.experts + static_cast<int64_t>(blockIdx.x) * p.top_k;
    float* weights = p.weights + static_cast<int64_t>(blockIdx.x) * p.top_k;
    float top_sum = 0.f;
    for (int k = 0; k < p.top_k; ++k) {
      // -1 only where NaN logits broke the order (no rank was unique): NaN weights.
      const int32_t e = top_expert[k];
      experts[k] = e;
      weights[k] = e >= 0 ? prob[e] : NAN;
      top_sum += weights[k];
    }
    if (p.renormalize)
      for (int k = 0; k < p.top_k; ++k) weights[k] /= top_sum;
  }
}

}  // namespace

void route(const RouteParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n_experts > 0 && p.n_experts <= kRouteMaxExperts,
                    "cuda::route: n_experts must be in [1, 512]");
  EKVA_CUDA_REQUIRE(p.top_k >= 0 && p.top_k <= p.n_experts,
                    "cuda::route: top_k must be in [0, n_experts]");
  EKVA_CUDA_REQUIRE(p.n_tokens >= 0 && p.n_tokens <= 0x7fffffff,
                    "cuda::route: n_tokens out of range");
  EKVA_CUDA_REQUIRE(p.is_plain_softmax(),
                    "cuda::route: sigmoid scores, a selection bias, expert groups and a scale "
                    "(DeepSeek routing) run on the CPU backend only so far");
  if (p.n_tokens == 0 || p.top_k == 0) return;
  route_kernel<<<static_cast<unsigned>(p.n_tokens), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

}  // namespace ekva::cuda
