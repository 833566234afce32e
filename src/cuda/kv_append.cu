#include <cuda_bf16.h>

#include "cuda/check.cuh"
#include "cuda/kv_append.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 256;

// One thread per (token, kv-head, element); consecutive threads take consecutive
// elements of a row, so loads and stores coalesce.
template <typename T>
__global__ void kv_append_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                 T* __restrict__ k_dst, T* __restrict__ v_dst, int64_t n, int64_t H,
                                 int64_t D, int64_t W, int64_t capacity, int64_t len) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n * H * D) return;
  const int64_t d = i % D, h = (i / D) % H, t = i / (D * H);
  const int64_t dst = (h * capacity + len + t) * W + d;
  if constexpr (sizeof(T) == 2) {
    k_dst[dst] = __float2bfloat16_rn(k[i]);
    v_dst[dst] = __float2bfloat16_rn(v[i]);
  } else {
    k_dst[dst] = k[i];
    v_dst[dst] = v[i];
  }
}

}  // namespace

void kv_append(const float* k, const float* v, void* k_dst, void* v_dst, bool bf16, int64_t n,
               int64_t n_kv_heads, int64_t head_dim, int64_t row_width, int64_t capacity,
               int64_t len, cudaStream_t stream) {
  const int64_t total = n * n_kv_heads * head_dim;
  if (total == 0) return;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  EKVA_CUDA_REQUIRE(blocks <= 0x7fffffff, "cuda::kv_append: tokens exceed the grid limit");
  EKVA_CUDA_REQUIRE(row_width >= head_dim, "cuda::kv_append: rows narrower than head_dim");
  if (bf16)
    kv_append_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        k, v, static_cast<__nv_bfloat16*>(k_dst), static_cast<__nv_bfloat16*>(v_dst), n, n_kv_heads,
        head_dim, row_width, capacity, len);
  else
    kv_append_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        k, v, static_cast<float*>(k_dst), static_cast<float*>(v_dst), n, n_kv_heads, head_dim,
        row_width, capacity, len);
  EKVA_CUDA_CHECK_LAUNCH();
}

}  // namespace ekva::cuda
