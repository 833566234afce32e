// The CPU backend: SIMD ops (Highway) over the threads of a pool it owns, and the
// reference backend (the scalar ref:: ops, one thread) that every backend's ops
// are tested against.
#pragma once

#include <memory>

#include "core/thread_pool.h"
#include "ops/backend.h"

namespace ekva {

namespace cpu {
struct AttentionWorkspace;
}

class CpuBackend final : public Backend {
 public:
  // A pool of its own; threads == 0: default_thread_count() (EKVA_THREADS, else
  // one per core).
  explicit CpuBackend(int threads = 0);
  // Runs on a pool the caller owns (and may use between calls, never during one).
  explicit CpuBackend(ThreadPool& pool);
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }
  void* allocate(size_t bytes) override;
  void release(void* p) override;

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
  // Both forms keep their scratch (and the second its plan) in the backend's
  // attention workspace, reused from call to call: a decode step's attention
  // allocates nothing once the workspace has grown to the batch. So calls must not
  // overlap (as for the pool).
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                 const AttentionPlan& plan) override;
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks) override;

  ThreadPool& pool() { return pool_; }

 private:
  std::unique_ptr<ThreadPool> owned_pool_;
  ThreadPool& pool_;
  std::unique_ptr<cpu::AttentionWorkspace> attention_workspace_;
};

std::unique_ptr<Backend> make_reference_backend();

}  // namespace ekva
