// Aggregate CPU decode throughput against batch size, for the full KV cache and a
// compressed one.
//
// One prompt of --context tokens is prefilled once and recorded; its K/V, queries
// and expert tags are replayed into the cache of every sequence of a batch (a
// compressed cache compresses them as after a real prefill). Then the whole batch
// decodes one token per sequence per forward call, each sequence its own random
// token stream (so that routing differs across the batch) (every weight matrix read once
// per step, tokens grouped per expert across the batch), and the step's median
// time gives the aggregate tokens/s. Batches whose caches would not fit in the
// memory available are reported as not run, with the bytes they would need. With
// several --policies, those of one (budget, batch) decode interleaved step by step.
//
//   ekva_bench_batch_decode -m DIR [--context 4096 --batches 1,4,16,64 --budgets 100%,10%]
//                           [--steps 6] [--json-out FILE] [--op-profile FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "cpu/cpu_backend.h"
#include "kv/compressed_cache.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "ops/profiling_backend.h"
#include "roofline/ceilings.h"
#include "roofline/report.h"
#include "runtime/prefill_recording.h"

namespace {

// MemAvailable from /proc/meminfo, in bytes (0 if unknown).
size_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines show as they come, even in a log
  CLI::App app{"EKVA CPU batched decode: aggregate tokens/s against batch size and KV budget"};
  std::string model_dir, json_out, commit = "unknown", allocator = "uniform",
                                   kv_dtype_name = "bf16";
  std::vector<std::string> policies = {"snapkv"};
  int64_t context = 4096;
  int steps = 6, threads = 0;
  std::vector<int> batches = {1, 4, 16, 64};
  std::vector<std::string> budgets = {"100%", "10%"};
  app.add_option("-m,--model", model_dir, "Model directory")->required();
  app.add_option("--context", context, "Tokens in every sequence's cache before decoding")
      ->check(CLI::PositiveNumber);
  app.add_option("--batches", batches, "Batch sizes")->delimiter(',');
  app.add_option("--budgets", budgets, "KV budgets (100% = the full cache)")->delimiter(',');
  app.add_option(
         "--policies", policies,
         "Policies of the compressed rows (several: the scoring overhead against the first)")
      ->delimiter(',');
  app.add_option("--allocator", allocator, "Allocator of the compressed rows")
      ->capture_default_str();
  app.add_option("--kv-dtype", kv_dtype_name, "K/V storage of every cache: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  app.add_option("--steps", steps, "Timed decode steps per row")->check(CLI::PositiveNumber);
  app.add_option("-t,--threads", threads, "Threads (0 = one per core)");
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  std::string op_profile;
  app.add_option("--op-profile", op_profile,
                 "Time every op of the timed steps (phase \"decode b<batch> <budget> <policy>\" "
                 "per row) and write the profile for ekva roofline report");
  CLI11_PARSE(app, argc, argv);
  const ekva::DType kv_dtype = kv_dtype_name == "bf16" ? ekva::DType::kBF16 : ekva::DType::kF32;

  try {
    ekva::CpuBackend backend(threads);
    // --op-profile: the timed forward calls go through the profiler (the caches' own
    // scoring calls keep the plain backend).
    ekva::ProfilingBackend profiler(backend);
    const auto model = ekva::Model::load(model_dir);
    const ekva::ModelConfig& c = model->config();
    if (context + steps + 2 > c.max_position_embeddings)
      ekva::fail("--context {} leaves no room to decode in the model's {} positions", context,
                 c.max_position_embeddings);
    fmt::print("model            {} ({:.1f} MB of weights), {} threads\n", c.arch_name,
               static_cast<double>(model->tensors().total_bytes()) / 1e6, backend.pool().size());

    std::mt19937 rng(1);
    std::vector<int32_t> prompt(static_cast<size_t>(context));
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));
    const auto t0 = std::chrono::steady_clock::now();
    // Every query's scores recorded too: an H2O cache then replays them instead of
    // running a scoring pass over all the prompt's queries per sequence.
    const ekva::PrefillRecording rec = ekva::PrefillRecording::record(
        *model, prompt, backend, ekva::DType::kF32, {.all_query_scores = true});
    const double prefill_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("prefill          {} tokens in {:.1f} s ({:.1f} tok/s), recorded once\n", context,
               prefill_s, static_cast<double>(context) / prefill_s);
    const size_t full_bytes_per_seq = static_cast<size_t>(context + steps + 2) * c.n_layers *
                                      c.n_kv_heads * 2 * c.head_dim * ekva::dtype_size(kv_dtype);

    // The policies of one (budget, batch) decode interleaved, one step of each in
    // turn, so that a slow minute of a shared host falls on all of them alike and
    // their ratio (the scoring overhead) stays meaningful.
    struct Run {
      std::string policy;
      nlohmann::json row;
      std::unique_ptr<ekva::PagedKvStore> store;
      std::vector<std::unique_ptr<ekva::KvCache>> caches;
      std::unique_ptr<ekva::Activations> act;
      std::vector<int32_t> next;
      std::mt19937 token_rng;
      std::vector<double> step_s;
      size_t weight_bytes = 0, kv_bytes = 0, kv_held = 0;
    };
    nlohmann::json rows = nlohmann::json::array();
    const auto vocab = static_cast<uint32_t>(c.vocab_size);
    for (const std::string& budget : budgets) {
      const ekva::BudgetSpec spec = ekva::BudgetSpec::parse(budget);
      const bool full = spec.unit == ekva::BudgetSpec::Unit::kFraction && spec.value == 1.0;
      const std::vector<std::string> row_policies =
          full ? std::vector<std::string>{"full"} : policies;
      for (const int B : batches) {
        // What the caches will hold; a compressed row needs the full cache of one
        // sequence at a time only while it is being replayed.
        const double per_policy = full ? static_cast<double>(full_bytes_per_seq) * B
                                       : static_cast<double>(full_bytes_per_seq) * spec.value * B;
        const double need = per_policy * static_cast<double>(row_policies.size()) +
                            (full ? 0.0 : static_cast<double>(full_bytes_per_seq));
        const double avail = static_cast<double>(available_memory());
        std::vector<Run> runs;
        for (const std::string& policy : row_policies) {
          Run r;
          r.policy = policy;
          r.row = {{"batch", B},
                   {"budget", budget},
                   {"context", context},
                   {"method", full ? "full" : allocator + ":" + policy}};
          if (avail > 0 && need > 0.8 * avail) {
            fmt::print(
                "batch {:3d} {:>5} {:>7} not run: the caches need {:.1f} GB, {:.1f} GB available\n",
                B, budget, policy, need / 1e9, avail / 1e9);
            r.row["not_run"] =
                fmt::format("caches need {:.1f} GB, {:.1f} GB available", need / 1e9, avail / 1e9);
            rows.push_back(r.row);
            continue;
          }
          ekva::CompressionConfig cc;
          cc.policy = policy;
          cc.allocator = allocator;
          cc.budget = spec;
          cc.kv_dtype = kv_dtype;
          if (!full)
            r.store = std::make_unique<ekva::PagedKvStore>(
                ekva::store_config_for(c, cc, c.max_position_embeddings));
          for (int i = 0; i < B; ++i) {
            if (full)
              r.caches.push_back(std::make_unique<ekva::FullKvCache>(
                  ekva::kv_cache_shape(c), context + steps + 2, kv_dtype));
            else
              r.caches.push_back(
                  std::make_unique<ekva::CompressedKvCache>(*r.store, c, cc, backend));
            rec.replay(*r.caches.back());
          }
          for (const auto& cache : r.caches) r.kv_held += cache->bytes_used();
          r.act = std::make_unique<ekva::Activations>(
              c, backend, ekva::ForwardLimits{.max_sequences = B, .max_tokens = B});
          // Every sequence decodes its own token stream, drawn at random (seeded, the
          // same for every policy): the caches are replays of one prompt, and identical
          // tokens would route every sequence to the same experts, so a batch would read
          // only top-k experts' weights per layer instead of what a real batch of
          // different requests reads.
          r.next.resize(static_cast<size_t>(B));
          r.token_rng.seed(static_cast<uint32_t>(B));
          runs.push_back(std::move(r));
        }
        std::vector<ekva::SequenceStep> batch(static_cast<size_t>(B));
        for (int s = 0; s <= steps; ++s) {  // step 0 warms up
          for (Run& r : runs) {
            if (s == 0)
              for (auto& t : r.next) t = static_cast<int32_t>(r.token_rng() % vocab);
            for (int i = 0; i < B; ++i)
              batch[static_cast<size_t>(i)] = {r.caches[static_cast<size_t>(i)].get(),
                                               {&r.next[static_cast<size_t>(i)], 1}};
            const bool profiled = !op_profile.empty() && s > 0;
            if (profiled)
              profiler.begin_step(fmt::format("decode b{} {} {}", B, budget, r.policy), B, B);
            const auto a = std::chrono::steady_clock::now();
            const ekva::ForwardCounters counters = model->forward(
                batch, *r.act, profiled ? static_cast<ekva::Backend&>(profiler) : backend);
            const double dt =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
            if (profiled) profiler.end_step();
            for (auto& t : r.next) t = static_cast<int32_t>(r.token_rng() % vocab);
            if (s == 0) continue;
            r.step_s.push_back(dt);
            r.weight_bytes += counters.weight_bytes;
            r.kv_bytes += counters.kv_bytes;
          }
        }
        for (Run& r : runs) {
          const double med = ekva::median(r.step_s);
          const double lo = *std::min_element(r.step_s.begin(), r.step_s.end());
          const double hi = *std::max_element(r.step_s.begin(), r.step_s.end());
          const double bytes = static_cast<double>(r.weight_bytes + r.kv_bytes) / steps;
          r.row["step_ms_median"] = med * 1e3;
          r.row["step_ms_range"] = {lo * 1e3, hi * 1e3};
          std::vector<double> ms(r.step_s.size());
          std::transform(r.step_s.begin(), r.step_s.end(), ms.begin(),
                         [](double t) { return t * 1e3; });
          r.row["step_ms_all"] = ms;
          r.row["tokens_per_s"] = B / med;
          r.row["bytes_per_step"] = bytes;
          r.row["weight_bytes_per_step"] = static_cast<double>(r.weight_bytes) / steps;
          r.row["kv_bytes_per_step"] = static_cast<double>(r.kv_bytes) / steps;
          r.row["read_gb_per_s"] = bytes / med / 1e9;
          r.row["kv_bytes_held"] = r.kv_held;
          fmt::print(
              "batch {:3d} {:>5} {:>7} step {:7.1f} ms ({:.1f}-{:.1f}) | {:7.1f} tok/s | {:7.1f} "
              "MB read per step "
              "({:.1f} weights + {:.1f} KV) = {:.1f} GB/s | KV held {:.1f} MB\n",
              B, budget, r.policy, med * 1e3, lo * 1e3, hi * 1e3, B / med, bytes / 1e6,
              static_cast<double>(r.weight_bytes) / steps / 1e6,
              static_cast<double>(r.kv_bytes) / steps / 1e6, bytes / med / 1e9,
              static_cast<double>(r.kv_held) / 1e6);
          rows.push_back(r.row);
        }
      }
    }
    // Speed-up of each batch over batch 1 at the same budget.
    for (auto& row : rows) {
      if (!row.contains("tokens_per_s")) continue;
      for (const auto& base : rows)
        if (base.value("batch", 0) == 1 && base["budget"] == row["budget"] &&
            base["method"] == row["method"] && base.contains("tokens_per_s"))
          row["speedup_over_batch_1"] =
              row["tokens_per_s"].get<double>() / base["tokens_per_s"].get<double>();
      // Scoring overhead: the step against the first policy's at the same batch and budget.
      for (const auto& base : rows)
        if (row["method"] != "full" && base["method"] == allocator + ":" + policies.front() &&
            base["batch"] == row["batch"] && base["budget"] == row["budget"] &&
            base.contains("step_ms_median") && row["method"] != base["method"])
          row["overhead_pct_vs_" + policies.front()] =
              100.0 *
              (row["step_ms_median"].get<double>() / base["step_ms_median"].get<double>() - 1.0);
    }
    if (!json_out.empty()) {
      nlohmann::json j;
      j["benchmark"] = "cpu_batch_decode";
      j["commit"] = commit;
      j["date"] = ekva::utc_timestamp();
      j["device"] = ekva::cpu_description(backend.pool().size());
      j["model"] = {{"dir", model_dir},
                    {"architecture", c.arch_name},
                    {"weight_bytes", model->tensors().total_bytes()},
                    {"active_weight_bytes_per_token", model->active_weight_bytes_per_token()}};
      j["kv_dtype"] = kv_dtype_name;
      j["prefill"] = {{"tokens", context}, {"seconds", prefill_s}};
      j["rows"] = rows;
      std::ofstream(json_out) << j.dump(2) << "\n";
      fmt::print("wrote {}\n", json_out);
    }
    if (!op_profile.empty()) {
      nlohmann::json j = profiler.profile().to_json();
      j["run"] = {{"command", "ekva_bench_batch_decode"},
                  {"model", model_dir},
                  {"context", context},
                  {"batches", batches},
                  {"budgets", budgets},
                  {"steps", steps}};
      std::ofstream(op_profile) << j.dump(1) << "\n";
      fmt::print("wrote {}\n", op_profile);
    }
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_batch_decode: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
