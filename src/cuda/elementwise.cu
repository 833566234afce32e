#include <cstdint>

#include "cuda/check.cuh"
#include "cuda/elementwise.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 256;
// Grid-stride loops over at most this many blocks: enough to fill an H200 (132 SMs x
// 8 resident blocks of 256) several times, few enough that no launch is huge.
constexpr int64_t kMaxBlocks = 4096;

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// x[r, i] += bias[i] over the flattened [n_rows * width].
__global__ void add_bias_kernel(AddBiasParams p) {
  const int64_t n = p.n_rows * p.width;
  for (int64_t k = first_index(); k < n; k += grid_stride()) p.x[k] += p.bias[k % p.width];
}

// std::clamp's comparisons, so a NaN stays NaN as on the CPU (fminf/fmaxf would not).
__global__ void clamp_kernel(ClampParams p) {
  for (int64_t k = first_index(); k < p.n; k += grid_stride()) {
    const float v = p.x[k];
    p.x[k] = v < -p.limit ? -p.limit : (p.limit < v ? p.limit : v);
  }
}

__global__ void add_kernel(AddParams p) {
  for (int64_t k = first_index(); k < p.n; k += grid_stride()) p.x[k] += p.y[k];
}

__global__ void silu_mul_kernel(SiluMulParams p) {
  for (int64_t k = first_index(); k < p.n; k += grid_stride()) {
    const float g = p.gate[k];
    p.gate[k] = g / (1.f + expf(-g)) * p.up[k];
  }
}

// out[rows[i]] += weights[i] * y[i]: rows are distinct within a call (ops.h), so
// every output element has one writer and no atomics are needed.
__global__ void scatter_add_kernel(ScatterAddParams p) {
  const int64_t n = p.n * p.width;
  for (int64_t k = first_index(); k < n; k += grid_stride()) {
    const int64_t i = k / p.width, j = k % p.width;
    p.out[int64_t{p.rows[i]} * p.width + j] += p.weights[i] * p.y[k];
  }
}

__global__ void gated_add_kernel(GatedAddParams p) {
  const int64_t n = p.n_rows * p.width;
  for (int64_t k = first_index(); k < n; k += grid_stride()) {
    const float g = 1.f / (1.f + expf(-p.gate_logits[k / p.width]));
    p.out[k] += g * p.y[k];
  }
}

}  // namespace

void add_bias(const AddBiasParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n_rows >= 0 && p.width >= 0, "cuda::add_bias: negative size");
  if (p.n_rows * p.width == 0) return;
  add_bias_kernel<<<blocks_for(p.n_rows * p.width), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

void clamp(const ClampParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n >= 0, "cuda::clamp: negative size");
  if (p.n == 0) return;
  clamp_kernel<<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

void add(const AddParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n >= 0, "cuda::add: negative size");
  if (p.n == 0) return;
  add_kernel<<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

void silu_mul(const SiluMulParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n >= 0, "cuda::silu_mul: negative size");
  if (p.n == 0) return;
  silu_mul_kernel<<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

void scatter_add(const ScatterAddParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n >= 0 && p.width >= 0, "cuda::scatter_add: negative size");
  if (p.n * p.width == 0) return;
  scatter_add_kernel<<<blocks_for(p.n * p.width), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

void gated_add(const GatedAddParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.n_rows >= 0 && p.width >= 0, "cuda::gated_add: negative size");
  if (p.n_rows * p.width == 0) return;
  gated_add_kernel<<<blocks_for(p.n_rows * p.width), kThreads, 0, stream>>>(p);
  EKVA_CUDA_CHECK_LAUNCH();
}

namespace {
__global__ void copy_rows_kernel(const float* __restrict__ src, int64_t src_width,
                                 float* __restrict__ dst, int64_t dst_width, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / dst_width, c = i % dst_width;
  dst[i] = c < src_width ? src[r * src_width + c] : 0.f;
}
}  // namespace

void copy_rows(const float* src, int64_t src_width, float* dst, int64_t dst_width, int64_t n_rows,
               cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(src_width > 0 && dst_width > 0 && n_rows >= 0, "cuda::copy_rows: bad sizes");
  const int64_t n = n_rows * dst_width;
  if (n == 0) return;
  const int64_t blocks = (n + 255) / 256;
  EKVA_CUDA_REQUIRE(blocks <= 0x7fffffff, "cuda::copy_rows: rows exceed the grid limit");
  copy_rows_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(src, src_width, dst,
                                                                      dst_width, n);
  EKVA_CUDA_CHECK_LAUNCH();
}

void copy_rows(const CopyRowsParams& p, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(
      p.n_rows >= 0 && p.width >= 0 && p.src_stride >= p.width && p.dst_stride >= p.width,
      "cuda::copy_rows: negative size or a stride below the width");
  if (p.n_rows * p.width == 0) return;
  EKVA_CUDA_CHECK(cudaMemcpy2DAsync(p.dst, static_cast<size_t>(p.dst_stride) * sizeof(float), p.src,
                                    static_cast<size_t>(p.src_stride) * sizeof(float),
                                    static_cast<size_t>(p.width) * sizeof(float),
                                    static_cast<size_t>(p.n_rows), cudaMemcpyDeviceToDevice,
                                    stream));
}

}  // namespace ekva::cuda
