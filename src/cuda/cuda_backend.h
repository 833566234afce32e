// The CUDA backend: every op of the Backend interface (ops/backend.h) on device memory,
// in order on one stream the backend owns, with its cuBLAS handle and its scratch.
//
// Memory. allocate() returns device memory (cudaMalloc: 256-byte aligned, so the
// interface's 64 holds). Every pointer of an op's params is a device pointer (weights,
// token ids, positions, gather rows, KV chunks' k/v/positions/scores) except three
// fields of AttentionParams that the plan is made from on the host: q_positions, q_seq
// and q_scored. Those may be host or device memory: device ones are copied to the host
// first, which waits for the stream (a forward pass that keeps them on the device pays
// one round trip per attention call; keeping a host copy avoids it). The KvChunk lists
// themselves are host vectors (of device pointers).
//
// Ordering. Ops are asynchronous: each returns once its kernels are queued on
// stream(). Bad arguments throw at the call; faults that only the device can see (a
// token id outside the embedding table) are kept in a device fault word and thrown by
// the next synchronize() or download(). The stream is a blocking one, so plain
// cudaMemcpy on the default stream orders after the queued ops; upload() and
// download() are the intended copies.
//
// Scratch (matmul's bf16 copy of x, attention's packed plan and partials) grows on
// demand with cudaMalloc, waiting for the stream first: run one step outside any CUDA
// graph capture so that captured steps never need to grow it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include <cuda_runtime.h>

#include "ops/backend.h"

struct cublasContext;

namespace ekva::cuda {

struct DeviceFault;

class CudaBackend final : public Backend {
 public:
  // Binds `device` (cudaSetDevice) and creates the stream and cuBLAS handle; throws
  // ekva::Error when there is no such device. Ops must run with `device` current.
  explicit CudaBackend(int device = 0);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string_view name() const override { return "cuda"; }
  void* allocate(size_t bytes) override;
  void release(void* p) override;
  int memory_domain() const override { return 1 + device_; }

  void embedding(const EmbeddingParams& p) override;
  void matmul(const MatmulParams& p) override;
  void rmsnorm(const RmsNormParams& p) override;
  void rope(const RopeParams& p) override;
  void add_bias(const AddBiasParams& p) override;
  void clamp(const ClampParams& p) override;
  void add(const AddParams& p) override;
  void silu_mul(const SiluMulParams& p) override;
  void route(const RouteParams& p) override;
  void scatter_add(const ScatterAddParams& p) override;
  void gated_add(const GatedAddParams& p) override;
  void copy_rows(const CopyRowsParams& p) override;
  AttentionPlanOptions attention_plan_options() const override;
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                 const AttentionPlan& plan) override;
  // Plans into the backend's own plan (reused: no allocation once grown).
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks) override;

  // Waits for every op queued so far; throws ekva::Error for a fault the device found
  // (naming the op and the value), after clearing it so the backend stays usable.
  void synchronize();
  // host -> device; returns once the bytes are copied (ordered after queued ops).
  void upload(void* device_dst, const void* host_src, size_t bytes) override;
  // device -> host after synchronize() (so a pending fault throws instead).
  void download(void* host_dst, const void* device_src, size_t bytes) override;
  void fill_zero(void* device_dst, size_t bytes) override;

  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

 private:
  // Device memory that only grows.
  struct Scratch {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  void init();
  void free_all() noexcept;
  void* scratch(Scratch& s, size_t bytes);
  // p with q_positions, q_seq and q_scored readable on the host.
  AttentionParams host_metadata(const AttentionParams& p);
  void run_attention(const AttentionParams& host_p, std::span<const std::vector<KvChunk>> chunks,
                     const AttentionPlan& plan);
  // A head dim the kernel lacks (attention_padded_head_dim): p with q padded into
  // scratch and out pointing there; unpad() copies that output to p.out.
  AttentionParams padded(const AttentionParams& p);
  void unpad(const AttentionParams& p, const AttentionParams& padded_p);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasContext* blas_ = nullptr;
  DeviceFault* fault_ = nullptr;  // device
  Scratch blas_workspace_, matmul_scratch_, attention_workspace_, attention_padding_;
  AttentionPlan plan_;
  std::vector<int32_t> q_positions_, q_seq_;  // host copies of device metadata
  std::vector<uint8_t> q_scored_;
};

}  // namespace ekva::cuda
