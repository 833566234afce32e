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

// What the engine's own kernels reach when their data sits in cache: the compute side
// of their roofs (a matmul of few tokens, or attention with its exponentials, can stay
// far below the FMA rate). Measured by `ekva roofline probe` at a model's shapes on the
// CPU backend; the planner takes an op's compute time from them when they are there.
struct KernelRates {
  int64_t matmul_k = 0;                    // the matmul's inner dimension (hidden size)
  int64_t matmul_n = 0;                    // its weight rows
  std::vector<double> matmul_tokens;       // token rows per call, ascending
  std::vector<double> matmul_gflop_per_s;  // the rate at each, weights in cache
  // The weight read rate at each token count with the weights in memory (a matrix of
  // twice the effective cache, at least 64 MiB) and in the last-level cache (a quarter
  // of it): the rate a kernel's access pattern gets from each level, which for a tile
  // of several tokens can be far below the read bandwidth.
  std::vector<double> matmul_stream_gb_per_s;
  std::vector<double> matmul_cache_stream_gb_per_s;  // empty: no cache level measured
  int64_t head_dim = 0;
  int64_t group = 0;              // query heads per kv-head
  double attention_gb_per_s = 0;  // decode attention's K/V read rate; 0: not measured

  bool empty() const { return matmul_tokens.empty() && attention_gb_per_s == 0; }
  // The matmul rate (GFLOP/s, weights in cache) and weight streaming rate (GB/s) at
  // `tokens` rows, interpolated in log(tokens) and clamped to the measured range; 0
  // when not measured.
  double matmul_rate(double tokens) const;
  double matmul_stream_rate(double tokens, bool from_cache) const;
};

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
  double cache_bytes = 0;     // the cache's effective size (probed); 0: unknown
  double memory_bytes = 0;    // memory for weights and KV
  double op_overhead_us = 0;  // fixed cost of one op call (a pool call; a kernel launch)
  KernelRates kernels;        // empty: not measured (datasheet rows)
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
  size_t read_bytes = 0;  // 0: 4 x the last-level cache, at least 1 GiB
  // The cache sweep's largest buffer; 0: the reported last-level cache (at most 1 GiB).
  // Given, only that size is read.
  size_t cache_read_bytes = 0;
  int runs = 9;
  int64_t fma_iterations = int64_t{1} << 22;
  // A run counts only if the process got this share of its threads' CPU time
  // (IntervalUsage); when none did, all count and the figure is marked contended.
  double min_cpu_share = 0.85;
};

// Measures this machine with `pool`: the streaming read rate from memory and, over a
// sweep of buffer sizes, the effective last-level cache and its read rate
// (ReadBandwidthProbe), the f32 FMA rate (measure_fma_rate), the fixed cost of a pool
// call, the memory size; over the "cpu" datasheet row.
Ceilings probe_cpu(ThreadPool& pool, const CpuProbeOptions& options);

// The CPU backend's matmul at 1..64 tokens over a bf16 weight of `k` columns small
// enough to stay in L2, over one in memory and one in the cache, and its decode
// attention over bf16 K/V
// of `head_dim` and GQA `group` in cache: KernelRates of this machine for a model of
// these shapes.
struct KernelShape {
  int64_t k = 4096;
  int64_t head_dim = 128;
  int64_t group = 4;
  double cache_bytes = 0;  // the effective last-level cache (Ceilings::cache_bytes); 0: none
};
KernelRates probe_kernels(ThreadPool& pool, const KernelShape& shape, int runs);

// Size of the last-level cache from sysfs (0: unknown), and memory from /proc/meminfo.
size_t last_level_cache_bytes();
size_t total_memory_bytes();

}  // namespace ekva
