#include "runtime/calibration_run.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/cpu_backend.h"
#include "kv/kv_cache.h"
#include "kv/scoring_cache.h"
#include "model/config.h"
#include "model/model.h"
#include "model/tokenizer.h"

namespace ekva {

CalibrationProfile calibrate(
    const Model& model, std::span<const std::vector<int32_t>> sequences,
    const CalibrationOptions& options, ThreadPool& pool,
    const std::function<void(int64_t done_tokens, int64_t total_tokens)>& progress) {
  const ModelConfig& c = model.config();
  std::vector<int64_t> lengths;
  for (const std::vector<int32_t>& tokens : sequences)
    lengths.push_back(static_cast<int64_t>(tokens.size()));
  check_calibration_input(kv_shape_of(c), lengths, options);
  int64_t total = 0, longest = 0;
  for (int64_t n : lengths) {
    total += n;
    longest = std::max(longest, n);
  }

  CalibrationStats stats(kv_shape_of(c), options, pool);
  // The forward pass shows each layer's q, k, routing and output in this order; the
  // layer's output ("hidden") means its q, k and routing are all in.
  ForwardObserver observer;
  observer.tensor = [&](std::string_view name, int layer, const float* data, int64_t n_tokens,
                        int64_t width) {
    if (name == "q") {
      EKVA_CHECK(width == c.q_dim(), "q width {} != {}", width, c.q_dim());
      stats.queries(layer, data, n_tokens);
    } else if (name == "k") {
      EKVA_CHECK(width == c.kv_dim(), "k width {} != {}", width, c.kv_dim());
      stats.keys(layer, data, n_tokens);
    } else if (name == "hidden") {
      stats.layer_done(layer);
    }
  };
  observer.routing = [&](int layer, const int32_t* experts, const float* weights, int64_t n_tokens,
                         int top_k) { stats.routing(layer, experts, weights, n_tokens, top_k); };
  FullKvCache cache(kv_cache_shape(c), longest);
  CpuBackend backend(pool);   // the forward pass shares the statistics' threads
  std::vector<float> logits;  // [vocab]: the last token's only
  int64_t done = 0;
  for (const std::vector<int32_t>& tokens : sequences) {
    cache.clear();
    model.forward(tokens, cache, logits, /*all_logits=*/false, backend, &observer);
    stats.sequence_done(static_cast<int64_t>(tokens.size()));
    done += static_cast<int64_t>(tokens.size());
    if (progress) progress(done, total);
  }
  return stats.profile();
}

std::vector<std::vector<int32_t>> calibration_sequences(const std::filesystem::path& data,
                                                        const Tokenizer& tokenizer, int64_t context,
                                                        int64_t max_tokens) {
  const std::string file = data.string();
  const int32_t bos = tokenizer.bos_id();
  const int64_t body = context - (bos >= 0 ? 1 : 0);  // text tokens per sequence
  if (body < 1) fail("calibration: context {} is too short", context);
  if (max_tokens < context)
    fail("calibration: max_tokens {} is less than one sequence of {} tokens", max_tokens, context);
  const int64_t wanted = max_tokens / context;

  std::ifstream in(data, std::ios::binary);
  if (!in) fail("{}: cannot open calibration data", file);
  std::vector<int32_t> stream;  // every document's ids, concatenated
  if (data.extension() == ".jsonl") {
    std::string line;
    int64_t line_no = 0;
    // Documents are read only until there is enough text.
    while (static_cast<int64_t>(stream.size()) < wanted * body && std::getline(in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        fail("{}:{}: not valid JSON: {}", file, line_no, e.what());
      }
      if (j.is_object() && j.contains("text") && j["text"].is_string()) {
        const auto ids = tokenizer.encode(j["text"].get<std::string>(), false);
        stream.insert(stream.end(), ids.begin(), ids.end());
      } else if (j.is_object() && j.contains("tokens") && j["tokens"].is_array()) {
        const nlohmann::json& ids = j["tokens"];
        for (size_t i = 0; i < ids.size(); ++i) {
          const nlohmann::json& id = ids[i];
          if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
              id.get<int64_t>() >= tokenizer.vocab_size())
            fail("{}:{}: tokens[{}] = {} is not a token id (0..{})", file, line_no, i, id.dump(),
                 tokenizer.vocab_size() - 1);
          if (i == 0 && id.get<int32_t>() == bos) continue;  // each sequence gets its own BOS
          stream.push_back(id.get<int32_t>());
        }
      } else {
        fail("{}:{}: needs a \"text\" string or a \"tokens\" array of ids", file, line_no);
      }
    }
  } else {
    std::ostringstream text;
    text << in.rdbuf();
    stream = tokenizer.encode(text.str(), false);
  }

  const int64_t n = std::min(wanted, static_cast<int64_t>(stream.size()) / body);
  if (n == 0)
    fail("{}: {} tokens of text, too few for one calibration sequence of {} tokens", file,
         stream.size(), context);
  std::vector<std::vector<int32_t>> sequences(static_cast<size_t>(n));
  for (int64_t s = 0; s < n; ++s) {
    std::vector<int32_t>& seq = sequences[static_cast<size_t>(s)];
    seq.reserve(static_cast<size_t>(context));
    if (bos >= 0) seq.push_back(bos);
    const auto first = stream.begin() + s * body;
    seq.insert(seq.end(), first, first + body);
  }
  return sequences;
}

std::vector<int32_t> needle_answer_positions(std::span<const int32_t> tokens, int64_t needle_start,
                                             std::span<const int32_t> answer) {
  const auto T = static_cast<int64_t>(tokens.size());
  const auto n = static_cast<int64_t>(answer.size());
  if (needle_start < 0 || n == 0) return {};
  for (int64_t i = needle_start; i + n <= std::min(T, needle_start + 96); ++i)
    if (std::equal(answer.begin(), answer.end(), tokens.begin() + i)) {
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) pos[static_cast<size_t>(j)] = static_cast<int32_t>(i + j);
      return pos;
    }
  return {};
}

std::vector<std::vector<double>> retrieval_head_mass(
    const Model& model, std::span<const NeedlePrompt> prompts, ThreadPool& pool,
    const std::function<void(int64_t done, int64_t total)>& progress) {
  const ModelConfig& c = model.config();
  if (prompts.empty()) fail("retrieval heads: no needle prompts");
  const int G = c.n_heads / c.n_kv_heads;
  std::vector<std::vector<double>> mass(static_cast<size_t>(c.n_layers),
                                        std::vector<double>(static_cast<size_t>(c.n_kv_heads)));
  CpuBackend backend(pool);
  std::vector<float> logits;
  int64_t done = 0;
  for (const NeedlePrompt& p : prompts) {
    const auto T = static_cast<int64_t>(p.tokens.size());
    if (p.answer.empty()) fail("retrieval heads: a needle prompt without answer tokens");
    for (int32_t pos : p.needle)
      if (pos < 0 || pos >= T)
        fail("retrieval heads: needle position {} outside the prompt's {} tokens", pos, T);
    // The prompt and the answer but its last token, teacher-forced: the queries that
    // predict the answer's tokens are the last answer.size() ones, and they are scored.
    std::vector<int32_t> tokens = p.tokens;
    tokens.insert(tokens.end(), p.answer.begin(), p.answer.end() - 1);
    const auto n_scored = static_cast<int64_t>(p.answer.size());
    const auto n = static_cast<int64_t>(tokens.size());
    ScoringFullCache cache(kv_cache_shape(c), n, DType::kF32, n_scored);
    model.forward(tokens, cache, logits, /*all_logits=*/false, backend, nullptr);
    for (int l = 0; l < c.n_layers; ++l) {
      const std::vector<float> s = cache.scores(l, n);  // [kv_head * n + i]
      for (int h = 0; h < c.n_kv_heads; ++h) {
        double m = 0;
        for (int32_t pos : p.needle) m += s[static_cast<size_t>(h * n + pos)];
        mass[static_cast<size_t>(l)][static_cast<size_t>(h)] += m / (G * n_scored);
      }
    }
    if (progress) progress(++done, static_cast<int64_t>(prompts.size()));
  }
  for (auto& layer : mass)
    for (double& m : layer) m /= static_cast<double>(prompts.size());
  return mass;
}

}  // namespace ekva
