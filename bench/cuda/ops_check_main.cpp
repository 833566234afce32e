// The CUDA backend's op checks without gtest (tests/cuda_ops_check.cpp's table), against
// ref:: behind the Backend interface (the CPU backend needs hwy, which GPU machines lack):
//   ekva_cuda_ops_check [--small] [--case NAME]... [--skip NAME]... [--op OP]...
// Exit status 0 only when every case that ran passed; one line per case either way.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <set>
#include <string>

#include "cuda/check.cuh"
#include "cuda/cuda_backend.h"
#include "cuda_ops_check.h"
#include "ekva/error.h"
#include "ops/backend.h"

namespace {

void* host_allocate(size_t bytes) {
  void* p = std::aligned_alloc(64, (std::max<size_t>(bytes, 1) + 63) / 64 * 64);
  if (p == nullptr) throw ekva::Error("out of host memory");
  return p;
}

// ref:: behind the Backend interface: the same ops as the library's reference backend
// (cpu/cpu_backend.cpp's make_reference_backend), rebuilt here without the CPU backend.
class ReferenceBackend final : public ekva::Backend {
 public:
  std::string_view name() const override { return "reference"; }
  void* allocate(size_t bytes) override { return host_allocate(bytes); }
  void release(void* p) override { std::free(p); }
  void embedding(const ekva::EmbeddingParams& p) override { ekva::ref::embedding(p); }
  void matmul(const ekva::MatmulParams& p) override { ekva::ref::matmul(p); }
  void rmsnorm(const ekva::RmsNormParams& p) override { ekva::ref::rmsnorm(p); }
  void rope(const ekva::RopeParams& p) override { ekva::ref::rope(p); }
  void add_bias(const ekva::AddBiasParams& p) override { ekva::ref::add_bias(p); }
  void clamp(const ekva::ClampParams& p) override { ekva::ref::clamp(p); }
  void add(const ekva::AddParams& p) override { ekva::ref::add(p); }
  void silu_mul(const ekva::SiluMulParams& p) override { ekva::ref::silu_mul(p); }
  void route(const ekva::RouteParams& p) override { ekva::ref::route(p); }
  void scatter_add(const ekva::ScatterAddParams& p) override { ekva::ref::scatter_add(p); }
  void gated_add(const ekva::GatedAddParams& p) override { ekva::ref::gated_add(p); }
  void copy_rows(const ekva::CopyRowsParams& p) override { ekva::ref::copy_rows(p); }
  using Backend::attention;
  void attention(const ekva::AttentionParams& p, std::span<const std::vector<ekva::KvChunk>> chunks,
                 const ekva::AttentionPlan&) override {
    ekva::ref::attention(p, chunks);
  }
};

}  // namespace

int main(int argc, char** argv) {
  bool small = false;
  std::set<std::string> only, skip, ops;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--small")
      small = true;
    else if (a == "--case" && i + 1 < argc)
      only.insert(argv[++i]);
    else if (a == "--skip" && i + 1 < argc)
      skip.insert(argv[++i]);
    else if (a == "--op" && i + 1 < argc)
      ops.insert(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--small] [--case NAME]... [--skip NAME]... [--op OP]...\n",
                   argv[0]);
      return 2;
    }
  }
  if (ekva::cuda::device_count() == 0) {
    std::printf("FAIL no CUDA device: the CUDA backend's op cases need a GPU\n");
    return 1;
  }
  std::printf("device: %s\n", ekva::cuda::device_description(0).c_str());
  int failed = 0, ran = 0, skipped = 0;
  try {
    ekva::cuda::CudaBackend gpu(0);
    ReferenceBackend reference;
    for (const auto& c : ekva::test::cuda_ops_cases()) {
      if (small && !c.small) continue;
      if (!only.empty() && only.count(c.name) == 0) continue;
      if (skip.count(c.name) != 0) continue;
      if (!ops.empty() && ops.count(c.op) == 0) continue;
      const auto r = ekva::test::run_cuda_ops_case(c, gpu, reference);
      if (r.skipped) {
        ++skipped;
        std::printf("SKIP %s\n", r.detail.c_str());
      } else {
        ++ran;
        failed += r.ok ? 0 : 1;
        std::printf("%s %s\n", r.ok ? "PASS" : "FAIL", r.detail.c_str());
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::printf("FAIL the CUDA backend: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d cases failed (%d skipped)\n", failed, ran, skipped);
  return failed == 0 && ran > 0 ? 0 : 1;
}
