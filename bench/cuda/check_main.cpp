// The CUDA attention checks without gtest (tests/cuda_attention_check.cpp's table):
//   ekva_cuda_attention_check [--small] [--case NAME]...
// Exit status 0 only when every case passes; one line per case either way.
#include <cstdio>
#include <exception>
#include <set>
#include <string>

#include "cuda/check.cuh"
#include "cuda_attention_check.h"

int main(int argc, char** argv) {
  bool small = false;
  std::set<std::string> only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--small")
      small = true;
    else if (a == "--case" && i + 1 < argc)
      only.insert(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--small] [--case NAME]...\n", argv[0]);
      return 2;
    }
  }
  int failed = 0, ran = 0;
  const std::string rejects = ekva::test::check_cuda_attention_rejects();
  std::printf("%s shape checks%s%s\n", rejects.empty() ? "PASS" : "FAIL",
              rejects.empty() ? "" : ": ", rejects.c_str());
  failed += rejects.empty() ? 0 : 1;
  if (ekva::cuda::device_count() == 0) {
    std::printf("FAIL no CUDA device: the attention cases need a GPU\n");
    return 1;
  }
  std::printf("device: %s\n", ekva::cuda::device_description(0).c_str());
  for (const auto& c : ekva::test::cuda_attention_cases(small)) {
    if (!only.empty() && only.count(c.name) == 0) continue;
    ++ran;
    try {
      const auto r = ekva::test::run_cuda_attention_case(c);
      std::printf("%s %s\n", r.ok ? "PASS" : "FAIL", r.detail.c_str());
      failed += r.ok ? 0 : 1;
    } catch (const std::exception& e) {
      std::printf("FAIL %s: %s\n", c.name.c_str(), e.what());
      ++failed;
    }
    std::fflush(stdout);
  }
  std::printf("%d of %d cases failed (tolerance %.0e vs reference, %.0e per request)\n", failed,
              ran, ekva::test::kCudaAttentionTolerance, ekva::test::kCudaPerRequestTolerance);
  return failed == 0 && ran > 0 ? 0 : 1;
}
