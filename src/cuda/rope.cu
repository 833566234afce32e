#include <cstdint>

#include "cuda/check.cuh"
#include "cuda/rope.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 256;

// One thread per (token, pair i): the angle position * inv_freq[i] and its cosine and
// sine in double, as ref::rope does (at 1e5+ rad an f32 angle keeps only a few
// correct digits), then the rotation of pair (i, i + half) of every head. Threads of a
// warp take consecutive i, so the loads of one head's half-rows coalesce.
__global__ void rope_kernel(RopeParams p) {
  const int64_t half = p.head_dim / 2;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (k >= p.n_tokens * half) return;
  const int64_t t = k / half, i = k % half;
  const double angle = static_cast<double>(p.positions[t]) * static_cast<double>(p.inv_freq[i]);
  double s, c;
  sincos(angle, &s, &c);
  for (int64_t h = 0; h < p.n_heads; ++h) {
    float* v = p.x + (t * p.n_heads + h) * p.head_dim;
    const double a = v[i], b = v[i + half];
    v[i] = static_cast<float>(a * c - b * s);
    v[i + half] = static_cast<float>(b * c + a * s);
  }
}

}  // namespace

void rope(const RopeParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n_tokens >= 0 && p.n_heads >= 0 && p.head_dim >= 0,
                    "cuda::rope: negative size");
  EKVA_CUDA_REQUIRE(p.head_dim % 2 == 0, "cuda::rope: head_dim must be even");
  const int64_t pairs = p.n_tokens * (p.head_dim / 2);
  if (pairs == 0 || p.n_heads == 0) return;
  const int64_t blocks = (pairs + kThreads - 1) / kThreads;
  EKVA_CUDA_REQUIRE(blocks <= 0x7fffffff, "cuda::rope: tokens exceed the grid limit");
  rope_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

}  // namespace ekva::cuda
