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

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "core/xz_file.h"
#include "cpu/cpu_backend.h"
#include "kv/compressed_cache.h"
#include "kv/profile.h"
#include "model/activations.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "ops/profiling_backend.h"
#include "runtime/calibration_run.h"
#include "runtime/prefill_recording.h"

namespace ekva::cli {
namespace {

using nlohmann::json;

struct EvalArgs {
  std::string model_dir;
  std::string profile;
  std::string retrieval = "data/evalsets/retrieval.jsonl.xz";
  std::string ppl = "data/evalsets/ppl.jsonl.xz";
  std::vector<std::string> methods = {
      "uniform:snapkv",      "pyramidkv:snapkv", "adakv:snapkv",
      "ekva-entropy:snapkv", "ekva-mass:snapkv", "uniform:streamingllm",
      "uniform:h2o",         "uniform:knorm",    "uniform:random"};
  std::vector<std::string> budgets = {"2%", "5%", "10%", "20%", "30%", "50%"};
  std::vector<int> contexts = {4096, 8192, 16384};
  // prompt: the whole prompt compressed, then the answer; context: the context
  // compressed before the question arrives, then question and answer on that cache.
  std::vector<std::string> settings = {"prompt", "context"};
  int max_retrieval = 0;  // per context; 0: all
  std::vector<int> ppl_contexts = {4096, 8192, 16384};
  int ppl_continuation = 512;
  int max_ppl = 0;  // per context; 0: all documents
  // Long generation: a prompt of gen_prompt tokens, then gen_continuation tokens
  // scored teacher-forced with the budget enforced through decode.
  int gen_docs = 0;  // documents (0: skip)
  int gen_prompt = 2048;
  int gen_continuation = 2048;
  int threads = 0;
  // Stored K/V of every method, the full reference included: the methods then differ
  // from the reference only by what they evict, not by rounding.
  std::string kv_dtype = "bf16";
  std::string compress_per_layer = "on";  // CompressionConfig::per_layer
  std::string json_out, markdown_out;
  std::string op_profile;  // --op-profile: time every op of every forward pass
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
  std::string method;       // "full" or "allocator:policy"
  std::string budget;       // "100%" for the full cache
  double budget_pct = NAN;  // the budget as a percentage of the full cache, if a fraction
  std::optional<CompressionConfig> config;
  std::string name() const { return config ? method + "@" + budget : method; }
};

struct Nll {
  double sum = 0;
  int64_t count = 0;
  void add(double x) { sum += x, ++count; }
  double ppl() const { return count ? std::exp(sum / static_cast<double>(count)) : NAN; }
};

// What one method measured in one setting.
struct Tally {
  std::map<int, std::pair<int, int>> retrieval;  // context -> (correct, total)
  // context -> the needle's answer tokens kept by the compressed cache, summed over
  // prompts as fractions of (layer, kv-head, token): [0] all layers, [1 + l] layer l.
  std::map<int, std::vector<double>> needle_kept;
  std::map<int, int> needle_prompts;            // context -> prompts whose needle was located
  std::map<int, Nll> ppl;                       // context -> continuation NLL
  Nll gen, gen_last_half;                       // long generation
  double kv_bytes_sum = 0, full_bytes_sum = 0;  // after the compressed part, per prompt
  int64_t prompts = 0;
  double replay_seconds = 0;

  // The KV bytes a cache holds right after `tokens` tokens, and what the full cache
  // would hold.
  void add_prompt(const KvCache& cache, int64_t tokens, const KvModelShape& shape, DType kv_dtype) {
    kv_bytes_sum += static_cast<double>(cache.bytes_used());
    full_bytes_sum += static_cast<double>(tokens) * shape.n_layers * shape.n_kv_heads * 2 *
                      shape.head_dim * dtype_size(kv_dtype);
    ++prompts;
  }
  double accuracy(int ctx) const {
    const auto it = retrieval.find(ctx);
    return it == retrieval.end() || it->second.second == 0
               ? NAN
               : 100.0 * it->second.first / it->second.second;
  }
  double needle_kept_pct(int ctx, int layer = -1) const {
    const auto it = needle_kept.find(ctx);
    const auto n = needle_prompts.find(ctx);
    if (it == needle_kept.end() || n == needle_prompts.end() || n->second == 0) return NAN;
    return 100.0 * it->second[static_cast<size_t>(layer + 1)] / n->second;
  }
  double ppl_at(int ctx) const {
    const auto it = ppl.find(ctx);
    return it == ppl.end() ? NAN : it->second.ppl();
  }
};

// The share of `positions` a cache still holds: [0] over every (layer, kv-head), [1 + l]
// over layer l's kv-heads.
std::vector<double> kept_share(const KvCache& cache, const KvModelShape& shape,
                               std::span<const int32_t> positions) {
  std::vector<double> share(static_cast<size_t>(shape.n_layers) + 1, 0.0);
  if (positions.empty()) return share;
  std::vector<KvChunk> chunks;
  const double per_list = 1.0 / static_cast<double>(positions.size() * shape.n_kv_heads);
  for (int l = 0; l < shape.n_layers; ++l)
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      chunks.clear();
      cache.view(l, h, chunks);
      for (const KvChunk& c : chunks)
        for (int64_t e = 0; e < c.n; ++e)
          if (std::find(positions.begin(), positions.end(), c.positions[e]) != positions.end())
            share[static_cast<size_t>(l) + 1] += per_list;
    }
  for (int l = 0; l < shape.n_layers; ++l)
    share[0] += share[static_cast<size_t>(l) + 1] / shape.n_layers;
  return share;
}

// One cache for a method: the full cache, or a compressed one.
std::unique_ptr<KvCache> make_cache(const Method& m, const KvModelShape& shape, int64_t context,
                                    DType kv_dtype, Backend& backend) {
  if (!m.config) return std::make_unique<FullKvCache>(kv_cache_shape(shape), context, kv_dtype);
  return std::make_unique<CompressedKvCache>(shape, *m.config, context, backend);
}

// A measured figure, or a dash for one that was not measured (no prompt of that
// context, no perplexity documents): never "nan".
std::string figure(double value, const char* format) {
  return std::isfinite(value) ? fmt::format(fmt::runtime(format), value) : std::string("–");
}
json figure_json(double value) { return std::isfinite(value) ? json(value) : json(nullptr); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Every method's cache steps together: one forward call per step for all of them
// (the weights are read once per step, not once per method).
class Lockstep {
 public:
  Lockstep(const Model& model, Backend& backend, int sequences, int64_t max_step_tokens,
           ProfilingBackend* profiler)
      : model_(model),
        backend_(backend),
        profiler_(profiler),
        act_(model.config(), backend,
             ForwardLimits{sequences, std::max<int64_t>(1, max_step_tokens * sequences), 0}) {}

  // Feeds tokens[i] to caches[i] (entries with no tokens sit out) and copies each
  // fed cache's last logits to logits[i].
  void step(std::span<KvCache* const> caches, std::span<const std::span<const int32_t>> tokens,
            std::vector<std::vector<float>>& logits) {
    batch_.clear();
    index_.clear();
    for (size_t i = 0; i < caches.size(); ++i) {
      if (tokens[i].empty()) continue;
      batch_.push_back({caches[i], tokens[i]});
      index_.push_back(i);
    }
    if (batch_.empty()) return;
    if (profiler_ != nullptr) {
      int64_t n = 0;
      for (const SequenceStep& st : batch_) n += static_cast<int64_t>(st.tokens.size());
      profiler_->begin_step(n == static_cast<int64_t>(batch_.size()) ? "decode" : "prefill",
                            static_cast<int64_t>(batch_.size()), n);
    }
    model_.forward(batch_, act_, backend_);
    if (profiler_ != nullptr) profiler_->end_step();
    const auto vocab = static_cast<size_t>(model_.config().vocab_size);
    for (size_t b = 0; b < batch_.size(); ++b) {
      const float* row =
          act_.host_logits() + static_cast<size_t>(act_.logit_begin[b + 1] - 1) * vocab;
      logits[index_[b]].assign(row, row + vocab);
    }
  }

 private:
  const Model& model_;
  Backend& backend_;
  ProfilingBackend* profiler_;  // nullptr unless --op-profile
  Activations act_;
  std::vector<SequenceStep> batch_;
  std::vector<size_t> index_;
};

// The smallest swept budget from which on (it and every larger one) the method keeps
// quality: retrieval at least 95% of the full cache's and perplexity within 2%, at
// every context measured (or at `only` alone). NaN: none does, or the budgets are
// not fractions.
// `sweep`: one method's (budget, tally) pairs in ascending budget order.
double iso_quality_budget(std::span<const std::pair<const Method*, const Tally*>> sweep,
                          const Tally& full, const std::vector<int>& contexts,
                          const std::vector<int>& ppl_contexts, int only_retrieval = 0,
                          int only_ppl = 0) {
  double best = NAN;
  for (size_t i = sweep.size(); i-- > 0;) {  // largest budget first
    const auto& [method, t] = sweep[i];
    if (!std::isfinite(method->budget_pct)) return NAN;
    bool ok = true;
    for (int ctx : contexts) {
      if (only_ppl != 0 || (only_retrieval != 0 && ctx != only_retrieval)) continue;
      const double ref = full.accuracy(ctx), got = t->accuracy(ctx);
      if (std::isfinite(ref) && !(got >= 0.95 * ref)) ok = false;
    }
    for (int ctx : ppl_contexts) {
      if (only_retrieval != 0 || (only_ppl != 0 && ctx != only_ppl)) continue;
      const double ref = full.ppl_at(ctx), got = t->ppl_at(ctx);
      if (std::isfinite(ref) && !(got <= 1.02 * ref)) ok = false;
    }
    if (!ok) break;
    best = method->budget_pct;
  }
  return best;
}

void run_eval(const EvalArgs& a) {
  CpuBackend cpu(a.threads);
  // --op-profile: every op through the profiler. The decode steps of the methods'
  // lockstep are its steps; the prompts' recording (prefill) counts as phase "other".
  const auto profiler = a.op_profile.empty() ? nullptr : std::make_unique<ProfilingBackend>(cpu);
  Backend& backend = profiler ? static_cast<Backend&>(*profiler) : cpu;
  const auto model = Model::load(a.model_dir);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);
  const ModelConfig& c = model->config();
  const KvModelShape shape = kv_shape_of(c);
  const DType kv_dtype = a.kv_dtype == "f32" ? DType::kF32 : DType::kBF16;  // checked by the option
  std::optional<CalibrationProfile> profile;
  if (!a.profile.empty()) profile = CalibrationProfile::load(a.profile, shape);
  const bool setting_prompt =
      std::find(a.settings.begin(), a.settings.end(), "prompt") != a.settings.end();
  const bool setting_context =
      std::find(a.settings.begin(), a.settings.end(), "context") != a.settings.end();
  std::vector<std::string> settings;  // in a fixed order
  if (setting_prompt) settings.push_back("prompt");
  if (setting_context) settings.push_back("context");
  if (settings.empty()) fail("--settings: none of prompt, context");
  if (a.gen_docs > 0 && (a.gen_prompt <= 0 || a.gen_continuation <= 0))
    fail("--gen-prompt and --gen-continuation must be positive");
  // The shortest context a method will run with: budgets are validated there now,
  // not after the first prompts (a fraction must hold the protected entries).
  int64_t probe_context = 0;
  const auto shortest = [&](int64_t ctx) {
    probe_context = probe_context == 0 ? ctx : std::min(probe_context, ctx);
  };
  if (!a.retrieval.empty())
    for (int ctx : a.contexts) shortest(ctx);
  if (!a.ppl.empty())
    for (int ctx : a.ppl_contexts) shortest(ctx - a.ppl_continuation);
  if (a.gen_docs > 0) shortest(a.gen_prompt);
  if (probe_context <= 0) probe_context = 64;

  std::vector<Method> methods = {{"full", "100%", 100.0, std::nullopt}};
  bool any_h2o = false;
  for (const std::string& m : a.methods) {
    const auto colon = m.find(':');
    if (colon == std::string::npos) fail("--methods: '{}' is not allocator:policy", m);
    for (const std::string& budget : a.budgets) {
      CompressionConfig cfg;
      cfg.allocator = m.substr(0, colon);
      cfg.policy = m.substr(colon + 1);
      cfg.budget = BudgetSpec::parse(budget);
      cfg.profile = profile ? &*profile : nullptr;
      cfg.kv_dtype = kv_dtype;
      cfg.per_layer = a.compress_per_layer == "on";  // checked by the option
      CompressedKvCache probe(shape, cfg, probe_context,
                              backend);  // validates names, profile, budget now
      const double pct =
          cfg.budget.unit == BudgetSpec::Unit::kFraction ? 100.0 * cfg.budget.value : NAN;
      any_h2o = any_h2o || cfg.policy == "h2o";
      methods.push_back({m, budget, pct, cfg});
    }
  }
  const size_t M = methods.size();
  const size_t S = settings.size();
  std::vector<Tally> tally(M * S);  // [method * S + setting]
  std::vector<Tally> shared(M);     // perplexity and long generation: one protocol
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const auto t_start = std::chrono::steady_clock::now();
  const auto progress = [&](const std::string& what) {
    fmt::print(stderr, "{}{} {:.0f} s{}", tty ? "\r" : "", what, seconds_since(t_start),
               tty ? "   " : "\n");
  };
  std::vector<std::unique_ptr<KvCache>> owned(M);
  std::vector<KvCache*> caches(M);
  std::vector<std::vector<float>> logits(M);
  std::vector<std::span<const int32_t>> feed(M);
  // Replays the first n tokens of a recording into a fresh cache per method.
  const auto replay_all = [&](const PrefillRecording& rec, int64_t n, int64_t context,
                              Tally* per_method, size_t stride, size_t offset) {
    for (size_t mi = 0; mi < M; ++mi) {
      const auto t0 = std::chrono::steady_clock::now();
      owned[mi] = make_cache(methods[mi], shape, context, kv_dtype, backend);
      caches[mi] = owned[mi].get();
      rec.replay(*caches[mi], n);
      Tally& t = per_method[mi * stride + offset];
      t.add_prompt(*caches[mi], n, shape, kv_dtype);
      t.replay_seconds += seconds_since(t0);
      logits[mi] = rec.last_logits;
    }
  };

  // Retrieval: greedy answers after the compressed prompt (or context + question).
  std::vector<json> prompts;
  if (!a.retrieval.empty()) {
    // --max-retrieval N takes N prompts of each context spread evenly over the set's
    // order (so over its tasks, depths and seeds), not the first N.
    std::map<int, std::vector<json>> by_context;
    for (json& p : read_jsonl(a.retrieval)) {
      const int ctx = p.at("context").get<int>();
      if (std::find(a.contexts.begin(), a.contexts.end(), ctx) == a.contexts.end()) continue;
      by_context[ctx].push_back(std::move(p));
    }
    for (int ctx : a.contexts) {
      std::vector<json>& all = by_context[ctx];
      const size_t n = a.max_retrieval > 0
                           ? std::min(all.size(), static_cast<size_t>(a.max_retrieval))
                           : all.size();
      for (size_t i = 0; i < n; ++i) prompts.push_back(std::move(all[i * all.size() / n]));
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const json& p = prompts[i];
    const int ctx = p.at("context").get<int>();
    const auto tokens = tokenizer.encode(p.at("prompt").get<std::string>());
    const auto answer = p.at("answer_tokens").get<std::vector<int32_t>>();
    const auto T = static_cast<int64_t>(tokens.size());
    const int64_t query = p.value("query_token_pos", int64_t{0});
    if (setting_context && (query <= 0 || query >= T))
      fail(
          "{}: prompt '{}' has no query_token_pos inside its {} tokens (needed by --settings "
          "context)",
          a.retrieval, p.value("id", std::string("?")), T);
    if (answer.empty())
      fail("{}: prompt '{}' has no answer_tokens", a.retrieval, p.value("id", ""));
    const int64_t context = T + static_cast<int64_t>(answer.size()) + 1;
    // (A prompt of the user's own set may name no needle: then it is not measured.)
    const std::vector<int32_t> needle =
        needle_answer_positions(tokens, p.value("needle_token_pos", int64_t{-1}), answer);
    const PrefillRecording rec = PrefillRecording::record(
        *model, tokens, backend, kv_dtype,
        {.all_query_scores = any_h2o, .split = setting_context ? query : 0});
    Lockstep lockstep(*model, backend, static_cast<int>(M), std::max<int64_t>(1, T - query),
                      profiler.get());
    for (size_t si = 0; si < S; ++si) {
      const bool whole = settings[si] == "prompt";
      replay_all(rec, whole ? T : query, context, tally.data(), S, si);
      // Which of the needle's answer tokens survived the compression (the question
      // and the answer that follow do not evict them in either setting before it).
      for (size_t mi = 0; mi < M && !needle.empty(); ++mi) {
        Tally& t = tally[mi * S + si];
        std::vector<double>& kept = t.needle_kept[ctx];
        const std::vector<double> share = kept_share(*caches[mi], shape, needle);
        if (kept.empty()) kept.assign(share.size(), 0.0);
        for (size_t k = 0; k < share.size(); ++k) kept[k] += share[k];
        ++t.needle_prompts[ctx];
      }
      if (!whole) {  // the question on the compressed context
        const auto question = std::span(tokens).subspan(static_cast<size_t>(query));
        std::fill(feed.begin(), feed.end(), question);
        lockstep.step(caches, feed, logits);
      }
      std::vector<uint8_t> alive(M, 1);
      for (size_t j = 0; j < answer.size(); ++j) {
        for (size_t mi = 0; mi < M; ++mi) {
          feed[mi] = {};
          if (!alive[mi]) continue;
          if (argmax(logits[mi]) != answer[j]) {
            alive[mi] = 0;
          } else if (j + 1 < answer.size()) {
            feed[mi] = std::span(answer).subspan(j, 1);
          }
        }
        if (j + 1 < answer.size()) lockstep.step(caches, feed, logits);
      }
      for (size_t mi = 0; mi < M; ++mi) {
        auto& [ok, n] = tally[mi * S + si].retrieval[ctx];
        ok += alive[mi];
        ++n;
      }
    }
    progress(fmt::format("retrieval {}/{} ({} tokens)", i + 1, prompts.size(), T));
  }

  // Perplexity of a continuation after a compressed long context (and the long
  // generation: the same protocol, a shorter prompt and a longer continuation).
  const auto continuation = [&](const std::vector<int32_t>& tokens, int64_t prefix,
                                const std::function<void(size_t, int64_t, double)>& add) {
    const PrefillRecording rec =
        PrefillRecording::record(*model, std::span(tokens).first(static_cast<size_t>(prefix)),
                                 backend, kv_dtype, {.all_query_scores = any_h2o});
    replay_all(rec, prefix, static_cast<int64_t>(tokens.size()), shared.data(), 1, 0);
    Lockstep lockstep(*model, backend, static_cast<int>(M), 1, profiler.get());
    for (auto pos = static_cast<size_t>(prefix); pos < tokens.size(); ++pos) {
      for (size_t mi = 0; mi < M; ++mi)
        add(mi, static_cast<int64_t>(pos) - prefix, nll(logits[mi], tokens[pos]));
      if (pos + 1 < tokens.size()) {
        std::fill(feed.begin(), feed.end(), std::span(tokens).subspan(pos, 1));
        lockstep.step(caches, feed, logits);
      }
    }
  };
  std::vector<json> all_docs;
  if (!a.ppl.empty() && (!a.ppl_contexts.empty() || a.gen_docs > 0)) all_docs = read_jsonl(a.ppl);
  std::map<int, int> ppl_docs;
  for (int ctx : a.ppl_contexts) {
    std::vector<std::vector<int32_t>> docs;
    for (const json& d : all_docs) {
      if (d.at("context").get<int>() != ctx) continue;
      if (a.max_ppl > 0 && static_cast<int>(docs.size()) >= a.max_ppl) break;
      docs.push_back(d.at("tokens").get<std::vector<int32_t>>());
      if (static_cast<int>(docs.back().size()) <= a.ppl_continuation)
        fail("--ppl-continuation {} leaves no context in a {}-token document", a.ppl_continuation,
             docs.back().size());
    }
    for (size_t i = 0; i < docs.size(); ++i) {
      const auto prefix = static_cast<int64_t>(docs[i].size()) - a.ppl_continuation;
      continuation(docs[i], prefix,
                   [&](size_t mi, int64_t, double x) { shared[mi].ppl[ctx].add(x); });
      progress(fmt::format("perplexity@{} {}/{}", ctx, i + 1, docs.size()));
    }
    ppl_docs[ctx] = static_cast<int>(docs.size());
  }
  int gen_done = 0;
  if (a.gen_docs > 0) {
    const size_t want = static_cast<size_t>(a.gen_prompt) + static_cast<size_t>(a.gen_continuation);
    for (const json& d : all_docs) {
      if (gen_done >= a.gen_docs) break;
      auto tokens = d.at("tokens").get<std::vector<int32_t>>();
      if (tokens.size() < want) continue;
      tokens.resize(want);
      continuation(tokens, a.gen_prompt, [&](size_t mi, int64_t k, double x) {
        shared[mi].gen.add(x);
        if (2 * k >= a.gen_continuation) shared[mi].gen_last_half.add(x);
      });
      ++gen_done;
      progress(fmt::format("long generation {}/{}", gen_done, a.gen_docs));
    }
    if (gen_done < a.gen_docs)
      fail("{}: only {} documents have the {} tokens --gen-prompt + --gen-continuation need", a.ppl,
           gen_done, want);
  }
  if (tty) fmt::print(stderr, "\n");
  for (size_t mi = 0; mi < M; ++mi)
    for (size_t si = 0; si < S; ++si) {
      Tally& t = tally[mi * S + si];
      t.ppl = shared[mi].ppl;
      t.gen = shared[mi].gen;
      t.gen_last_half = shared[mi].gen_last_half;
      t.kv_bytes_sum += shared[mi].kv_bytes_sum;  // the compressed contexts count too
      t.full_bytes_sum += shared[mi].full_bytes_sum;
      t.prompts += shared[mi].prompts;
      t.replay_seconds += shared[mi].replay_seconds;
    }

  // Report: one table per setting, then the iso-quality budgets.
  std::vector<int> ppl_measured;
  for (int ctx : a.ppl_contexts)
    if (ppl_docs[ctx] > 0) ppl_measured.push_back(ctx);
  std::vector<int> ret_measured;
  for (int ctx : a.contexts)
    if (std::isfinite(tally[0].accuracy(ctx))) ret_measured.push_back(ctx);
  json rows = json::array();
  std::ostringstream md;
  for (size_t si = 0; si < S; ++si) {
    md << "\n**Setting `" << settings[si] << "`** ("
       << (settings[si] == "prompt" ? "the whole prompt compressed"
                                    : "the context compressed before the question")
       << ")\n\n| method | budget | KV held | ";
    for (int ctx : ret_measured) md << "retrieval@" << ctx << " | ";
    for (int ctx : ret_measured) md << "needle kept@" << ctx << " | ";
    for (int ctx : ppl_measured) md << "ppl@" << ctx << " | ";
    if (gen_done) md << "gen ppl | gen ppl, 2nd half | ";
    md << "\n|---|---|---|";
    for (size_t i = 0; i < 2 * ret_measured.size() + ppl_measured.size() + (gen_done ? 2 : 0); ++i)
      md << "---|";
    md << "\n";
    const Tally& full = tally[si];
    for (size_t mi = 0; mi < M; ++mi) {
      const Tally& t = tally[mi * S + si];
      const double kv_frac = t.full_bytes_sum > 0 ? t.kv_bytes_sum / t.full_bytes_sum : NAN;
      json row = {{"method", methods[mi].method},
                  {"budget", methods[mi].budget},
                  {"budget_pct", figure_json(methods[mi].budget_pct)},
                  {"setting", settings[si]},
                  {"kv_fraction_held", figure_json(kv_frac)},
                  {"replay_seconds", t.replay_seconds}};
      md << "| " << methods[mi].method << " | " << methods[mi].budget << " | "
         << figure(100 * kv_frac, "{:.1f}%") << " | ";
      for (int ctx : ret_measured) {
        const double acc = t.accuracy(ctx);
        row["retrieval"][std::to_string(ctx)] = {
            {"accuracy_pct", figure_json(acc)},
            {"n", t.retrieval.count(ctx) ? t.retrieval.at(ctx).second : 0}};
        md << figure(acc, "{:.1f}%") << " | ";
      }
      for (int ctx : ret_measured) {
        json per_layer = json::array();
        for (int l = 0; l < shape.n_layers; ++l)
          per_layer.push_back(figure_json(t.needle_kept_pct(ctx, l)));
        row["retrieval"][std::to_string(ctx)]["needle_kept_pct"] =
            figure_json(t.needle_kept_pct(ctx));
        row["retrieval"][std::to_string(ctx)]["needle_kept_pct_per_layer"] = per_layer;
        md << figure(t.needle_kept_pct(ctx), "{:.1f}%") << " | ";
      }
      for (int ctx : ppl_measured) {
        const double ppl = t.ppl_at(ctx);
        row["perplexity"][std::to_string(ctx)] = {
            {"ppl", figure_json(ppl)},
            {"delta_pct", figure_json(100.0 * (ppl / full.ppl_at(ctx) - 1.0))}};
        md << figure(ppl, "{:.3f}") << " | ";
      }
      if (gen_done) {
        row["generation"] = {
            {"ppl", figure_json(t.gen.ppl())},
            {"ppl_second_half", figure_json(t.gen_last_half.ppl())},
            {"delta_pct", figure_json(100.0 * (t.gen.ppl() / full.gen.ppl() - 1.0))}};
        md << figure(t.gen.ppl(), "{:.3f}") << " | " << figure(t.gen_last_half.ppl(), "{:.3f}")
           << " | ";
      }
      md << "\n";
      rows.push_back(row);
    }
  }
  // Iso-quality budgets: per method and setting.
  json iso = json::array();
  md << "\n**Iso-quality budget** (smallest swept budget from which on retrieval is at least "
        "95% of the full cache's and perplexity within 2%, at every context)\n\n| method | ";
  for (const std::string& s : settings) md << s << " | ";
  md << "\n|---|";
  for (size_t i = 0; i < S; ++i) md << "---|";
  md << "\n";
  for (const std::string& m : a.methods) {
    md << "| " << m << " | ";
    for (size_t si = 0; si < S; ++si) {
      std::vector<std::pair<const Method*, const Tally*>> sweep;
      for (size_t mi = 1; mi < M; ++mi)
        if (methods[mi].method == m) sweep.emplace_back(&methods[mi], &tally[mi * S + si]);
      // Ascending budget; budgets that are not fractions (NaN) first, so that
      // iso_quality_budget meets them and gives up (and the order stays strict weak).
      std::stable_sort(sweep.begin(), sweep.end(), [](const auto& x, const auto& y) {
        const double bx = x.first->budget_pct, by = y.first->budget_pct;
        return std::isnan(bx) ? !std::isnan(by) : !std::isnan(by) && bx < by;
      });
      const Tally& full = tally[si];
      const double all = iso_quality_budget(sweep, full, ret_measured, ppl_measured);
      json entry = {
          {"method", m}, {"setting", settings[si]}, {"iso_quality_budget_pct", figure_json(all)}};
      for (int ctx : ret_measured)
        entry["retrieval_only"][std::to_string(ctx)] =
            figure_json(iso_quality_budget(sweep, full, ret_measured, ppl_measured, ctx, 0));
      for (int ctx : ppl_measured)
        entry["perplexity_only"][std::to_string(ctx)] =
            figure_json(iso_quality_budget(sweep, full, ret_measured, ppl_measured, 0, ctx));
      iso.push_back(entry);
      md << (std::isfinite(all) ? fmt::format("{:g}%", all) : std::string("> swept")) << " | ";
    }
    md << "\n";
  }
  fmt::print("{}", md.str());
  if (!a.markdown_out.empty()) std::ofstream(a.markdown_out) << md.str();
  if (!a.json_out.empty()) {
    json j = {
        {"model", a.model_dir},
        {"profile", a.profile},
        {"kv_dtype", a.kv_dtype},
        {"compress_per_layer", a.compress_per_layer},
        {"settings", settings},
        {"budgets", a.budgets},
        {"retrieval_prompts_per_context", a.max_retrieval},
        {"retrieval_contexts", ret_measured},
        {"retrieval_prompts", prompts.size()},
        {"ppl_contexts", ppl_measured},
        {"ppl_documents", ppl_docs},
        {"ppl_continuation", a.ppl_continuation},
        {"perplexity_protocol",
         "the continuation runs on the compressed context in both settings (there is "
         "no question), so the figure is measured once and shown in both"},
        {"generation",
         {{"documents", gen_done}, {"prompt", a.gen_prompt}, {"continuation", a.gen_continuation}}},
        {"seconds", seconds_since(t_start)},
        {"rows", rows},
        {"iso_quality", iso}};
    std::ofstream(a.json_out) << j.dump(2) << "\n";
  }
  if (profiler) {
    json j = profiler->profile().to_json();
    j["run"] = {{"command", "ekva eval"},
                {"model", a.model_dir},
                {"methods", a.methods},
                {"budgets", a.budgets},
                {"threads", a.threads}};
    write_text_file(a.op_profile, j.dump(1) + "\n", "op profile");
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Compare KV compression methods on the evaluation sets");
  cmd->add_option("-m,--model", args->model_dir, "Model directory")->required();
  cmd->add_option("--profile", args->profile,
                  "Calibration profile (needed by the EKVA allocators)");
  cmd->add_option("--retrieval", args->retrieval,
                  "Retrieval prompts (JSONL, or JSONL.xz; empty: skip)")
      ->capture_default_str();
  cmd->add_option("--ppl", args->ppl, "Perplexity documents (JSONL, or JSONL.xz; empty: skip)")
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
  cmd->add_option("--settings", args->settings,
                  "prompt (the whole prompt compressed), context (the context compressed "
                  "before the question)")
      ->delimiter(',')
      ->check(CLI::IsMember({"prompt", "context"}))
      ->capture_default_str();
  cmd->add_option("--max-retrieval", args->max_retrieval,
                  "Prompts per context, spread over the set (0: all)");
  cmd->add_option("--ppl-contexts", args->ppl_contexts,
                  "Perplexity documents of these context lengths")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--ppl-continuation", args->ppl_continuation,
                  "Tokens scored after the compressed context")
      ->capture_default_str();
  cmd->add_option("--max-ppl", args->max_ppl, "Documents per context (0: all)");
  cmd->add_option("--gen-docs", args->gen_docs,
                  "Long generation: documents (0: skip), scored teacher-forced through decode")
      ->capture_default_str();
  cmd->add_option("--gen-prompt", args->gen_prompt, "Long generation: prompt tokens")
      ->capture_default_str();
  cmd->add_option("--gen-continuation", args->gen_continuation,
                  "Long generation: tokens decoded and scored after the prompt")
      ->capture_default_str();
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
  cmd->add_option("--op-profile", args->op_profile,
                  "Time every op and write the profile (for ekva roofline report) to this file");
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace ekva::cli
