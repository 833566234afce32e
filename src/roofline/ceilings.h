// Measured ceilings of the machine the engine runs on, so that benchmarks report
// the fraction of what the hardware can do, not bare times.
#pragma once

#include <cstddef>
#include <string>

namespace ekva {

class ThreadPool;

struct BandwidthResult {
  double median_gb_per_s = 0;  // 1e9 bytes/s
  double best_gb_per_s = 0;
  size_t bytes = 0;
  int runs = 0;
};

// Multi-threaded streaming read of a `bytes`-sized buffer (each thread sums its
// own contiguous slice with SIMD), `runs` times; the buffer should be many times
// the last-level cache.
BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes, int runs);

// "AMD EPYC 9R14 (2 threads)": the CPU model from /proc/cpuinfo.
std::string cpu_description(int threads);

}  // namespace ekva
