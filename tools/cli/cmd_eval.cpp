// `ekva eval`: a grid of (allocator, policy, budget) on the evaluation sets, with
// the full cache as the reference row: retrieval accuracy (pass-key and multi-key
// prompts, greedy answers, exact match) and perplexity of a continuation after a
// long compressed context. Output: a table on the terminal, markdown, JSON.
//
// The prompt's prefill is the same for every method (compression starts after
// it), so it runs once per prompt with the full cache while its K, V, queries and
// router tags are recorded; each method's cache is then fed that recording through
// the same KvCache calls a forward pass makes, and decodes on its own from there.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/cpu_backend.h"
#include "kv/compressed_cache.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "runtime/prefill_recording.h"

namespace ekva::cli {
namespace {

using nlohmann::json;

struct EvalArgs {
  std::string model_dir;
  std::string profile;
  std::string retrieval = "data/evalsets/retrieval.jsonl";
  std::string ppl = "data/evalsets/ppl.jsonl";
  std::vector<std::string> methods = {
      "uniform:snapkv",      "pyramidkv:snapkv", "adakv:snapkv",
      "ekva-entropy:snapkv", "ekva-mass:snapkv", "uniform:streamingllm",
      "uniform:h2o",         "uniform:knorm",    "uniform:random"};
  std::vector<std::string> budgets = {"5%", "10%"};
  std::vector<int> contexts = {2048, 4096};
  int max_retrieval = 0;  // per context; 0: all
  int ppl_context = 4096;
  int ppl_continuation = 512;
  int max_ppl = 0;  // 0: all documents of ppl_context
  int threads = 0;
  // Stored K/V of every method, the full reference included: the methods then differ
  // from the reference only by what they evict, not by rounding.
  std::string kv_dtype = "bf16";
  std::string compress_per_layer = "on";  // CompressionConfig::per_layer
  std::string json_out, markdown_out;
};

int32_t argmax(std::span<const float> x) {
  return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
}

double nll(std::span<const float> logits, int32_t target) {
  const float m = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x - m));
  return std::log(sum) + m - logits[static_cast<size_t>(target)];
}

struct Method {
  std::string name;  // "full" or "allocator:policy@budget"
  std::optional<CompressionConfig> config;
};

struct Tally {
  std::map<int, std::pair<int, int>> retrieval;  // context -> (correct, total)
  double nll_sum = 0;
  int64_t nll_count = 0;
  double kv_bytes_sum = 0, full_bytes_sum = 0;  // after the prompt, per prompt
  int64_t prompts = 0;                          // retrieval prompts and perplexity contexts
  double seconds = 0;

  // The KV bytes a cache holds right after a prompt of `tokens` tokens, and what the
  // full cache would hold.
  void add_prompt(const KvCache& cache, int64_t tokens, const KvModelShape& shape, DType kv_dtype) {
    kv_bytes_sum += static_cast<double>(cache.bytes_used());
    full_bytes_sum += static_cast<double>(tokens) * shape.n_layers * shape.n_kv_heads * 2 *
                      shape.head_dim * dtype_size(kv_dtype);
    ++prompts;
  }
};

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::vector<json> out;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      fail("{}:{}: not valid JSON: {}", path, n, e.what());
    }
  }
  return out;
}

// One cache for a method: the full cache, or a compressed one.
std::unique_ptr<KvCache> make_cache(const Method& m, const KvModelShape& shape, int64_t context,
                                    DType kv_dtype, Backend& backend) {
  if (!m.config)
    return std::make_unique<FullKvCache>(KvShape{shape.n_layers, shape.n_kv_heads, shape.head_dim},
                                         context, kv_dtype);
  return std::make_unique<CompressedKvCache>(shape, *m.config, context, backend);
}

// A measured figure, or a dash for one that was not measured (no prompt of that
// context, no perplexity documents): never "nan".
std::string figure(double value, const char* format) {
  return std::isfinite(value) ? fmt::format(fmt::runtime(format), value) : std::string("–");
}
json figure_json(double value) { return std::isfinite(value) ? json(value) : json(nullptr); }

void run_eval(const EvalArgs& a) {
  CpuBackend backend(a.threads);
  const auto model = Model::load(a.model_dir);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);
  const ModelConfig& c = model->config();
  const KvModelShape shape = kv_shape_of(c);
  const DType kv_dtype = a.kv_dtype == "f32" ? DType::kF32 : DType::kBF16;  // checked by the option
  std::optional<CalibrationProfile> profile;
  if (!a.profile.empty()) profile = CalibrationProfile::load(a.profile, shape);
  // The shortest context a method will run with: budgets are validated there now,
  // not after the first prompts (a fraction must hold the protected entries).
  int64_t probe_context = 0;
  const auto shortest = [&](int64_t ctx) {
    probe_context = probe_context == 0 ? ctx : std::min(probe_context, ctx);
  };
  if (!a.retrieval.empty())
    for (int ctx : a.contexts) shortest(ctx);
  if (!a.ppl.empty()) shortest(a.ppl_context);
  if (probe_context <= 0) probe_context = 64;

  std::vector<Method> methods = {{"full", std::nullopt}};
  for (const std::string& budget : a.budgets) {
    for (const std::string& m : a.methods) {
      const auto colon = m.find(':');
      if (colon == std::string::npos) fail("--methods: '{}' is not allocator:policy", m);
      CompressionConfig cfg;
      cfg.allocator = m.substr(0, colon);
      cfg.policy = m.substr(colon + 1);
      cfg.budget = BudgetSpec::parse(budget);
      cfg.profile = profile ? &*profile : nullptr;
      cfg.kv_dtype = kv_dtype;
      cfg.per_layer = a.compress_per_layer == "on";  // checked by the option
      CompressedKvCache probe(shape, cfg, probe_context,
                              backend);  // validates names, profile, budget now
      methods.push_back({fmt::format("{}@{}", m, budget), cfg});
    }
  }
  std::vector<Tally> tally(methods.size());
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const auto t_start = std::chrono::steady_clock::now();

  // Retrieval: greedy answers after the compressed prompt.
  std::vector<json> prompts;
  if (!a.retrieval.empty()) {
    std::map<int, int> taken;
    for (json& p : read_jsonl(a.retrieval)) {
      const int ctx = p.at("context").get<int>();
      if (std::find(a.contexts.begin(), a.contexts.end(), ctx) == a.contexts.end()) continue;
      if (a.max_retrieval > 0 && taken[ctx] >= a.max_retrieval) continue;
      ++taken[ctx];
      prompts.push_back(std::move(p));
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const json& p = prompts[i];
    const int ctx = p.at("context").get<int>();
    const auto tokens = tokenizer.encode(p.at("prompt").get<std::string>());
    const auto answer = p.at("answer_tokens").get<std::vector<int32_t>>();
    const int64_t context = static_cast<int64_t>(tokens.size() + answer.size()) + 1;
    const PrefillRecording rec = PrefillRecording::record(*model, tokens, backend, kv_dtype);
    for (size_t mi = 0; mi < methods.size(); ++mi) {
      const auto t0 = std::chrono::steady_clock::now();
      auto cache = make_cache(methods[mi], shape, context, kv_dtype, backend);
      rec.replay(*cache);
      Tally& t = tally[mi];
      t.add_prompt(*cache, static_cast<int64_t>(tokens.size()), shape, kv_dtype);
      std::vector<float> logits = rec.last_logits;
      bool correct = true;
      for (size_t j = 0; j < answer.size(); ++j) {
        const int32_t next = argmax(logits);
        if (next != answer[j]) {
          correct = false;
          break;
        }
        if (j + 1 < answer.size()) model->forward({&next, 1}, *cache, logits, false, backend);
      }
      auto& [ok, n] = t.retrieval[ctx];
      ok += correct;
      ++n;
      t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    const double el =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    fmt::print(stderr, "{}retrieval {}/{} ({} tokens) {:.0f} s{}", tty ? "\r" : "", i + 1,
               prompts.size(), tokens.size(), el, tty ? "   " : "\n");
  }

  // Perplexity of a continuation after a compressed long context.
  std::vector<json> docs;
  if (!a.ppl.empty()) {
    for (json& d : read_jsonl(a.ppl)) {
      if (d.at("context").get<int>() != a.ppl_context) continue;
      if (a.max_ppl > 0 && static_cast<int>(docs.size()) >= a.max_ppl) break;
      docs.push_back(std::move(d));
    }
  }
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto tokens = docs[i].at("tokens").get<std::vector<int32_t>>();
    if (static_cast<int>(tokens.size()) <= a.ppl_continuation)
      fail("--ppl-continuation {} leaves no context in a {}-token document", a.ppl_continuation,
           tokens.size());
    const auto prefix = static_cast<int64_t>(tokens.size()) - a.ppl_continuation;
    const PrefillRecording rec = PrefillRecording::record(
        *model, std::span(tokens).first(static_cast<size_t>(prefix)), backend, kv_dtype);
    for (size_t mi = 0; mi < methods.size(); ++mi) {
      const auto t0 = std::chrono::steady_clock::now();
      auto cache =
          make_cache(methods[mi], shape, static_cast<int64_t>(tokens.size()), kv_dtype, backend);
      rec.replay(*cache);
      std::vector<float> logits = rec.last_logits;
      Tally& t = tally[mi];
      t.add_prompt(*cache, prefix, shape, kv_dtype);  // the compressed context is a prompt too
      for (int64_t pos = prefix; pos < static_cast<int64_t>(tokens.size()); ++pos) {
        t.nll_sum += nll(logits, tokens[static_cast<size_t>(pos)]);
        ++t.nll_count;
        if (pos + 1 < static_cast<int64_t>(tokens.size()))
          model->forward(std::span(tokens).subspan(static_cast<size_t>(pos), 1), *cache, logits,
                         false, backend);
      }
      t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    const double el =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    fmt::print(stderr, "{}perplexity {}/{} {:.0f} s{}", tty ? "\r" : "", i + 1, docs.size(), el,
               tty ? "   " : "\n");
  }
  if (tty) fmt::print(stderr, "\n");

  // Report.
  const Tally& full = tally[0];
  const double full_ppl =
      full.nll_count ? std::exp(full.nll_sum / static_cast<double>(full.nll_count)) : NAN;
  json rows = json::array();
  std::ostringstream md;
  md << "| method | budget | KV after prompt | ";
  for (int ctx : a.contexts) md << "retrieval@" << ctx << " | ";
  md << "ppl@" << a.ppl_context << " | Δppl |\n|---|---|---|";
  for (size_t i = 0; i < a.contexts.size(); ++i) md << "---|";
  md << "---|---|\n";
  for (size_t mi = 0; mi < methods.size(); ++mi) {
    const Tally& t = tally[mi];
    const std::string& name = methods[mi].name;
    const auto at = name.find('@');
    const std::string method = name.substr(0, at);
    const std::string budget = at == std::string::npos ? "100%" : name.substr(at + 1);
    const double kv_frac = t.full_bytes_sum > 0 ? t.kv_bytes_sum / t.full_bytes_sum : NAN;
    const double ppl = t.nll_count ? std::exp(t.nll_sum / static_cast<double>(t.nll_count)) : NAN;
    const double delta = 100.0 * (ppl / full_ppl - 1.0);
    json row = {{"method", method},
                {"budget", budget},
                {"kv_fraction_after_prompt", figure_json(kv_frac)},
                {"kv_bytes_after_prompt_mean",
                 t.prompts ? json(t.kv_bytes_sum / static_cast<double>(t.prompts)) : json(nullptr)},
                {"perplexity", figure_json(ppl)},
                {"perplexity_delta_pct", figure_json(delta)},
                {"seconds", t.seconds}};
    md << "| " << method << " | " << budget << " | " << figure(100 * kv_frac, "{:.1f}%") << " | ";
    for (int ctx : a.contexts) {
      const auto it = t.retrieval.find(ctx);
      const double acc = it == t.retrieval.end() || it->second.second == 0
                             ? NAN
                             : 100.0 * it->second.first / it->second.second;
      row["retrieval"][std::to_string(ctx)] = {
          {"accuracy_pct", figure_json(acc)},
          {"n", it == t.retrieval.end() ? 0 : it->second.second}};
      md << figure(acc, "{:.1f}%") << " | ";
    }
    md << figure(ppl, "{:.3f}") << " | " << figure(delta, "{:+.2f}%") << " |\n";
    rows.push_back(row);
  }
  fmt::print("{}", md.str());
  if (!a.markdown_out.empty()) std::ofstream(a.markdown_out) << md.str();
  if (!a.json_out.empty()) {
    json j = {{"model", a.model_dir},
              {"profile", a.profile},
              {"kv_dtype", a.kv_dtype},
              {"compress_per_layer", a.compress_per_layer},
              {"retrieval_prompts_per_context", a.max_retrieval},
              {"retrieval_contexts", a.contexts},
              {"ppl_context", a.ppl_context},
              {"ppl_continuation", a.ppl_continuation},
              {"ppl_documents", docs.size()},
              {"retrieval_prompts", prompts.size()},
              {"rows", rows}};
    std::ofstream(a.json_out) << j.dump(2) << "\n";
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Compare KV compression methods on the evaluation sets");
  cmd->add_option("-m,--model", args->model_dir, "Model directory")->required();
  cmd->add_option("--profile", args->profile,
                  "Calibration profile (needed by the EKVA allocators)");
  cmd->add_option("--retrieval", args->retrieval, "Retrieval prompts (JSONL; empty: skip)")
      ->capture_default_str();
  cmd->add_option("--ppl", args->ppl, "Perplexity documents (JSONL; empty: skip)")
      ->capture_default_str();
  cmd->add_option("--methods", args->methods, "allocator:policy pairs")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--budgets", args->budgets, "Budgets (10%, 2048, 64MiB)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--contexts", args->contexts, "Retrieval context lengths")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--max-retrieval", args->max_retrieval, "Prompts per context (0: all)");
  cmd->add_option("--ppl-context", args->ppl_context, "Documents of this context length")
      ->capture_default_str();
  cmd->add_option("--ppl-continuation", args->ppl_continuation,
                  "Tokens scored after the compressed context")
      ->capture_default_str();
  cmd->add_option("--max-ppl", args->max_ppl, "Documents (0: all)");
  cmd->add_option("-t,--threads", args->threads, "Threads (0 = one per core)");
  cmd->add_option("--kv-dtype", args->kv_dtype,
                  "Stored K/V of every method and the full reference: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  cmd->add_option("--compress-per-layer", args->compress_per_layer,
                  "Compress the prompt layer by layer (on) or after the last layer (off)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd->add_option("--json-out", args->json_out, "Write the results as JSON");
  cmd->add_option("--markdown-out", args->markdown_out, "Write the table as markdown");
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace ekva::cli
