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
// memory available are reported as not run, with the bytes they would need.
//
//   ekva_bench_batch_decode -m DIR [--context 4096 --batches 1,4,16,64 --budgets 100%,10%]
//                           [--steps 6] [--json-out FILE]
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
  CLI11_PARSE(app, argc, argv);
  const ekva::DType kv_dtype = kv_dtype_name == "bf16" ? ekva::DType::kBF16 : ekva::DType::kF32;

  try {
    ekva::CpuBackend backend(threads);
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
    const ekva::PrefillRecording rec = ekva::PrefillRecording::record(*model, prompt, backend);
    const double prefill_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("prefill          {} tokens in {:.1f} s ({:.1f} tok/s), recorded once\n", context,
               prefill_s, static_cast<double>(context) / prefill_s);
    const size_t full_bytes_per_seq = static_cast<size_t>(context + steps + 2) * c.n_layers *
                                      c.n_kv_heads * 2 * c.head_dim * ekva::dtype_size(kv_dtype);

    nlohmann::json rows = nlohmann::json::array();
    for (const std::string& budget : budgets) {
      const ekva::BudgetSpec spec = ekva::BudgetSpec::parse(budget);
      const bool full = spec.unit == ekva::BudgetSpec::Unit::kFraction && spec.value == 1.0;
      for (const std::string& policy : full ? std::vector<std::string>{"full"} : policies) {
        ekva::CompressionConfig cc;
        cc.policy = policy;
        cc.allocator = allocator;
        cc.budget = spec;
        cc.kv_dtype = kv_dtype;
        for (const int B : batches) {
          nlohmann::json row = {{"batch", B},
                                {"budget", budget},
                                {"context", context},
                                {"method", full ? "full" : allocator + ":" + policy}};
          // What the caches will hold; a compressed row needs the full cache of one
          // sequence at a time only while it is being replayed.
          const double need = full ? static_cast<double>(full_bytes_per_seq) * B
                                   : static_cast<double>(full_bytes_per_seq) * (spec.value * B + 1);
          const double avail = static_cast<double>(available_memory());
          if (avail > 0 && need > 0.8 * avail) {
            fmt::print(
                "batch {:3d} {:>5}  not run: the caches need {:.1f} GB, {:.1f} GB available\n", B,
                budget, need / 1e9, avail / 1e9);
            row["not_run"] =
                fmt::format("caches need {:.1f} GB, {:.1f} GB available", need / 1e9, avail / 1e9);
            rows.push_back(row);
            continue;
          }
          std::unique_ptr<ekva::PagedKvStore> store;
          if (!full)
            store = std::make_unique<ekva::PagedKvStore>(
                ekva::store_config_for(c, cc, c.max_position_embeddings));
          std::vector<std::unique_ptr<ekva::KvCache>> caches;
          for (int i = 0; i < B; ++i) {
            if (full)
              caches.push_back(std::make_unique<ekva::FullKvCache>(
                  ekva::KvShape{c.n_layers, c.n_kv_heads, c.head_dim}, context + steps + 2,
                  kv_dtype));
            else
              caches.push_back(std::make_unique<ekva::CompressedKvCache>(*store, c, cc, backend));
            rec.replay(*caches.back());
          }
          size_t kv_held = 0;
          for (const auto& cache : caches) kv_held += cache->bytes_used();

          ekva::Activations act(c, backend, {.max_sequences = B, .max_tokens = B});
          std::vector<int32_t> next(static_cast<size_t>(B));
          const auto vocab = static_cast<size_t>(c.vocab_size);
          // Every sequence decodes its own token stream, drawn at random (seeded): the
          // caches are replays of one prompt, and identical tokens would route every
          // sequence to the same experts, so a batch would read only top-k experts'
          // weights per layer instead of what a real batch of different requests reads.
          std::mt19937 token_rng(static_cast<uint32_t>(B));
          const auto draw_all = [&] {
            for (auto& t : next)
              t = static_cast<int32_t>(token_rng() % static_cast<uint32_t>(vocab));
          };
          std::vector<ekva::SequenceStep> batch(static_cast<size_t>(B));
          draw_all();
          std::vector<double> step_s;
          size_t bytes = 0, weight_bytes = 0, kv_bytes = 0;
          for (int s = 0; s <= steps; ++s) {  // step 0 warms up
            for (int i = 0; i < B; ++i)
              batch[static_cast<size_t>(i)] = {caches[static_cast<size_t>(i)].get(),
                                               {&next[static_cast<size_t>(i)], 1}};
            const auto a = std::chrono::steady_clock::now();
            const ekva::ForwardCounters counters = model->forward(batch, act, backend);
            const double dt =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
            draw_all();
            if (s == 0) continue;
            step_s.push_back(dt);
            bytes += counters.weight_bytes + counters.kv_bytes;
            weight_bytes += counters.weight_bytes;
            kv_bytes += counters.kv_bytes;
          }
          const double med = ekva::median(step_s);
          const double lo = *std::min_element(step_s.begin(), step_s.end());
          const double hi = *std::max_element(step_s.begin(), step_s.end());
          row["step_ms_median"] = med * 1e3;
          row["step_ms_range"] = {lo * 1e3, hi * 1e3};
          row["tokens_per_s"] = B / med;
          row["bytes_per_step"] = static_cast<double>(bytes) / steps;
          row["weight_bytes_per_step"] = static_cast<double>(weight_bytes) / steps;
          row["kv_bytes_per_step"] = static_cast<double>(kv_bytes) / steps;
          row["read_gb_per_s"] = static_cast<double>(bytes) / steps / med / 1e9;
          row["kv_bytes_held"] = kv_held;
          fmt::print(
              "batch {:3d} {:>5} {:>7} step {:7.1f} ms ({:.1f}-{:.1f}) | {:7.1f} tok/s | {:7.1f} "
              "MB read per step "
              "({:.1f} weights + {:.1f} KV) = {:.1f} GB/s | KV held {:.1f} MB\n",
              B, budget, policy, med * 1e3, lo * 1e3, hi * 1e3, B / med,
              static_cast<double>(bytes) / steps / 1e6,
              static_cast<double>(weight_bytes) / steps / 1e6,
              static_cast<double>(kv_bytes) / steps / 1e6,
              static_cast<double>(bytes) / steps / med / 1e9, static_cast<double>(kv_held) / 1e6);
          rows.push_back(row);
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
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_batch_decode: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
