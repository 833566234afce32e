#include <cstdint>

#include "cuda/check.cuh"
#include "cuda/embedding.cuh"

namespace ekva::cuda {

namespace {

constexpr int kThreads = 256;

struct EmbeddingArgs {
  const void* table;
  const int32_t* tokens;
  float* out;
  int64_t rows, cols;
  bool bf16;
  DeviceFault* fault;
};

// One block per token: the row is copied (and widened) by the block's threads.
__global__ void embedding_kernel(EmbeddingArgs a) {
  const int64_t t = blockIdx.x;
  const int32_t id = a.tokens[t];
  if (id < 0 || id >= a.rows) {
    if (threadIdx.x == 0 &&
        atomicCAS(&a.fault->op, 0, static_cast<int32_t>(FaultOp::kEmbeddingToken)) == 0) {
      a.fault->value = id;
      a.fault->index = t;
      a.fault->limit = a.rows;
    }
    return;
  }
  float* out = a.out + t * a.cols;
  if (a.bf16) {
    const auto* row = static_cast<const uint16_t*>(a.table) + int64_t{id} * a.cols;
    for (int64_t i = threadIdx.x; i < a.cols; i += kThreads)
      out[i] = __uint_as_float(static_cast<uint32_t>(row[i]) << 16);
  } else {
    const auto* row = static_cast<const float*>(a.table) + int64_t{id} * a.cols;
    for (int64_t i = threadIdx.x; i < a.cols; i += kThreads) out[i] = row[i];
  }
}

}  // namespace

void embedding(const EmbeddingParams& p, DeviceFault* fault, cudaStream_t stream) {
  EKVA_CUDA_REQUIRE(p.table.dtype == DType::kBF16 || p.table.dtype == DType::kF32,
                    "cuda::embedding: the table must be bf16 or f32");
  EKVA_CUDA_REQUIRE(p.n_tokens >= 0 && p.table.rows >= 0 && p.table.cols >= 0,
                    "cuda::embedding: negative size");
  EKVA_CUDA_REQUIRE(p.n_tokens <= 0x7fffffff, "cuda::embedding: tokens exceed the grid limit");
  EKVA_CUDA_REQUIRE(fault != nullptr, "cuda::embedding: no fault word");
  if (p.n_tokens == 0) return;
  const EmbeddingArgs a{p.table.data, p.tokens,     p.out,
                        p.table.rows, p.table.cols, p.table.dtype == DType::kBF16,
                        fault};
  embedding_kernel<<<static_cast<unsigned>(p.n_tokens), kThreads, 0, stream>>>(a);
  EKVA_CUDA_CHECK_LAUNCH();
}

}  // namespace ekva::cuda
