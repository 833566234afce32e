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

#include <sys/resource.h>
#include <time.h>

#include <fmt/format.h>

#include "core/error.h"
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

// Sums `n` 32-bit words as integers (weights are bf16 pairs; as floats some would be
// denormals or NaNs, which must not change the timing).
uint32_t SumWords(const uint32_t* p, int64_t n) {
  const hn::ScalableTag<uint32_t> d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::Add(a0, hn::LoadU(d, p + i));
    a1 = hn::Add(a1, hn::LoadU(d, p + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, p + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, p + i + 3 * N));
  }
  uint32_t s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ekva {

HWY_EXPORT(SumRange);
HWY_EXPORT(SumWords);

namespace {

double seconds_of(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace

void IntervalMeter::start() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  nivcsw0_ = ru.ru_nivcsw;
  minflt0_ = ru.ru_minflt;
  majflt0_ = ru.ru_majflt;
  cpu0_ = seconds_of(CLOCK_PROCESS_CPUTIME_ID);
  wall0_ = seconds_of(CLOCK_MONOTONIC);
}

IntervalUsage IntervalMeter::stop() const {
  const double wall1 = seconds_of(CLOCK_MONOTONIC);
  const double cpu1 = seconds_of(CLOCK_PROCESS_CPUTIME_ID);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  IntervalUsage u;
  u.wall_s = wall1 - wall0_;
  u.cpu_share = u.wall_s > 0 ? (cpu1 - cpu0_) / (u.wall_s * threads_) : 0.0;
  u.involuntary_switches = ru.ru_nivcsw - nivcsw0_;
  u.minor_faults = ru.ru_minflt - minflt0_;
  u.major_faults = ru.ru_majflt - majflt0_;
  return u;
}

ReadBandwidthProbe::ReadBandwidthProbe(ThreadPool& pool, size_t bytes)
    : pool_(pool), buffer_(bytes / sizeof(float)), sink_(static_cast<size_t>(pool.size())) {
  // Each thread first-touches its own slice (pages land near the thread that reads them).
  const auto n = static_cast<int64_t>(buffer_.size());
  pool_.parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      buffer_[static_cast<size_t>(i)] = static_cast<float>(i % 7) * 0.5f;
  });
}

ReadBandwidthProbe::Run ReadBandwidthProbe::run() {
  const auto n = static_cast<int64_t>(buffer_.size());
  IntervalMeter meter(pool_.size());
  meter.start();
  pool_.parallel_for(n, [&](int64_t b, int64_t e, int thread) {
    sink_[static_cast<size_t>(thread)] += HWY_DYNAMIC_DISPATCH(SumRange)(buffer_.data() + b, e - b);
  });
  Run r;
  r.usage = meter.stop();
  r.gb_per_s = static_cast<double>(bytes()) / r.usage.wall_s / 1e9;
  volatile float keep = sink_[0];
  (void)keep;
  return r;
}

ReadBandwidthProbe::Run read_regions(ThreadPool& pool, std::span<const MemoryRegion> regions) {
  std::vector<uint32_t> sink(static_cast<size_t>(pool.size()));
  size_t bytes = 0;
  IntervalMeter meter(pool.size());
  meter.start();
  for (const MemoryRegion& region : regions) {
    const auto* words = static_cast<const uint32_t*>(region.data);
    const auto n = static_cast<int64_t>(region.bytes / sizeof(uint32_t));
    pool.parallel_for(n, [&](int64_t b, int64_t e, int thread) {
      sink[static_cast<size_t>(thread)] += HWY_DYNAMIC_DISPATCH(SumWords)(words + b, e - b);
    });
    bytes += static_cast<size_t>(n) * sizeof(uint32_t);
  }
  ReadBandwidthProbe::Run r;
  r.usage = meter.stop();
  r.gb_per_s = static_cast<double>(bytes) / r.usage.wall_s / 1e9;
  volatile uint32_t keep = sink[0];
  (void)keep;
  return r;
}

BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes, int runs) {
  ReadBandwidthProbe probe(pool, bytes);
  probe.run();  // warm-up
  std::vector<double> rates;
  for (int r = 0; r < runs; ++r) rates.push_back(probe.run().gb_per_s);
  std::sort(rates.begin(), rates.end());
  BandwidthResult result;
  result.median_gb_per_s = rates[rates.size() / 2];
  result.best_gb_per_s = rates.back();
  result.bytes = probe.bytes();
  result.runs = runs;
  return result;
}

double measure_pool_call_seconds(ThreadPool& pool, int calls) {
  EKVA_CHECK(calls >= 1, "measure_pool_call_seconds: calls must be >= 1, got {}", calls);
  // Each thread's share is a fixed piece of work (a 64 KiB sum, from L2, about 2 us) so that every
  // thread takes part, as in an op; the overhead is the call's time beyond the piece's own
  // time on one thread (wake, split, steal checks, join).
  constexpr int64_t kWords = 16384;
  std::vector<float> data(static_cast<size_t>(kWords * pool.size()), 1.f);
  std::vector<float> sink(static_cast<size_t>(pool.size()));
  auto piece = [&](int64_t b, int64_t e, int thread) {
    sink[static_cast<size_t>(thread)] +=
        HWY_DYNAMIC_DISPATCH(SumRange)(data.data() + b * kWords, (e - b) * kWords);
  };
  const auto median_of = [&](auto&& fn) {
    std::vector<double> seconds;
    for (int i = 0; i <= calls; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (i > 0) seconds.push_back(dt);  // the first wakes the workers and warms the buffer
    }
    std::sort(seconds.begin(), seconds.end());
    return seconds[seconds.size() / 2];
  };
  const double alone = median_of([&] { piece(0, 1, 0); });
  const double call = median_of([&] { pool.parallel_for(pool.size(), piece); });
  return std::max(0.0, call - alone);
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
