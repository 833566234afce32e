#include "cuda/check.cuh"
#include "cuda/rmsnorm.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 256;

// One block per row; a block-wide sum of squares through warp shuffles and one
// shared-memory hop, then a second pass that scales (the row is in L1/L2 by then).
__global__ void rmsnorm_kernel(RmsNormParams p) {
  const int64_t row = blockIdx.x;
  const float* x = p.x + row * p.width;
  float* out = p.out + row * p.width;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < p.width; i += kThreads) sum += x[i] * x[i];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float warp_sums[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    sum = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x == 0) warp_sums[0] = sum;
  }
  __syncthreads();
  const float inv = rsqrtf(warp_sums[0] / static_cast<float>(p.width) + p.eps);
  for (int64_t i = threadIdx.x; i < p.width; i += kThreads) out[i] = x[i] * inv * p.weight[i];
}

}  // namespace

void rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n_rows >= 0 && p.width > 0, "cuda::rmsnorm: rows must be >= 0, width > 0");
  EKVA_CUDA_REQUIRE(p.n_rows <= 0x7fffffff, "cuda::rmsnorm: rows exceed the grid limit");
  if (p.n_rows == 0) return;
  rmsnorm_kernel<<<static_cast<unsigned>(p.n_rows), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

}  // namespace ekva::cuda
