// `ekva plan`: the deployment question. From the model's config.json, the hardware
// (probed, or a datasheet row), a context, a batch and a time-per-output-token
// target: the KV budget that meets the target, the memory it takes, the predicted
// decode throughput and the largest batch that fits (roofline/planner.h).
//   ekva plan --model DIR --context N --batch B [--tpot-ms T | --budget F]
//             (--probe FILE | --hardware NAME) [--kv-dtype bf16|f32] [--json-out FILE]
#include <filesystem>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "kv/budget.h"
#include "model/config.h"
#include "roofline/planner.h"

namespace ekva::cli {

namespace {

struct PlanArgs {
  std::string model_dir;
  int64_t context = 0;
  int64_t batch = 1;
  double tpot_ms = 0;
  std::string budget;
  std::string probe;
  std::string hardware;
  std::string kv_dtype = "bf16";
  double memory_fraction = 0.9;
  std::string json_out;
};

void run_plan(const PlanArgs& a) {
  if (!a.budget.empty() && a.tpot_ms > 0)
    throw UsageError("give --tpot-ms (the budget is then planned) or --budget, not both");
  const Ceilings ceilings = ceilings_from_args(a.probe, a.hardware);
  const ModelConfig config =
      ModelConfig::from_file(std::filesystem::path(a.model_dir) / "config.json");
  PlanRequest q;
  q.context = a.context;
  q.batch = a.batch;
  q.tpot_ms = a.tpot_ms;
  // The CPU backend uses bf16 and f32 weights in place and widens f16 to f32 at load.
  q.weight_dtype = config.torch_dtype == DType::kF16 ? DType::kF32 : config.torch_dtype;
  q.kv_dtype = a.kv_dtype == "f32" ? DType::kF32 : DType::kBF16;
  q.memory_fraction = a.memory_fraction;
  if (!a.budget.empty()) {
    const BudgetSpec spec = BudgetSpec::parse(a.budget);
    if (spec.unit != BudgetSpec::Unit::kFraction)
      throw UsageError(
          fmt::format("--budget '{}': give a fraction of the cache, e.g. 10%", a.budget));
    q.budget = spec.value;
  }
  const Plan p = plan_decode(config, ceilings, q);

  const RouterRule& r = config.router;
  fmt::print("model          {}: {} layers, {} experts (top {}), {:.1f} MB of {} weights\n",
             config.arch_name, config.n_layers, r.n_experts, r.top_k, p.weight_bytes / 1e6,
             dtype_name(q.weight_dtype));
  fmt::print(
      "hardware       {}: memory {:.1f} GB/s, compute {:.1f} GFLOP/s ({}), ridge {:.1f} "
      "FLOP/byte, {:.2f} us per op call\n",
      p.hardware, ceilings.memory_gb_per_s, ceilings.compute_gflop_per_s, ceilings.compute_kind,
      ceilings.ridge_flop_per_byte(), ceilings.op_overhead_us);
  fmt::print("request        context {}, batch {}{}\n", a.context, a.batch,
             a.tpot_ms > 0 ? fmt::format(", target {} ms per output token", a.tpot_ms) : "");
  fmt::print("KV budget      {:.1f}% ({} of {} entries per layer and kv-head){}\n",
             100 * p.budget_fraction, p.kept, a.context,
             p.full_cache_meets_target ? ": the full cache meets the target" : "");
  fmt::print("memory         {:.1f} MB weights + {} x {:.1f} MB KV = {:.1f} MB of {:.1f} MB: {}\n",
             p.weight_bytes / 1e6, a.batch, p.kv_bytes_per_sequence / 1e6, p.memory_bytes / 1e6,
             p.memory_available / 1e6, p.fits ? "fits" : "does NOT fit");
  fmt::print(
      "decode         step {:.3f} ms (roofs {:.3f} + {:.3f} fixed over {} op calls), {:.1f} "
      "tokens/s; {:.1f} MB read per step ({:.1f} weights, {:.1f} KV) at {:.1f} GB/s\n",
      p.step.seconds * 1e3, p.step.roof_seconds * 1e3, p.step.overhead_seconds * 1e3,
      p.step.op_calls, p.tokens_per_second, p.step.bytes / 1e6, p.step.weight_bytes / 1e6,
      p.step.kv_bytes / 1e6, p.step.memory_gb_per_s);
  fmt::print("largest batch  {} fit in memory at this budget{}\n", p.max_batch_memory,
             a.tpot_ms > 0 ? fmt::format("; {} also meet the target", p.max_batch_target) : "");
  for (const std::string& n : p.notes) fmt::print("note           {}\n", n);
  if (!a.json_out.empty()) {
    nlohmann::json j = p.to_json();
    j["model"] = a.model_dir;
    j["ceilings"] = ceilings.to_json();
    write_text_file(a.json_out, j.dump(2) + "\n", "plan");
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* plan = app.add_subcommand(
      "plan", "KV budget, memory, decode throughput and largest batch for a latency target");
  plan->add_option("-m,--model", a->model_dir, "Model directory (its config.json is enough)")
      ->required();
  plan->add_option("--context", a->context, "Tokens per sequence")
      ->required()
      ->check(CLI::PositiveNumber);
  plan->add_option("--batch", a->batch, "Sequences decoding together")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  plan->add_option("--tpot-ms", a->tpot_ms,
                   "Time-per-output-token target (ms): the budget is the largest that meets it")
      ->check(CLI::PositiveNumber);
  plan->add_option("--budget", a->budget, "Predict at this KV budget (e.g. 10%) instead");
  auto* probe = plan->add_option("--probe", a->probe, "Ceilings from ekva roofline probe");
  plan->add_option("--hardware", a->hardware, "Datasheet ceilings: ekva roofline hardware")
      ->excludes(probe);
  plan->add_option("--kv-dtype", a->kv_dtype, "Stored K/V type")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  plan->add_option("--memory-fraction", a->memory_fraction,
                   "Share of the device memory for weights and KV")
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  plan->add_option("--json-out", a->json_out, "Write the plan as JSON");
  plan->callback([a] { run_plan(*a); });
}

}  // namespace ekva::cli
