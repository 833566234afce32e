// `ekva roofline`: the machine's ceilings and the roofline analysis of an op profile.
//   ekva roofline probe [--json-out FILE] [-m DIR] [-t N] [--runs R] [--read-mib M]
//                       [--device cpu|cuda|cuda:N]
//   ekva roofline hardware                      (the datasheet table)
//   ekva roofline report PROFILE.json (--probe FILE | --hardware NAME) --out DIR
//                        [--phase decode] [--calibration FILE [--model DIR]] [--no-plot]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/json_fields.h"
#include "core/thread_pool.h"
#include "kv/profile.h"
#include "model/config.h"
#include "roofline/ceilings.h"
#include "roofline/hardware.h"
#include "roofline/report.h"
#include "roofline/roofline_report.h"
#include "runtime/devices.h"

#ifndef EKVA_TOOLS_DIR
#define EKVA_TOOLS_DIR "tools"
#endif

namespace ekva::cli {

namespace {

struct ProbeArgs {
  std::string json_out;
  std::string device = "cpu";
  std::string model_dir;  // the kernels' shapes; empty: a generic large model's
  int threads = 0;
  int runs = 9;
  double read_mib = 0;
};

// A GPU's ceilings (the CUDA backend measures them), printed and saved.
void run_device_probe(const ProbeArgs& a, const DeviceSpec& spec) {
  const Ceilings c = probe_device_ceilings(spec, a.runs);
  const nlohmann::json& m = c.measurements;
  fmt::print("device           {}\n", c.device);
  fmt::print("memory read      {:.0f} GB/s (median of {}; {:.0f}-{:.0f})\n", c.memory_gb_per_s,
             m["memory_read_gb_per_s"]["runs"].get<int>(),
             m["memory_read_gb_per_s"]["range"][0].get<double>(),
             m["memory_read_gb_per_s"]["range"][1].get<double>());
  fmt::print("copy             {:.0f} GB/s (read + written, device to device)\n",
             m["copy_gb_per_s"]["median"].get<double>());
  for (const auto& g : m["bf16_gemm"])
    fmt::print("bf16 GEMM        n {:5d}: {:.0f} TFLOP/s\n", g["n"].get<int>(),
               g["tflop_per_s"].get<double>());
  fmt::print("compute          {:.0f} TFLOP/s {} (the best size)\n", c.compute_gflop_per_s / 1e3,
             c.compute_kind);
  if (m.contains("datasheet"))
    fmt::print("datasheet        {}: {:.0f} GB/s, {:.0f} TFLOP/s bf16 dense\n",
               m["datasheet"]["name"].get<std::string>(),
               m["datasheet"]["memory_gb_per_s"].get<double>(),
               m["datasheet"]["bf16_tflop_per_s"].get<double>());
  fmt::print("ridge            {:.0f} FLOP/byte\n", c.ridge_flop_per_byte());
  fmt::print("launch overhead  {:.2f} us (a small kernel, back to back)\n", c.op_overhead_us);
  fmt::print("memory           {}\n", human_bytes(c.memory_bytes));
  if (!a.json_out.empty()) {
    write_text_file(a.json_out, c.to_json().dump(2) + "\n", "ceilings file");
    fmt::print("wrote {}\n", a.json_out);
  }
}

void run_probe(const ProbeArgs& a) {
  const DeviceSpec spec = DeviceSpec::parse(a.device);
  if (!spec.is_cpu()) {
    if (!a.model_dir.empty())
      fail(
          "roofline probe: -m (the CPU kernels' shapes) is for --device cpu; the GPU probe "
          "measures the device's roofs only");
    run_device_probe(a, spec);
    return;
  }
  ThreadPool pool(a.threads > 0 ? a.threads : default_thread_count());
  CpuProbeOptions o;
  o.runs = a.runs;
  o.read_bytes = static_cast<size_t>(a.read_mib * (1 << 20));
  const std::string load_before = load_average();
  Ceilings c = probe_cpu(pool, o);
  KernelShape shape;  // hidden 4096, head dim 128, GQA group 4 unless a model is given
  if (!a.model_dir.empty()) {
    const ModelConfig m =
        ModelConfig::from_file(std::filesystem::path(a.model_dir) / "config.json");
    shape = {m.hidden_size, m.head_dim, m.group_size()};
  }
  shape.cache_bytes = c.cache_bytes;
  c.kernels = probe_kernels(pool, shape, a.runs);
  c.measurements["load_average_before"] = load_before;
  c.measurements["load_average_after"] = load_average();
  c.measurements["date"] = utc_timestamp();
  const nlohmann::json& m = c.measurements;
  const auto kept = [&](const char* key) {
    const nlohmann::json& s = m[key];
    return s["contended"].get<bool>()
               ? fmt::format("all {} runs contended: the figure is of a busy machine",
                             s["runs"].get<int>())
               : fmt::format("median of the {} of {} runs with a full CPU share",
                             s["kept"].get<int>(), s["runs"].get<int>());
  };
  fmt::print("device           {}\n", c.device);
  fmt::print("memory read      {:.1f} GB/s ({:.0f} MiB; {})\n", c.memory_gb_per_s,
             m["memory_read_gb_per_s"]["bytes"].get<double>() / (1 << 20),
             kept("memory_read_gb_per_s"));
  if (c.cache_bytes > 0)
    fmt::print(
        "cache read       {:.1f} GB/s (buffers up to {:.0f} MiB read at least 1.5x the memory "
        "rate; the system reports a {:.0f} MiB last-level cache)\n",
        c.cache_gb_per_s, c.cache_bytes / (1 << 20),
        m["reported_last_level_cache_bytes"].get<double>() / (1 << 20));
  else
    fmt::print("cache read       none faster than memory found\n");
  fmt::print("compute          {:.1f} GFLOP/s {}, {} chains x {} lanes per thread ({})\n",
             c.compute_gflop_per_s, c.compute_kind, m["fma_gflop_per_s"]["chains"].get<int>(),
             m["fma_gflop_per_s"]["lanes"].get<int>(), kept("fma_gflop_per_s"));
  fmt::print("ridge            {:.1f} FLOP/byte\n", c.ridge_flop_per_byte());
  const auto by_tokens = [&](const std::vector<double>& v) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i)
      out += fmt::format("{}{:.0f}: {:.1f}", i ? ", " : "", c.kernels.matmul_tokens[i], v[i]);
    return out;
  };
  fmt::print("kernels          matmul (k {}) by tokens: GFLOP/s, weights in L2 {}\n",
             c.kernels.matmul_k, by_tokens(c.kernels.matmul_gflop_per_s));
  fmt::print("                 GB/s of weights read from memory {}\n",
             by_tokens(c.kernels.matmul_stream_gb_per_s));
  if (!c.kernels.matmul_cache_stream_gb_per_s.empty())
    fmt::print("                 GB/s of weights read from the cache {}\n",
               by_tokens(c.kernels.matmul_cache_stream_gb_per_s));
  fmt::print(
      "                 decode attention (head dim {}, group {}, K/V in cache) {:.1f} "
      "GB/s\n",
      c.kernels.head_dim, c.kernels.group, c.kernels.attention_gb_per_s);
  fmt::print("op overhead      {:.2f} us (a pool call, beyond its work)\n", c.op_overhead_us);
  fmt::print("memory           {}\n", human_bytes(c.memory_bytes));
  if (!a.json_out.empty()) {
    write_text_file(a.json_out, c.to_json().dump(2) + "\n", "ceilings file");
    fmt::print("wrote {}\n", a.json_out);
  }
}

void print_hardware() {
  fmt::print("{:<10} {:>10} {:>12} {:>12} {:>8}  {}\n", "name", "mem GB/s", "bf16 TFLOP/s",
             "fp32 TFLOP/s", "mem GB", "device (source)");
  for (const DatasheetPart& p : datasheet_parts())
    fmt::print("{:<10} {:>10.0f} {:>12.1f} {:>12.1f} {:>8.0f}  {} ({})\n", p.name,
               p.memory_gb_per_s, p.bf16_tflop_per_s, p.fp32_tflop_per_s, p.memory_gb, p.device,
               p.source);
}

struct ReportArgs {
  std::string profile;
  std::string probe;
  std::string hardware;
  std::string out_dir;
  std::string phase = "decode";
  std::string calibration;
  std::string model_dir;
  std::string title;
  bool no_plot = false;
  std::string python = "/usr/bin/python3";
  std::string plot_script = std::string(EKVA_TOOLS_DIR) + "/plot_roofline.py";
};

void run_report(const ReportArgs& a) {
  const Ceilings ceilings = ceilings_from_args(a.probe, a.hardware);
  const nlohmann::json pj = read_json_file(a.profile, "op profile");
  const OpProfile profile = OpProfile::from_json(pj, a.profile);

  std::optional<CalibrationProfile> calibration;
  if (!a.calibration.empty()) {
    std::string model_dir = a.model_dir;
    if (model_dir.empty() && pj.contains("run") && pj["run"].contains("model"))
      model_dir = pj["run"]["model"].get<std::string>();
    if (model_dir.empty())
      throw UsageError("--calibration needs --model DIR (the profile does not name its model)");
    const ModelConfig config =
        ModelConfig::from_file(std::filesystem::path(model_dir) / "config.json");
    calibration = CalibrationProfile::load(a.calibration, kv_shape_of(config));
  }
  RooflineReport report =
      make_roofline_report(profile, ceilings, a.phase, calibration ? &*calibration : nullptr);
  report.title = a.title.empty() ? fmt::format("{} ({})", a.profile, a.phase) : a.title;
  if (pj.contains("run")) report.run = pj["run"];

  std::filesystem::create_directories(a.out_dir);
  const std::filesystem::path dir(a.out_dir);
  write_text_file((dir / "roofline.md").string(), report.markdown(), "report");
  write_text_file((dir / "roofline.json").string(), report.to_json().dump(1) + "\n", "report");
  for (const std::string& line : report.diagnosis) fmt::print("- {}\n", line);
  fmt::print("wrote {}/roofline.md and roofline.json\n", a.out_dir);
  if (a.no_plot) return;
  const std::string cmd =
      fmt::format("'{}' '{}' '{}' '{}'", a.python, a.plot_script, (dir / "roofline").string(),
                  (dir / "roofline.json").string());
  if (std::system(cmd.c_str()) != 0)
    fail("the roofline plot failed: {} (needs python3 with matplotlib; --no-plot skips it)", cmd);
  fmt::print("wrote {}/roofline.svg and roofline.png\n", a.out_dir);
}

}  // namespace

void add_roofline_command(CLI::App& app) {
  auto* roof = app.add_subcommand("roofline", "Measured ceilings and the roofline analysis");
  roof->require_subcommand(1);

  auto probe_args = std::make_shared<ProbeArgs>();
  auto* probe = roof->add_subcommand(
      "probe", "Measure this machine's read bandwidth and FMA rate (all cores) as ceilings");
  probe->add_option("--json-out", probe_args->json_out, "Write the ceilings as JSON");
  probe->add_option("-m,--model", probe_args->model_dir,
                    "Measure the CPU kernels at this model's shapes (hidden size, head dim, "
                    "GQA group), for ekva plan");
  probe->add_option("-t,--threads", probe_args->threads, "Threads (0 = one per core)")
      ->check(CLI::NonNegativeNumber);
  probe->add_option("--runs", probe_args->runs, "Timed runs of each measurement (median kept)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  probe
      ->add_option("--read-mib", probe_args->read_mib,
                   "Buffer of the memory read (MiB; 0 = 4 x the last-level cache, >= 1 GiB)")
      ->check(CLI::NonNegativeNumber);
  probe->add_option("--device", probe_args->device,
                    "cpu, or a GPU (cuda, cuda:N): its read and copy rates, cuBLAS bf16 rate");
  probe->callback([probe_args] { run_probe(*probe_args); });

  auto* hw = roof->add_subcommand("hardware", "Print the datasheet table (--hardware names)");
  hw->callback([] { print_hardware(); });

  auto ra = std::make_shared<ReportArgs>();
  auto* report = roof->add_subcommand(
      "report", "Roofline table, plot and diagnosis of an op profile (ekva generate --op-profile)");
  report->add_option("profile", ra->profile, "Op profile JSON")->required();
  auto* probe_opt = report->add_option("--probe", ra->probe, "Ceilings from ekva roofline probe");
  report->add_option("--hardware", ra->hardware, "Datasheet ceilings (ekva roofline hardware)")
      ->excludes(probe_opt);
  report->add_option("--out", ra->out_dir, "Output folder")->required();
  report->add_option("--phase", ra->phase, "Steps to analyse: decode, prefill or mixed")
      ->capture_default_str();
  report->add_option("--calibration", ra->calibration,
                     "Calibration profile (ekva calibrate): joins each expert's attention "
                     "entropy and routing frequency");
  report->add_option("--model", ra->model_dir,
                     "Model directory the calibration profile is checked against (default: "
                     "the op profile's)");
  report->add_option("--title", ra->title, "Title of the report and plot");
  report->add_flag("--no-plot", ra->no_plot, "Skip the SVG/PNG plot");
  report->add_option("--python", ra->python, "Python with matplotlib")->capture_default_str();
  report->add_option("--plot-script", ra->plot_script, "tools/plot_roofline.py")
      ->capture_default_str();
  report->callback([ra] { run_report(*ra); });
}

}  // namespace ekva::cli
