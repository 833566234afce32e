// The two roofs of a device, as the roofline report and the planner use them:
// measured on this machine by `ekva roofline probe` (saved as JSON), or taken from
// a table of datasheet figures for common parts. A measured figure overrides the
// datasheet's. A GPU probe (read and copy bandwidth, the bf16 matrix rate through
// cuBLAS, launch overhead) fills the same fields from the CUDA backend.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ekva {

class ThreadPool;

struct Ceilings {
  static constexpr int kVersion = 1;

  std::string name;            // "h200", "cpu"
  std::string device;          // "NVIDIA H200 SXM 141GB", "Intel(R) Xeon(R) Processor (2 threads)"
  std::string source;          // "datasheet" or "measured"
  double memory_gb_per_s = 0;  // the memory roof: HBM or DRAM read bandwidth, 1e9 B/s
  // The compute roof of the engine's matmuls on the device: dense bf16 tensor cores on
  // a GPU; f32 FMA on the CPU (the CPU backend widens bf16 weights and computes in f32).
  double compute_gflop_per_s = 0;
  std::string compute_kind;   // "bf16 tensor, dense", "f32 FMA (AVX3)"
  double cache_gb_per_s = 0;  // read rate of a buffer that fits the last-level cache; 0: none
  double cache_bytes = 0;     // that cache's size; 0: unknown
  double memory_bytes = 0;    // memory for weights and KV
  double op_overhead_us = 0;  // fixed cost of one op call (a pool call; a kernel launch)
  nlohmann::json measurements = nlohmann::json::object();  // the probe's samples, as written

  // FLOP/byte where the memory roof meets the compute roof.
  double ridge_flop_per_byte() const { return compute_gflop_per_s / memory_gb_per_s; }
  // The roof at arithmetic intensity `flop_per_byte`: min(intensity x memory, compute).
  double roof_gflop_per_s(double flop_per_byte) const;
  // The least time `bytes` and `flops` can take under the roofs (no overhead).
  double roof_seconds(double bytes, double flops) const;

  nlohmann::json to_json() const;
  // Throws ekva::Error naming `where` and the field at fault.
  static Ceilings from_json(const nlohmann::json& j, std::string_view where);
  static Ceilings load(const std::filesystem::path& path);
};

// One row of the datasheet table (peak figures, dense: no 2:4 sparsity).
struct DatasheetPart {
  const char* name;  // what --hardware takes
  const char* device;
  double memory_gb_per_s;
  double bf16_tflop_per_s;
  double fp32_tflop_per_s;
  double memory_gb;  // 1e9 bytes
  const char* source;
};
std::span<const DatasheetPart> datasheet_parts();
// The datasheet row as ceilings (compute roof: bf16 for a GPU, fp32 for "cpu");
// an unknown name throws, listing the known ones.
Ceilings datasheet_ceilings(std::string_view name);

struct CpuProbeOptions {
  size_t read_bytes = 0;        // 0: 4 x the last-level cache, at least 1 GiB
  size_t cache_read_bytes = 0;  // 0: a quarter of the last-level cache, at most 32 MiB
  int runs = 9;
  int64_t fma_iterations = int64_t{1} << 22;
  // A run counts only if the process got this share of its threads' CPU time
  // (IntervalUsage); when none did, all count and the figure is marked contended.
  double min_cpu_share = 0.85;
};

// Measures this machine with `pool`: the streaming read rate from memory and from
// the last-level cache (ReadBandwidthProbe), the f32 FMA rate (measure_fma_rate), an
// empty pool call, the memory size; over the "cpu" datasheet row.
Ceilings probe_cpu(ThreadPool& pool, const CpuProbeOptions& options);

// Size of the last-level cache from sysfs (0: unknown), and memory from /proc/meminfo.
size_t last_level_cache_bytes();
size_t total_memory_bytes();

}  // namespace ekva
