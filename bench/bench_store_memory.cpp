// Store memory of a long prompt compressed layer by layer during the prefill
// (CompressionConfig::per_layer on) against after its last layer (off).
//
// One prompt (the 4096-token pass-key prompt by default) is prefilled once and
// recorded; the recording is replayed into a compressed cache of each allocator,
// with SnapKV, per_layer on and off: the same calls a real prefill makes (append,
// observe_queries, tag, end_layer per layer, then end_forward). For each the store
// reports the most bytes it held at once during the prefill (peak), what it holds
// after the compression (post), the live entries' K/V and the ratio held / live,
// against the bytes the uncompressed prompt takes in the same store (full). Then
// per allocator, per_layer on against off: whether the same entries survive in
// every (layer, kv-head), how much of the budget moved between layers, the share of
// the observation window's attention mass the survivors hold, the next decode
// step's logits, and the greedy retrieval accuracy over the evaluation prompts of
// one context (data/evalsets/retrieval.jsonl.xz). Store accounting only: the figures
// do not depend on the machine.
//
//   ekva_bench_store_memory -m DIR --profile FILE [--budget 10%] [--prompt-id ID]
//                           [--retrieval-context 4096] [--max-retrieval 0]
//                           [--retrieval-allocators ekva-mass] [--json-out FILE]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/xz_file.h"
#include "cpu/cpu_backend.h"
#include "kv/compressed_cache.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "roofline/report.h"
#include "runtime/prefill_recording.h"

namespace {

using ekva::CompressedKvCache;
using ekva::CompressionConfig;

struct Prompt {
  std::string id;
  std::vector<int32_t> tokens;
  std::vector<int32_t> answer;
};

// What one compressed prefill left.
struct Outcome {
  nlohmann::json row;
  // [layer * n_kv_heads + kv_head]: positions of the surviving entries, ascending.
  std::vector<std::vector<int32_t>> positions;
  std::vector<int64_t> layer_budgets;  // [layer] evictable entries allocated
  std::vector<float> next_logits;      // after one greedy decode step
};

int32_t argmax(std::span<const float> x) {
  return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
}

Outcome measure(const ekva::Model& model, const ekva::PrefillRecording& rec,
                const CompressionConfig& cfg, ekva::Backend& backend) {
  const ekva::ModelConfig& c = model.config();
  const auto T = static_cast<int64_t>(rec.positions.size());
  CompressedKvCache cache(ekva::kv_shape_of(c), cfg, T + 2, backend);
  cache.store().reset_peak();
  rec.replay(cache);
  const ekva::CompressionStats st = cache.stats();
  ekva::PagedKvStore& store = cache.store();

  Outcome out;
  // Attention mass the survivors hold: every scored query row (the observation
  // window's queries, each query head of a kv-head's group) sums to 1 over its keys.
  double mass = 0;
  std::vector<ekva::EntryRun> runs;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      runs.clear();
      store.view_runs(cache.sequence(), l, h, runs);
      auto& kept = out.positions.emplace_back();
      for (const ekva::EntryRun& r : runs) {
        kept.insert(kept.end(), r.positions, r.positions + r.n);
        for (int64_t i = 0; i < r.n; ++i) mass += r.scores[i];
      }
      std::sort(kept.begin(), kept.end());
    }
  }
  const double rows = static_cast<double>(std::min<int64_t>(T, cfg.observation_window)) *
                      (c.n_heads / c.n_kv_heads) * c.n_kv_heads * c.n_layers;
  for (const auto& layer : cache.budgets()) {
    int64_t sum = 0;
    for (int64_t b : layer) sum += std::max<int64_t>(0, b);
    out.layer_budgets.push_back(sum);
  }
  // Bytes the uncompressed prompt takes in this store: whole blocks per (layer, kv-head).
  const int64_t B = store.config().block_size;
  const size_t full =
      static_cast<size_t>((T + B - 1) / B * c.n_layers * c.n_kv_heads) * store.block_bytes();
  const size_t peak = store.peak_reserved_bytes();
  out.row = {
      {"allocator", cfg.allocator},
      {"per_layer", cfg.per_layer},
      {"peak_held_bytes", peak},
      {"peak_mapped_bytes", store.arena().peak_reserved_bytes()},
      {"post_held_bytes", st.bytes.reserved},
      {"post_mapped_bytes", store.arena().reserved_bytes()},
      {"live_bytes", st.bytes.kv},
      {"live_entries", st.live_entries},
      {"held_over_live", static_cast<double>(st.bytes.reserved) / static_cast<double>(st.bytes.kv)},
      {"full_bytes", full},
      {"peak_over_full", static_cast<double>(peak) / static_cast<double>(full)},
      {"mass_kept", mass / rows},
      {"layer_budgets", out.layer_budgets}};

  std::vector<float> logits;
  const int32_t next = argmax(rec.last_logits);
  model.forward({&next, 1}, cache, logits, false, backend);
  out.next_logits = std::move(logits);
  return out;
}

// Greedy answer after the compressed prompt: every answer token right.
bool retrieves(const ekva::Model& model, const ekva::PrefillRecording& rec, const Prompt& p,
               const CompressionConfig& cfg, ekva::Backend& backend) {
  const int64_t context = static_cast<int64_t>(p.tokens.size() + p.answer.size()) + 1;
  CompressedKvCache cache(ekva::kv_shape_of(model.config()), cfg, context, backend);
  rec.replay(cache);
  std::vector<float> logits = rec.last_logits;
  for (size_t j = 0; j < p.answer.size(); ++j) {
    const int32_t next = argmax(logits);
    if (next != p.answer[j]) return false;
    if (j + 1 < p.answer.size()) model.forward({&next, 1}, cache, logits, false, backend);
  }
  return true;
}

double rel_error(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines show as they come, even in a log
  CLI::App app{"EKVA store memory: a long prefill compressed per layer against after the last"};
  std::string model_dir, profile_path, json_out, commit = "unknown", budget = "10%", produced_by;
  std::string retrieval = "data/evalsets/retrieval.jsonl.xz", prompt_id = "passkey-4096-d0.1-s0";
  std::vector<std::string> allocators = {"uniform", "pyramidkv", "adakv", "ekva-entropy",
                                         "ekva-mass"};
  // Retrieval only where per_layer on can differ from off (the others keep the same
  // entries, which the comparison above checks).
  std::vector<std::string> retrieval_allocators = {"ekva-mass"};
  int retrieval_context = 4096, max_retrieval = 0, threads = 0;
  app.add_option("-m,--model", model_dir, "Model directory")->required();
  app.add_option("--profile", profile_path, "Calibration profile (the EKVA allocators)");
  app.add_option("--retrieval", retrieval, "Evaluation prompts (JSONL, or JSONL.xz)")
      ->capture_default_str();
  app.add_option("--prompt-id", prompt_id, "The prompt whose memory is measured")
      ->capture_default_str();
  app.add_option("--budget", budget, "KV budget")->capture_default_str();
  app.add_option("--allocators", allocators, "Allocators (with SnapKV)")->delimiter(',');
  app.add_option("--retrieval-context", retrieval_context,
                 "Retrieval accuracy over the prompts of this context (0: skip)")
      ->capture_default_str();
  app.add_option("--max-retrieval", max_retrieval, "Retrieval prompts (0: all of the context)");
  app.add_option("--retrieval-allocators", retrieval_allocators,
                 "Allocators whose retrieval accuracy is measured")
      ->delimiter(',');
  app.add_option("-t,--threads", threads, "Threads (0 = one per core)");
  app.add_option("--commit", commit, "Commit recorded in the JSON");
  app.add_option("--produced-by", produced_by, "The command line recorded in the JSON");
  app.add_option("--json-out", json_out, "Write the figures as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    ekva::CpuBackend backend(threads);
    const auto model = ekva::Model::load(model_dir);
    const ekva::Tokenizer tokenizer = ekva::Tokenizer::from_model_dir(model_dir);
    const ekva::ModelConfig& c = model->config();
    std::optional<ekva::CalibrationProfile> profile;
    if (!profile_path.empty())
      profile = ekva::CalibrationProfile::load(profile_path, ekva::kv_shape_of(c));
    const auto config = [&](const std::string& allocator, bool per_layer) {
      CompressionConfig cfg;
      cfg.allocator = allocator;
      cfg.policy = "snapkv";
      cfg.budget = ekva::BudgetSpec::parse(budget);
      cfg.profile = profile ? &*profile : nullptr;
      cfg.per_layer = per_layer;
      return cfg;
    };

    std::optional<Prompt> measured;
    std::vector<Prompt> prompts;
    std::istringstream in(ekva::read_text_file(retrieval));
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      const bool is_measured = j.at("id") == prompt_id;
      const bool for_retrieval = j.at("context").get<int>() == retrieval_context &&
                                 (max_retrieval == 0 || std::ssize(prompts) < max_retrieval);
      if (!is_measured && !for_retrieval) continue;
      Prompt p{j.at("id").get<std::string>(), tokenizer.encode(j.at("prompt").get<std::string>()),
               j.at("answer_tokens").get<std::vector<int32_t>>()};
      if (is_measured) measured = p;
      if (for_retrieval) prompts.push_back(std::move(p));
    }
    if (!measured) ekva::fail("{}: no prompt '{}'", retrieval, prompt_id);

    // Memory, and per_layer on against off, on the measured prompt.
    const ekva::PrefillRecording rec =
        ekva::PrefillRecording::record(*model, measured->tokens, backend, ekva::DType::kBF16);
    fmt::print("prompt {}: {} tokens, budget {}, snapkv\n", measured->id, measured->tokens.size(),
               budget);
    nlohmann::json rows = nlohmann::json::array(), comparison = nlohmann::json::array();
    for (const std::string& allocator : allocators) {
      const Outcome off = measure(*model, rec, config(allocator, false), backend);
      const Outcome on = measure(*model, rec, config(allocator, true), backend);
      for (const Outcome* o : {&off, &on}) {
        const nlohmann::json& r = o->row;
        fmt::print(
            "{:<13} per_layer {:<3}: peak {:>9} B ({:.3f} of full {}), post {:>8} B, live {:>8} "
            "B, held/live {:.3f}, mass kept {:.4f}\n",
            allocator, r["per_layer"].get<bool>() ? "on" : "off",
            r["peak_held_bytes"].get<size_t>(), r["peak_over_full"].get<double>(),
            r["full_bytes"].get<size_t>(), r["post_held_bytes"].get<size_t>(),
            r["live_bytes"].get<size_t>(), r["held_over_live"].get<double>(),
            r["mass_kept"].get<double>());
        rows.push_back(r);
      }
      int64_t moved = 0, total = 0;
      for (size_t l = 0; l < off.layer_budgets.size(); ++l) {
        moved += std::abs(on.layer_budgets[l] - off.layer_budgets[l]);
        total += off.layer_budgets[l];
      }
      int64_t heads_equal = 0;
      for (size_t i = 0; i < off.positions.size(); ++i)
        heads_equal += on.positions[i] == off.positions[i];
      const double logit_error = rel_error(on.next_logits, off.next_logits);
      const double moved_fraction =
          total > 0 ? static_cast<double>(moved) / 2.0 / static_cast<double>(total) : 0.0;
      fmt::print(
          "{:<13} on vs off: {}/{} (layer, kv-head) lists identical, {:.4f} of the budget moved "
          "between layers, next-step logits rel. error {:.2e}\n",
          allocator, heads_equal, off.positions.size(), moved_fraction, logit_error);
      comparison.push_back({{"allocator", allocator},
                            {"identical_lists", heads_equal},
                            {"lists", off.positions.size()},
                            {"budget_moved_fraction", moved_fraction},
                            {"mass_kept_on", on.row["mass_kept"]},
                            {"mass_kept_off", off.row["mass_kept"]},
                            {"next_logits_rel_error", logit_error}});
    }

    // Retrieval accuracy, per_layer on and off.
    std::map<std::pair<std::string, bool>, int> correct;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const Prompt& p = prompts[i];
      const ekva::PrefillRecording r =
          ekva::PrefillRecording::record(*model, p.tokens, backend, ekva::DType::kBF16);
      for (const std::string& allocator : retrieval_allocators)
        for (const bool per_layer : {false, true})
          correct[{allocator, per_layer}] +=
              retrieves(*model, r, p, config(allocator, per_layer), backend);
      fmt::print(stderr, "retrieval {}/{} ({})\n", i + 1, prompts.size(), p.id);
    }
    nlohmann::json retrieval_rows = nlohmann::json::array();
    for (const std::string& allocator : retrieval_allocators) {
      for (const bool per_layer : {false, true}) {
        const int ok = correct[{allocator, per_layer}];
        if (!prompts.empty())
          fmt::print("{:<13} per_layer {:<3}: retrieval {}/{} at {} tokens\n", allocator,
                     per_layer ? "on" : "off", ok, prompts.size(), retrieval_context);
        retrieval_rows.push_back({{"allocator", allocator},
                                  {"per_layer", per_layer},
                                  {"correct", ok},
                                  {"prompts", prompts.size()}});
      }
    }

    if (!json_out.empty()) {
      nlohmann::json j;
      j["benchmark"] = "store_memory_per_layer_prefill";
      j["commit"] = commit;
      j["date"] = ekva::utc_timestamp().substr(0, 10);
      j["device"] = "CPU (store accounting; machine-independent)";
      j["produced_by"] = produced_by;
      j["problem"] = fmt::format(
          "{}, {}-token prompt {} ({}), replayed into a compressed cache at {} with snapkv, bf16 "
          "K/V, block size {}; compressed layer by layer during the prefill (per_layer on) or "
          "after its last layer (off)",
          model_dir, measured->tokens.size(), measured->id, retrieval, budget,
          CompressionConfig{}.block_size);
      j["target"] =
          "held_over_live <= 1.10 for each allocator; peak held bytes much smaller than the full "
          "cache with per_layer on";
      j["fields"] =
          "peak_held_bytes: most bytes of blocks (K/V and cells) held at once during the "
          "prefill; peak_mapped_bytes: most arena slab bytes mapped; post_*: after the "
          "compression; live_bytes: the surviving entries' K/V; full_bytes: the uncompressed "
          "prompt in the same store; mass_kept: share of the observation window's attention "
          "mass on the surviving entries";
      j["rows"] = rows;
      j["per_layer_vs_end_of_forward"] = comparison;
      j["retrieval"] = {{"context", retrieval_context}, {"rows", retrieval_rows}};
      std::ofstream(json_out) << j.dump(2) << "\n";
      fmt::print("wrote {}\n", json_out);
    }
  } catch (const ekva::Error& e) {
    fmt::print(stderr, "ekva_bench_store_memory: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
