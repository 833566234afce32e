// The Backend seam: the forward pass calls every op through this interface and never
// names a device. A backend owns what its ops run on (the CPU backend its thread
// pool; a GPU backend its stream, BLAS handle and device arena) and the memory the
// activations live in. Each op takes the params struct of ops/ops.h.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "ops/attention_plan.h"
#include "ops/ops.h"

namespace ekva {

// Where an op call sits in the forward pass: what it computes ("q_proj", "attention",
// "expert_up", "lm_head": Hugging Face's module names where there is one), the layer
// (-1: outside the layers) and the expert (-1: none). The forward pass names the site
// of every call; only a profiling backend (ops/profiling_backend.h) reads it, so to
// any other backend a site costs three stores per op.
struct OpSite {
  const char* name = "";  // a string literal: kept by pointer
  int layer = -1;
  int expert = -1;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // Names the site of the op calls that follow and returns this backend, so that a
  // call reads `backend.at({"q_proj", layer}).matmul(...)`. Not virtual: nothing is
  // dispatched; a decorator reads site() when it wants to know.
  Backend& at(const OpSite& site) {
    site_ = site;
    return *this;
  }
  const OpSite& site() const { return site_; }

  // Memory the ops can read and write (activations), 64-byte aligned; freed with
  // release(). Allocation failures throw ekva::Error.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) = 0;

  // Where that memory is: 0 for host memory the caller can read and write directly
  // (the CPU backends), else an id of the device (CUDA device d: 1 + d). Weights
  // placed for one backend serve every backend of the same domain (a profiling
  // decorator shares its inner backend's).
  virtual int memory_domain() const { return 0; }
  bool host_memory() const { return memory_domain() == 0; }
  // Copies between host memory and the backend's, ordered after the ops queued so
  // far; both return once the bytes are copied (download waits for the queued ops
  // and reports a fault they found). For a host backend both are memcpy.
  virtual void upload(void* dst, const void* host_src, size_t bytes) {
    if (bytes > 0) std::memcpy(dst, host_src, bytes);
  }
  virtual void download(void* host_dst, const void* src, size_t bytes) {
    if (bytes > 0) std::memcpy(host_dst, src, bytes);
  }
  // Sets `bytes` of the backend's memory at dst to zero, in order with the ops.
  virtual void fill_zero(void* dst, size_t bytes) {
    if (bytes > 0) std::memset(dst, 0, bytes);
  }

  virtual void embedding(const EmbeddingParams& p) = 0;
  virtual void matmul(const MatmulParams& p) = 0;
  virtual void rmsnorm(const RmsNormParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void add_bias(const AddBiasParams& p) = 0;
  virtual void clamp(const ClampParams& p) = 0;
  virtual void add(const AddParams& p) = 0;
  virtual void silu_mul(const SiluMulParams& p) = 0;
  virtual void route(const RouteParams& p) = 0;
  virtual void scatter_add(const ScatterAddParams& p) = 0;
  virtual void gated_add(const GatedAddParams& p) = 0;
  virtual void copy_rows(const CopyRowsParams& p) = 0;
  // Ragged attention by a plan made with plan_attention(p, chunks,
  // attention_plan_options()) (ops/attention_plan.h); the two-argument form plans
  // (the forward pass's form: a backend may keep the plan in a workspace of its own
  // rather than allocate one per call, as the CPU backend does).
  virtual AttentionPlanOptions attention_plan_options() const { return {}; }
  virtual void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                         const AttentionPlan& plan) = 0;
  virtual void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks) {
    attention(p, chunks, plan_attention(p, chunks, attention_plan_options()));
  }

 private:
  OpSite site_;
};

// A typed buffer in a backend's memory, released with it.
template <typename T>
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend& backend, size_t n)
      : backend_(&backend), data_(static_cast<T*>(backend.allocate(n * sizeof(T)))), size_(n) {}
  BackendBuffer(BackendBuffer&& o) noexcept { *this = std::move(o); }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  ~BackendBuffer() {
    if (data_ != nullptr) backend_->release(data_);
  }
  T* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  Backend* backend_ = nullptr;
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ekva
