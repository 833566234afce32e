#include "cpu/cpu_backend.h"

#include <cstdlib>
#include <new>

#include "core/error.h"
#include "cpu/kernels.h"

namespace ekva {

namespace {

void* aligned_allocate(size_t bytes) {
  constexpr size_t kAlign = 64;
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (p == nullptr) fail("out of host memory allocating {} bytes of activations", bytes);
  return p;
}

// ref:: behind the Backend interface.
class ReferenceBackend final : public Backend {
 public:
  std::string_view name() const override { return "reference"; }
  void* allocate(size_t bytes) override { return aligned_allocate(bytes); }
  void release(void* p) override { std::free(p); }
  void embedding(const EmbeddingParams& p) override { ref::embedding(p); }
  void matmul(const MatmulParams& p) override { ref::matmul(p); }
  void rmsnorm(const RmsNormParams& p) override { ref::rmsnorm(p); }
  void rope(const RopeParams& p) override { ref::rope(p); }
  void add_bias(const AddBiasParams& p) override { ref::add_bias(p); }
  void clamp(const ClampParams& p) override { ref::clamp(p); }
  void add(const AddParams& p) override { ref::add(p); }
  void silu_mul(const SiluMulParams& p) override { ref::silu_mul(p); }
  void route(const RouteParams& p) override { ref::route(p); }
  void scatter_add(const ScatterAddParams& p) override { ref::scatter_add(p); }
  void gated_add(const GatedAddParams& p) override { ref::gated_add(p); }
  void copy_rows(const CopyRowsParams& p) override { ref::copy_rows(p); }
  using Backend::attention;
  // The reference needs no plan: it walks every (query, head) whole.
  void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                 const AttentionPlan&) override {
    ref::attention(p, chunks);
  }
};

}  // namespace

namespace {
int checked_threads(int threads) {
  if (threads < 0) fail("cpu backend: threads must be >= 0, got {}", threads);
  return threads > 0 ? threads : default_thread_count();
}
}  // namespace

CpuBackend::CpuBackend(int threads)
    : owned_pool_(std::make_unique<ThreadPool>(checked_threads(threads))),
      pool_(*owned_pool_),
      attention_workspace_(std::make_unique<cpu::AttentionWorkspace>()) {}
CpuBackend::CpuBackend(ThreadPool& pool)
    : pool_(pool), attention_workspace_(std::make_unique<cpu::AttentionWorkspace>()) {}
CpuBackend::~CpuBackend() = default;

void* CpuBackend::allocate(size_t bytes) { return aligned_allocate(bytes); }
void CpuBackend::release(void* p) { std::free(p); }

void CpuBackend::embedding(const EmbeddingParams& p) { cpu::embedding(p); }
void CpuBackend::matmul(const MatmulParams& p) { cpu::matmul(p, pool_); }
void CpuBackend::rmsnorm(const RmsNormParams& p) { cpu::rmsnorm(p, pool_); }
void CpuBackend::rope(const RopeParams& p) { cpu::rope(p, pool_); }
void CpuBackend::add_bias(const AddBiasParams& p) { cpu::add_bias(p); }
void CpuBackend::clamp(const ClampParams& p) { cpu::clamp(p); }
void CpuBackend::add(const AddParams& p) { cpu::add(p); }
void CpuBackend::silu_mul(const SiluMulParams& p) { cpu::silu_mul(p); }
void CpuBackend::route(const RouteParams& p) { cpu::route(p); }
void CpuBackend::scatter_add(const ScatterAddParams& p) { cpu::scatter_add(p); }
void CpuBackend::gated_add(const GatedAddParams& p) { cpu::gated_add(p); }
void CpuBackend::copy_rows(const CopyRowsParams& p) { cpu::copy_rows(p); }
AttentionPlanOptions CpuBackend::attention_plan_options() const {
  return cpu::attention_plan_options(pool_);
}
void CpuBackend::attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
                           const AttentionPlan& plan) {
  cpu::attention(p, chunks, plan, pool_, *attention_workspace_);
}
void CpuBackend::attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks) {
  cpu::attention(p, chunks, pool_, *attention_workspace_);
}

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace ekva
