#include "cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "core/error.h"
#include "cuda/attention.cuh"
#include "cuda/check.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/fault.cuh"
#include "cuda/matmul.cuh"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"
#include "cuda/route.cuh"

namespace ekva::cuda {

namespace {

// cuBLAS's own workspace, set once so that its GEMMs never allocate (and can be
// captured in a graph); 32 MiB is what NVIDIA recommends for Hopper.
constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;

bool is_device_memory(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // an unknown host pointer on old drivers: not device memory
    return false;
  }
  return attr.type == cudaMemoryTypeDevice;
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  const int n = device_count();
  if (device < 0 || device >= n) fail("cuda backend: no CUDA device {} ({} present)", device, n);
  try {
    init();
  } catch (...) {
    free_all();
    throw;
  }
}

void CudaBackend::init() {
  EKVA_CUDA_CHECK(cudaSetDevice(device_));
  // A blocking stream: legacy default-stream copies (cudaMemcpy) order after its work.
  EKVA_CUDA_CHECK(cudaStreamCreate(&stream_));
  EKVA_CUBLAS_CHECK(cublasCreate(&blas_));
  EKVA_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  EKVA_CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
  EKVA_CUBLAS_CHECK(cublasSetWorkspace(blas_, scratch(blas_workspace_, kBlasWorkspaceBytes),
                                       kBlasWorkspaceBytes));
  EKVA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&fault_), sizeof(DeviceFault)));
  EKVA_CUDA_CHECK(cudaMemsetAsync(fault_, 0, sizeof(DeviceFault), stream_));
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

CudaBackend::~CudaBackend() { free_all(); }

void CudaBackend::free_all() noexcept {
  // No throwing here: errors of queued work were the last synchronize()'s to report.
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (blas_ != nullptr) cublasDestroy(blas_);
  for (Scratch* s :
       {&blas_workspace_, &matmul_scratch_, &attention_workspace_, &attention_padding_})
    if (s->ptr != nullptr) cudaFree(s->ptr);
  if (fault_ != nullptr) cudaFree(fault_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  blas_ = nullptr;
  fault_ = nullptr;
  stream_ = nullptr;
  blas_workspace_ = matmul_scratch_ = attention_workspace_ = attention_padding_ = {};
}

void* CudaBackend::allocate(size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (status != cudaSuccess) {
    cudaGetLastError();  // out of memory is not sticky; clear it for the next call
    fail("cuda backend: cannot allocate {} bytes of device memory: {}", bytes,
         cudaGetErrorString(status));
  }
  if (reinterpret_cast<uintptr_t>(p) % 64 != 0) {
    cudaFree(p);
    fail("cuda backend: cudaMalloc returned memory that is not 64-byte aligned");
  }
  return p;
}

void CudaBackend::release(void* p) {
  if (p != nullptr) EKVA_CUDA_CHECK(cudaFree(p));
}

void* CudaBackend::scratch(Scratch& s, size_t bytes) {
  if (bytes <= s.bytes) return s.ptr;
  // Half again the request, so that a batch growing step by step reallocates rarely.
  const size_t grown = std::max(bytes, s.bytes + s.bytes / 2);
  if (s.ptr != nullptr) {
    EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued kernels may still read it
    EKVA_CUDA_CHECK(cudaFree(s.ptr));
    s = {};
  }
  s.ptr = allocate(grown);
  s.bytes = grown;
  return s.ptr;
}

void CudaBackend::synchronize() {
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  DeviceFault f{};
  EKVA_CUDA_CHECK(cudaMemcpyAsync(&f, fault_, sizeof f, cudaMemcpyDeviceToHost, stream_));
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (f.op == static_cast<int32_t>(FaultOp::kNone)) return;
  EKVA_CUDA_CHECK(cudaMemsetAsync(fault_, 0, sizeof f, stream_));
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (f.op == static_cast<int32_t>(FaultOp::kEmbeddingToken))
    fail(
        "cuda backend: embedding: token {} (row {} of the call) outside [0, {}); found on the "
        "device, reported at synchronize",
        f.value, f.index, f.limit);
  fail("cuda backend: unknown device fault {}", f.op);
}

void CudaBackend::upload(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  EKVA_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::download(void* host_dst, const void* device_src, size_t bytes) {
  synchronize();
  if (bytes == 0) return;
  EKVA_CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, stream_));
  EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::fill_zero(void* device_dst, size_t bytes) {
  if (bytes == 0) return;
  EKVA_CUDA_CHECK(cudaMemsetAsync(device_dst, 0, bytes, stream_));
}

void CudaBackend::embedding(const EmbeddingParams& p) { cuda::embedding(p, fault_, stream_); }

void CudaBackend::matmul(const MatmulParams& p) {
  const size_t bytes = matmul_scratch_bytes(p);
  void* s = bytes > 0 ? scratch(matmul_scratch_, bytes) : nullptr;
  cuda::matmul(p, blas_, s, bytes, stream_);
}

void CudaBackend::rmsnorm(const RmsNormParams& p) {
  if (p.n_rows == 0 || p.width == 0) return;  // nothing to write, as on the CPU
  cuda::rmsnorm(p, stream_);
}

void CudaBackend::rope(const RopeParams& p) { cuda::rope(p, stream_); }
void CudaBackend::add_bias(const AddBiasParams& p) { cuda::add_bias(p, stream_); }
void CudaBackend::clamp(const ClampParams& p) { cuda::clamp(p, stream_); }
void CudaBackend::add(const AddParams& p) { cuda::add(p, stream_); }
void CudaBackend::silu_mul(const SiluMulParams& p) { cuda::silu_mul(p, stream_); }
void CudaBackend::route(const RouteParams& p) { cuda::route(p, stream_); }
void CudaBackend::scatter_add(const ScatterAddParams& p) { cuda::scatter_add(p, stream_); }
void CudaBackend::gated_add(const GatedAddParams& p) { cuda::gated_add(p, stream_); }
void CudaBackend::copy_rows(const CopyRowsParams& p) { cuda::copy_rows(p, stream_); }

AttentionPlanOptions CudaBackend::attention_plan_options() const {
  return cuda::attention_plan_options(device_);
}

AttentionParams CudaBackend::host_metadata(const AttentionParams& p) {
  AttentionParams h = p;
  const auto n = static_cast<size_t>(std::max<int64_t>(p.n_queries, 0));
  const auto stage = [&](const auto* src, auto& staging) -> decltype(src) {
    if (src == nullptr || n == 0 || !is_device_memory(src)) return src;
    staging.resize(n);
    EKVA_CUDA_CHECK(
        cudaMemcpyAsync(staging.data(), src, n * sizeof(*src), cudaMemcpyDeviceToHost, stream_));
    EKVA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return staging.data();
  };
  h.q_positions = stage(p.q_positions, q_positions_);
  h.q_seq = stage(p.q_seq, q_seq_);
  h.q_scored = stage(p.q_scored, q_scored_);
  return h;
}

void CudaBackend::run_attention(const AttentionParams& host_p,
                                std::span<const std::vector<KvChunk>> chunks,
                                const AttentionPlan& plan) {
  const size_t bytes = attention_workspace_bytes(host_p, chunks, plan);
  void* ws = scratch(attention_workspace_, std::max<size_t>(bytes, 256));  // never null
  cuda::attention(host_p, chunks, plan, ws, bytes, stream_);
}

AttentionParams CudaBackend::padded(const AttentionParams& p) {
  const int64_t dp = attention_padded_head_dim(p.head_dim);
  if (dp == 0 || dp == p.head_dim) return p;
  // q into [T, heads, dp] with zero columns; the output comes back through the same
  // scratch and is cut to head_dim by unpad().
  const int64_t rows = std::max<int64_t>(p.n_queries, 0) * p.n_heads;
  auto* buf = static_cast<float*>(
      scratch(attention_padding_, std::max<size_t>(2 * static_cast<size_t>(rows * dp) * 4, 256)));
  cuda::copy_rows(p.q, p.head_dim, buf, dp, rows, stream_);
  AttentionParams q = p;
  q.head_dim = dp;
  q.q = buf;
  q.out = buf + rows * dp;
  return q;
}

void CudaBackend::unpad(const AttentionParams& p, const AttentionParams& padded_p) {
  if (padded_p.head_dim == p.head_dim) return;
  cuda::copy_rows(padded_p.out, padded_p.head_dim, p.out, p.head_dim,
                  std::max<int64_t>(p.n_queries, 0) * p.n_heads, stream_);
}

void CudaBackend::attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                            const AttentionPlan& plan) {
  const AttentionParams h = host_metadata(p);
  const AttentionParams hp = padded(h);
  run_attention(hp, chunks, plan);
  unpad(h, hp);
}

void CudaBackend::attention(const AttentionParams& p,
                            std::span<const std::vector<KvChunk>> chunks) {
  const AttentionParams h = host_metadata(p);
  const AttentionParams hp = padded(h);
  plan_attention(hp, chunks, attention_plan_options(), plan_);
  run_attention(hp, chunks, plan_);
  unpad(h, hp);
}

}  // namespace ekva::cuda
