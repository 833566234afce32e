// The GPU's measured read ceiling: every 16-byte vector of a large buffer read once
// (streaming loads, four in flight per thread, nothing written), the figure the
// benchmarks divide their bytes/s by and `ekva roofline` uses as the memory roof.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace ekva::cuda {

// Queues one read of `bytes` (a multiple of 16) at p (16-byte aligned) on `stream`.
// `sink` (device, one unsigned) is written only in the impossible case that keeps the
// loads alive.
void launch_read(const void* p, size_t bytes, unsigned* sink, cudaStream_t stream);

struct ReadCeiling {
  double bytes_per_s = 0;  // median over the runs
  double min_bytes_per_s = 0, max_bytes_per_s = 0;
  size_t bytes = 0;
  int runs = 0;
};

// Allocates `bytes` (at least several times the L2), fills it, times `runs` reads
// with CUDA events on a stream of its own and frees it; throws on a CUDA error.
ReadCeiling measure_read_ceiling(size_t bytes = size_t{2} << 30, int runs = 15);

}  // namespace ekva::cuda
