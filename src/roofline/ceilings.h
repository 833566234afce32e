// Measured ceilings of the machine the engine runs on, so that benchmarks report
// the fraction of what the hardware can do, not bare times.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace ekva {

class ThreadPool;

// What the whole process got from the machine over an interval. On a shared host a
// measurement is only valid when no thread of ours was preempted: the pool's
// parallel_for hands a late thread's unstarted chunks to the others, but a worker
// preempted inside a chunk still stalls the call, and a thread short of a core
// leaves its share to fewer threads, so the interval reads as slow memory when it
// was a busy CPU.
struct IntervalUsage {
  double wall_s = 0;
  // Process CPU time / (wall time x threads). The pool's workers spin between the
  // calls of a decode step, so an undisturbed multi-threaded interval reads close to 1.
  double cpu_share = 0;
  long involuntary_switches = 0;  // a thread of this process was preempted
  long minor_faults = 0;
  long major_faults = 0;  // page-ins from disk
};

class IntervalMeter {
 public:
  explicit IntervalMeter(int threads) : threads_(threads) {}
  void start();
  IntervalUsage stop() const;

 private:
  int threads_;
  double wall0_ = 0, cpu0_ = 0;
  long nivcsw0_ = 0, minflt0_ = 0, majflt0_ = 0;
};

// A read-bandwidth probe: a buffer (many times the last-level cache) allocated and
// first-touched once, each thread its own slice, then read as often as asked. Each
// run() is one timed multi-threaded streaming read (each thread sums its own
// contiguous slice with SIMD) with the engine's thread pool.
class ReadBandwidthProbe {
 public:
  ReadBandwidthProbe(ThreadPool& pool, size_t bytes);
  struct Run {
    double gb_per_s = 0;  // 1e9 bytes/s
    IntervalUsage usage;
  };
  Run run();
  size_t bytes() const { return buffer_.size() * sizeof(float); }

 private:
  ThreadPool& pool_;
  std::vector<float> buffer_;
  std::vector<float> sink_;
};

// Memory a caller names, such as one weight matrix a decode step reads.
struct MemoryRegion {
  const void* data = nullptr;
  size_t bytes = 0;
};

// Reads `regions` in order, each with one parallel_for that splits it into contiguous
// per-thread slices summed with SIMD (as matmul splits a matrix's rows): the rate the
// machine gives a decode step's read pattern (many matrices of a few MB, one pool call
// each, file-backed pages) with no GEMV arithmetic. Set beside the streaming probe and
// the decode step it tells a loss of the pattern from a loss of the kernel.
ReadBandwidthProbe::Run read_regions(ThreadPool& pool, std::span<const MemoryRegion> regions);

struct BandwidthResult {
  double median_gb_per_s = 0;  // 1e9 bytes/s
  double best_gb_per_s = 0;
  size_t bytes = 0;
  int runs = 0;
};

// `runs` reads of a fresh `bytes`-sized ReadBandwidthProbe after one warm-up read; the
// buffer should be many times the last-level cache.
BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t bytes, int runs);

// "AMD EPYC 9R14 (2 threads)": the CPU model from /proc/cpuinfo.
std::string cpu_description(int threads);

struct FmaRateResult {
  double median_gflop_per_s = 0;  // 1e9 FLOP/s, an FMA counting 2
  double best_gflop_per_s = 0;
  double worst_gflop_per_s = 0;
  std::vector<double> run_gflop_per_s;  // [runs] each run's rate
  std::vector<double> run_cpu_share;    // [runs] the CPU share it got (IntervalUsage)
  int runs = 0;
  int lanes = 0;       // f32 lanes of the vectors used
  int chains = 0;      // independent accumulators per thread
  std::string target;  // Highway's target: "AVX3", "AVX2", "NEON", ...
};

// `runs` timed runs (after a warm-up) of every pool thread doing about `iterations` x
// chains vector FMAs (roofline/fma_rate.cpp): the f32 compute ceiling of the CPU
// backend, all cores.
FmaRateResult measure_fma_rate(ThreadPool& pool, int runs, int64_t iterations = int64_t{1} << 22);

// The fixed cost of one op call on the CPU backend: the median time of an empty
// parallel_for over all threads of the pool (wake, split, join), of `calls` calls.
double measure_pool_call_seconds(ThreadPool& pool, int calls);

}  // namespace ekva
