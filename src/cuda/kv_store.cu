#include <cuda_bf16.h>

#include "cuda/check.cuh"
#include "cuda/kv_store.cuh"

namespace ekva::cuda {

namespace {

constexpr int kWarps = 8;  // entries per thread block of the write kernel
constexpr int kCopyThreads = 256;

// One warp per entry; lanes stride over the row, so loads and stores coalesce.
__global__ void kv_write_kernel(const KvWriteItem* __restrict__ items, int64_t n, int D, int W) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (i >= n) return;
  const KvWriteItem it = items[i];
  const int lane = threadIdx.x % 32;
  auto* k = reinterpret_cast<__nv_bfloat16*>(it.k);
  auto* v = reinterpret_cast<__nv_bfloat16*>(it.v);
  for (int d = lane; d < W; d += 32) {
    k[d] = __float2bfloat16_rn(d < D ? it.src_k[d] : 0.f);
    v[d] = __float2bfloat16_rn(d < D ? it.src_v[d] : 0.f);
  }
  if (lane == 0) {
    *it.position = it.value;
    *it.score = 0.f;
  }
}

// One thread block per item, 16-byte words where src, dst and the length allow,
// else 4-byte words.
__global__ void kv_copy_kernel(const KvCopyItem* __restrict__ items, std::byte* staging,
                               bool to_staging) {
  const KvCopyItem it = items[blockIdx.x];
  const std::byte* src = to_staging ? it.src : staging + it.staging;
  std::byte* dst = to_staging ? staging + it.staging : it.dst;
  if (dst == nullptr) return;
  const bool wide =
      ((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | it.bytes) & 15) == 0;
  if (wide) {
    const auto* s = reinterpret_cast<const uint4*>(src);
    auto* d = reinterpret_cast<uint4*>(dst);
    for (uint64_t w = threadIdx.x; w < it.bytes / 16; w += kCopyThreads) d[w] = s[w];
  } else {
    const auto* s = reinterpret_cast<const uint32_t*>(src);
    auto* d = reinterpret_cast<uint32_t*>(dst);
    for (uint64_t w = threadIdx.x; w < it.bytes / 4; w += kCopyThreads) d[w] = s[w];
  }
}

}  // namespace

void kv_write_rows(const KvWriteItem* items, int64_t n, int64_t head_dim, int64_t width,
                   cudaStream_t stream) {
  if (n == 0) return;
  EKVA_CUDA_REQUIRE(width >= head_dim && head_dim > 0, "cuda::kv_write_rows: bad row widths");
  const int64_t blocks = (n + kWarps - 1) / kWarps;
  EKVA_CUDA_REQUIRE(blocks <= 0x7fffffff, "cuda::kv_write_rows: too many entries for one grid");
  kv_write_kernel<<<static_cast<unsigned>(blocks), kWarps * 32, 0, stream>>>(
      items, n, static_cast<int>(head_dim), static_cast<int>(width));
  EKVA_CUDA_CHECK_LAUNCH();
}

void kv_copy_bytes(const KvCopyItem* items, int64_t n, std::byte* staging, bool scatter,
                   cudaStream_t stream) {
  if (n == 0) return;
  EKVA_CUDA_REQUIRE(n <= 0x7fffffff, "cuda::kv_copy_bytes: too many copies for one grid");
  kv_copy_kernel<<<static_cast<unsigned>(n), kCopyThreads, 0, stream>>>(items, staging, true);
  EKVA_CUDA_CHECK_LAUNCH();
  if (!scatter) return;
  kv_copy_kernel<<<static_cast<unsigned>(n), kCopyThreads, 0, stream>>>(items, staging, false);
  EKVA_CUDA_CHECK_LAUNCH();
}

}  // namespace ekva::cuda
