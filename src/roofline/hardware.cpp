#include "roofline/hardware.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.h"
#include "core/json_fields.h"
#include "core/thread_pool.h"
#include "roofline/ceilings.h"

namespace ekva {

namespace {

// Peak figures from the vendors' datasheets, dense (the datasheets' tensor figures
// marked "with sparsity" are halved); memory_gb in 1e9 bytes as the datasheets give it.
//  - A100 SXM4 80GB: NVIDIA A100 Tensor Core GPU datasheet (2021): HBM2e 2,039 GB/s,
//    BF16 tensor 312 TFLOPS (624 sparse), FP32 19.5 TFLOPS.
//  - H100 SXM5 80GB and H100 PCIe 80GB: NVIDIA H100 Tensor Core GPU datasheet (2023):
//    SXM HBM3 3.35 TB/s, BF16 1,979 TFLOPS sparse (989 dense), FP32 67 TFLOPS; PCIe
//    HBM2e 2 TB/s, BF16 1,513 sparse (756 dense), FP32 51 TFLOPS.
//  - H200 SXM 141GB: NVIDIA H200 Tensor Core GPU datasheet (2024): HBM3e 4.8 TB/s, BF16
//    1,979 TFLOPS sparse (989 dense), FP32 67 TFLOPS. (Measured on the lent H200,
//    ANCHORS.md: reads at 4.1-4.3 TB/s, an 8192^3 bf16 GEMM at 731 TFLOP/s.)
//  - L40S 48GB: NVIDIA L40S datasheet (2023): GDDR6 864 GB/s, BF16 733 TFLOPS sparse
//    (362 dense), FP32 91.6 TFLOPS.
//  - GeForce RTX 4090 24GB: NVIDIA Ada Lovelace architecture whitepaper (2022), table
//    of the RTX 4090: GDDR6X 1,008 GB/s, BF16 tensor with FP32 accumulate 165.2 TFLOPS
//    dense (330.4 sparse; GeForce parts run FP32 accumulation at half the FP16-accumulate
//    rate), FP32 82.6 TFLOPS.
//  - cpu: a placeholder for a CPU that has not been probed: 8 cores at 3.0 GHz with two
//    256-bit FMA ports (8 x 3e9 x 2 x 8 lanes x 2 = 768 GFLOP/s f32) and dual-channel
//    DDR5-4800 (2 x 4800 MT/s x 8 B = 76.8 GB/s), 64 GB. `ekva roofline probe` replaces
//    every figure with this machine's; the CPU backend has no bf16 arithmetic, so its
//    bf16 rate is its f32 rate.
constexpr DatasheetPart kParts[] = {
    {"a100", "NVIDIA A100 SXM4 80GB", 2039, 312, 19.5, 80,
     "NVIDIA A100 Tensor Core GPU datasheet (2021)"},
    {"h100-sxm", "NVIDIA H100 SXM5 80GB", 3350, 989, 67, 80,
     "NVIDIA H100 Tensor Core GPU datasheet (2023)"},
    {"h100-pcie", "NVIDIA H100 PCIe 80GB", 2000, 756, 51, 80,
     "NVIDIA H100 Tensor Core GPU datasheet (2023)"},
    {"h200", "NVIDIA H200 SXM 141GB", 4800, 989, 67, 141,
     "NVIDIA H200 Tensor Core GPU datasheet (2024)"},
    {"l40s", "NVIDIA L40S 48GB", 864, 362, 91.6, 48, "NVIDIA L40S datasheet (2023)"},
    {"rtx4090", "NVIDIA GeForce RTX 4090 24GB", 1008, 165.2, 82.6, 24,
     "NVIDIA Ada Lovelace GPU architecture whitepaper (2022)"},
    {"cpu", "generic CPU (8 cores, AVX2 at 3.0 GHz, 2-channel DDR5-4800)", 76.8, 0.768, 0.768, 64,
     "placeholder; replace with ekva roofline probe"},
};

size_t read_size_file(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text.empty()) return 0;
  size_t n = 0;
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') n = n * 10 + (text[i++] - '0');
  if (i < text.size() && (text[i] == 'K' || text[i] == 'k')) n <<= 10;
  if (i < text.size() && text[i] == 'M') n <<= 20;
  return n;
}

}  // namespace

namespace {

// y(x) from points (xs, ys), linear in log x, clamped to the ends; 0 without points.
double log_interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double x) {
  if (xs.empty() || xs.size() != ys.size()) return 0;
  if (x <= xs.front()) return ys.front();
  for (size_t i = 1; i < xs.size(); ++i) {
    if (x > xs[i]) continue;
    const double f = std::log(x / xs[i - 1]) / std::log(xs[i] / xs[i - 1]);
    return ys[i - 1] + f * (ys[i] - ys[i - 1]);
  }
  return ys.back();
}

}  // namespace

double KernelRates::matmul_rate(double tokens) const {
  return log_interpolate(matmul_tokens, matmul_gflop_per_s, tokens);
}

double KernelRates::matmul_stream_rate(double tokens, bool from_cache) const {
  return log_interpolate(matmul_tokens,
                         from_cache && !matmul_cache_stream_gb_per_s.empty()
                             ? matmul_cache_stream_gb_per_s
                             : matmul_stream_gb_per_s,
                         tokens);
}

double Ceilings::roof_gflop_per_s(double flop_per_byte) const {
  return std::min(flop_per_byte * memory_gb_per_s, compute_gflop_per_s);
}

double Ceilings::roof_seconds(double bytes, double flops) const {
  return std::max(bytes / (memory_gb_per_s * 1e9), flops / (compute_gflop_per_s * 1e9));
}

std::span<const DatasheetPart> datasheet_parts() { return kParts; }

Ceilings datasheet_ceilings(std::string_view name) {
  for (const DatasheetPart& p : kParts) {
    if (name != p.name) continue;
    const bool cpu = name == "cpu";
    Ceilings c;
    c.name = p.name;
    c.device = p.device;
    c.source = "datasheet";
    c.memory_gb_per_s = p.memory_gb_per_s;
    c.compute_gflop_per_s = 1e3 * (cpu ? p.fp32_tflop_per_s : p.bf16_tflop_per_s);
    c.compute_kind = cpu ? "f32 FMA" : "bf16 tensor, dense";
    c.memory_bytes = p.memory_gb * 1e9;
    c.measurements = {{"datasheet", p.source},
                      {"bf16_tflop_per_s", p.bf16_tflop_per_s},
                      {"fp32_tflop_per_s", p.fp32_tflop_per_s}};
    return c;
  }
  std::string known;
  for (const DatasheetPart& p : kParts)
    known += fmt::format("{}{}", known.empty() ? "" : ", ", p.name);
  fail("unknown hardware '{}' (the datasheet table has: {})", name, known);
}

nlohmann::json Ceilings::to_json() const {
  return {
      {"format", "ekva-ceilings"},
      {"version", kVersion},
      {"name", name},
      {"device", device},
      {"source", source},
      {"memory_gb_per_s", memory_gb_per_s},
      {"compute_gflop_per_s", compute_gflop_per_s},
      {"compute_kind", compute_kind},
      {"ridge_flop_per_byte", ridge_flop_per_byte()},
      {"cache_gb_per_s", cache_gb_per_s},
      {"cache_bytes", cache_bytes},
      {"memory_bytes", memory_bytes},
      {"op_overhead_us", op_overhead_us},
      {"kernels",
       kernels.empty()
           ? nlohmann::json::object()
           : nlohmann::json{{"matmul_k", kernels.matmul_k},
                            {"matmul_n", kernels.matmul_n},
                            {"matmul_tokens", kernels.matmul_tokens},
                            {"matmul_gflop_per_s", kernels.matmul_gflop_per_s},
                            {"matmul_stream_gb_per_s", kernels.matmul_stream_gb_per_s},
                            {"matmul_cache_stream_gb_per_s", kernels.matmul_cache_stream_gb_per_s},
                            {"head_dim", kernels.head_dim},
                            {"group", kernels.group},
                            {"attention_gb_per_s", kernels.attention_gb_per_s}}},
      {"measurements", measurements}};
}

Ceilings Ceilings::from_json(const nlohmann::json& j, std::string_view where) {
  const JsonFields f{std::string(where)};
  if (!j.is_object()) f.bad("not a ceilings file (a JSON object from ekva roofline probe)");
  if (f.string(j, "", "format") != "ekva-ceilings")
    f.bad("field 'format' is not \"ekva-ceilings\" (a file from ekva roofline probe)");
  const int64_t version = f.integer(j, "", "version", 0, 1 << 30);
  if (version != kVersion)
    f.bad("version {} is not supported (this build reads version {})", version, kVersion);
  constexpr double kHuge = 1e30;
  Ceilings c;
  c.name = f.string(j, "", "name");
  c.device = f.string(j, "", "device");
  c.source = f.string(j, "", "source");
  c.memory_gb_per_s = f.number(j, "", "memory_gb_per_s", 1e-6, kHuge);
  c.compute_gflop_per_s = f.number(j, "", "compute_gflop_per_s", 1e-6, kHuge);
  c.compute_kind = f.string(j, "", "compute_kind");
  c.cache_gb_per_s = f.number(j, "", "cache_gb_per_s", 0, kHuge);
  c.cache_bytes = f.number(j, "", "cache_bytes", 0, kHuge);
  c.memory_bytes = f.number(j, "", "memory_bytes", 0, kHuge);
  c.op_overhead_us = f.number(j, "", "op_overhead_us", 0, 1e9);
  if (j.contains("kernels") && !j["kernels"].empty()) {
    const Json& k = f.field(j, "", "kernels");
    KernelRates& r = c.kernels;
    r.matmul_k = f.integer(k, "kernels", "matmul_k", 1, 1 << 30);
    r.matmul_n = f.integer(k, "kernels", "matmul_n", 1, 1 << 30);
    r.head_dim = f.integer(k, "kernels", "head_dim", 1, 1 << 20);
    r.group = f.integer(k, "kernels", "group", 1, 1 << 20);
    r.attention_gb_per_s = f.number(k, "kernels", "attention_gb_per_s", 0, kHuge);
    const Json& tokens = f.field(k, "kernels", "matmul_tokens");
    const Json& rates = f.field(k, "kernels", "matmul_gflop_per_s");
    const Json& stream = f.field(k, "kernels", "matmul_stream_gb_per_s");
    if (!tokens.is_array() || !rates.is_array() || !stream.is_array() ||
        tokens.size() != rates.size() || tokens.size() != stream.size())
      f.bad(
          "fields 'kernels.matmul_tokens', 'kernels.matmul_gflop_per_s' and "
          "'kernels.matmul_stream_gb_per_s' must be arrays of one length");
    for (size_t i = 0; i < tokens.size(); ++i) {
      r.matmul_tokens.push_back(
          f.number(tokens[i], fmt::format("kernels.matmul_tokens[{}]", i), 1, kHuge));
      r.matmul_gflop_per_s.push_back(
          f.number(rates[i], fmt::format("kernels.matmul_gflop_per_s[{}]", i), 1e-9, kHuge));
      r.matmul_stream_gb_per_s.push_back(
          f.number(stream[i], fmt::format("kernels.matmul_stream_gb_per_s[{}]", i), 1e-9, kHuge));
      if (k.contains("matmul_cache_stream_gb_per_s") &&
          !k["matmul_cache_stream_gb_per_s"].empty()) {
        const Json& cs = k["matmul_cache_stream_gb_per_s"];
        if (!cs.is_array() || cs.size() != tokens.size())
          f.bad(
              "field 'kernels.matmul_cache_stream_gb_per_s' must be an array like "
              "matmul_tokens");
        r.matmul_cache_stream_gb_per_s.push_back(f.number(
            cs[i], fmt::format("kernels.matmul_cache_stream_gb_per_s[{}]", i), 1e-9, kHuge));
      }
      if (i > 0 && !(r.matmul_tokens[i] > r.matmul_tokens[i - 1]))
        f.bad("field 'kernels.matmul_tokens' must ascend");
    }
  }
  if (j.contains("measurements")) c.measurements = j["measurements"];
  return c;
}

Ceilings Ceilings::load(const std::filesystem::path& path) {
  return from_json(read_json_file(path, "ceilings file"), path.string());
}

size_t last_level_cache_bytes() {
  size_t best = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}/", index);
    std::ifstream type(dir + "type");
    std::string t;
    if (!(type >> t)) break;
    if (t == "Instruction") continue;
    best = std::max(best, read_size_file(dir + "size"));
  }
  return best;
}

size_t total_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  size_t kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemTotal:") return kib * 1024;
  const long pages = sysconf(_SC_PHYS_PAGES);
  return pages > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

namespace {

// Runs of one measurement with the CPU share each got. On a shared host a run whose
// threads were preempted measures the other load, not the machine: the figure is the
// median of the runs with at least `min_share` of their threads' CPU time, or of all
// runs (flagged) when none had it.
struct Samples {
  std::vector<double> rate, share;

  nlohmann::json summary(double min_share, double& figure) const {
    std::vector<double> kept;
    for (size_t i = 0; i < rate.size(); ++i)
      if (share[i] >= min_share) kept.push_back(rate[i]);
    const bool contended = kept.empty();
    if (contended) kept = rate;
    std::sort(kept.begin(), kept.end());
    figure = kept[kept.size() / 2];
    return {{"figure", figure},       {"runs", rate.size()}, {"kept", contended ? 0 : kept.size()},
            {"contended", contended}, {"best", kept.back()}, {"rates", rate},
            {"cpu_shares", share}};
  }
};

Samples read_samples(ThreadPool& pool, size_t bytes, int runs) {
  ReadBandwidthProbe probe(pool, bytes);
  probe.run();  // warm-up
  Samples s;
  for (int i = 0; i < runs; ++i) {
    const ReadBandwidthProbe::Run r = probe.run();
    s.rate.push_back(r.gb_per_s);
    s.share.push_back(r.usage.cpu_share);
  }
  return s;
}

}  // namespace

Ceilings probe_cpu(ThreadPool& pool, const CpuProbeOptions& o) {
  EKVA_CHECK(o.runs >= 1, "probe: runs must be >= 1, got {}", o.runs);
  const size_t llc = last_level_cache_bytes();
  const size_t read_bytes =
      o.read_bytes > 0 ? o.read_bytes : std::max<size_t>(size_t{1} << 30, 4 * llc);

  Ceilings c = datasheet_ceilings("cpu");
  c.name = "cpu";
  c.device = cpu_description(pool.size());
  c.source = "measured";
  const Samples memory = read_samples(pool, read_bytes, o.runs);
  nlohmann::json memory_json = memory.summary(o.min_cpu_share, c.memory_gb_per_s);
  memory_json["bytes"] = read_bytes;

  // The cache a step can live in: what the system reports may be the host's (a virtual
  // machine's share of it is smaller) or shared with other tenants, so the buffer
  // doubles from 4 MiB while it reads at least 1.5x the memory rate; the largest such
  // size is the effective cache, and the rate at half of it the cache's read rate.
  nlohmann::json sweep = nlohmann::json::array();
  std::vector<std::pair<size_t, double>> rates;  // (bytes, GB/s)
  const size_t top = o.cache_read_bytes > 0
                         ? o.cache_read_bytes
                         : std::min<size_t>(std::max<size_t>(llc, 4 << 20), size_t{1} << 30);
  for (size_t bytes = o.cache_read_bytes > 0 ? top : size_t{4} << 20; bytes <= top; bytes *= 2) {
    const Samples s = read_samples(pool, bytes, 2 * o.runs);
    double rate = 0;
    nlohmann::json sj = s.summary(o.min_cpu_share, rate);
    sj["bytes"] = bytes;
    sweep.push_back(sj);
    rates.emplace_back(bytes, rate);
    if (rate < 1.5 * c.memory_gb_per_s) break;
  }
  size_t effective = 0;
  for (size_t i = 0; i < rates.size(); ++i)
    if (rates[i].second >= 1.5 * c.memory_gb_per_s) {
      effective = rates[i].first;
      c.cache_gb_per_s = rates[i > 0 ? i - 1 : 0].second;
    }
  c.cache_bytes = static_cast<double>(effective);

  const FmaRateResult fma = measure_fma_rate(pool, o.runs, o.fma_iterations);
  const Samples fma_samples{fma.run_gflop_per_s, fma.run_cpu_share};
  nlohmann::json fma_json = fma_samples.summary(o.min_cpu_share, c.compute_gflop_per_s);
  fma_json["target"] = fma.target;
  fma_json["lanes"] = fma.lanes;
  fma_json["chains"] = fma.chains;
  c.compute_kind = fmt::format("f32 FMA ({})", fma.target);
  const double call_s = measure_pool_call_seconds(pool, 200);
  c.memory_bytes = static_cast<double>(total_memory_bytes());
  c.op_overhead_us = call_s * 1e6;
  c.measurements = {{"threads", pool.size()},
                    {"min_cpu_share", o.min_cpu_share},
                    {"memory_read_gb_per_s", memory_json},
                    {"cache_sweep_gb_per_s", sweep},
                    {"reported_last_level_cache_bytes", llc},
                    {"fma_gflop_per_s", fma_json},
                    {"pool_call_us", call_s * 1e6},
                    {"datasheet", "cpu placeholder, every figure overridden by a measured one"}};
  return c;
}

}  // namespace ekva
