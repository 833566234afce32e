// The read-bandwidth ceiling: what a SIMD streaming sum over a large buffer reaches
// with the engine's own thread pool (the same threads and placement the decode
// step uses), so the decode benchmark's fraction compares like with like.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "roofline/read_bandwidth.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <vector>

#include <fmt/format.h>

#include "core/thread_pool.h"
#include "roofline/ceilings.h"

HWY_BEFORE_NAMESPACE();
namespace ekva::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float SumRange(const float* p, int64_t n) {
  const hn::ScalableTag<float> d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::Add(a0, hn::LoadU(d, p + i));
    a1 = hn::Add(a1, hn::LoadU(d, p + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, p + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, p + i + 3 * N));
  }
  float s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ekva {

HWY_EXPORT(SumRange);

BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes, int runs) {
  const auto n = static_cast<int64_t>(bytes / sizeof(float));
  std::vector<float> buffer(static_cast<size_t>(n));
  // Each thread first-touches its own slice (pages land near the thread that reads them).
  pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) buffer[static_cast<size_t>(i)] = static_cast<float>(i % 7) * 0.5f;
  });
  std::vector<double> rates;
  std::vector<float> sink(static_cast<size_t>(pool.size()));
  for (int r = 0; r < runs + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(n, [&](int64_t b, int64_t e, int thread) {
      sink[static_cast<size_t>(thread)] += HWY_DYNAMIC_DISPATCH(SumRange)(buffer.data() + b, e - b);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) rates.push_back(static_cast<double>(n) * sizeof(float) / s / 1e9);  // run 0 warms up
  }
  volatile float keep = sink[0];
  (void)keep;
  std::sort(rates.begin(), rates.end());
  BandwidthResult result;
  result.median_gb_per_s = rates[rates.size() / 2];
  result.best_gb_per_s = rates.back();
  result.bytes = static_cast<size_t>(n) * sizeof(float);
  result.runs = runs;
  return result;
}

std::string cpu_description(int threads) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return fmt::format("{} ({} threads)", model, threads);
}

}  // namespace ekva
#endif  // HWY_ONCE
