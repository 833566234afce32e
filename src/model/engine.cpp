// The public Engine and Session on top of Model, Tokenizer and the KV cache.
#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ekva/ekva.h"
#include "kv/compressed_cache.h"
#include "kv/kv_cache.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

namespace ekva {

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}
double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

class SessionImpl final : public Session {
 public:
  // compression == nullptr: the plain full cache.
  SessionImpl(const Model& model, int64_t context, const CompressionConfig* compression)
      : model_(model), context_(context) {
    const ModelConfig& c = model.config();
    if (compression == nullptr)
      cache_ = std::make_unique<FullKvCache>(KvShape{c.n_layers, c.n_kv_heads, c.head_dim}, context);
    else
      cache_ = std::make_unique<CompressedKvCache>(c, *compression, context, default_pool());
  }

  std::span<const float> prefill(std::span<const int32_t> tokens) override {
    if (tokens.empty()) fail("prefill: empty prompt");
    check_room(static_cast<int64_t>(tokens.size()));
    return run(tokens);
  }

  std::span<const float> decode(int32_t token) override {
    check_room(1);
    return run({&token, 1});
  }

  int64_t length() const override { return cache_->length(); }
  int64_t context() const override { return context_; }
  size_t kv_bytes() const override { return cache_->bytes_used(); }
  size_t kv_full_bytes() const override {
    const ModelConfig& c = model_.config();
    return static_cast<size_t>(cache_->length()) * c.n_layers * c.n_kv_heads * 2 * c.head_dim * sizeof(float);
  }
  size_t last_bytes_read() const override { return last_.weight_bytes + last_.kv_bytes; }

 private:
  void check_room(int64_t n) const {
    if (cache_->length() + n > context_)
      fail("sequence of {} tokens exceeds the context of {} tokens", cache_->length() + n, context_);
  }
  std::span<const float> run(std::span<const int32_t> tokens) {
    last_ = model_.forward(tokens, *cache_, logits_, /*all_logits=*/false, default_pool());
    return logits_;
  }

  const Model& model_;
  int64_t context_;
  std::unique_ptr<KvCache> cache_;
  std::vector<float> logits_;
  ForwardCounters last_;
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(const std::filesystem::path& dir, const EngineOptions& options)
      : model_(Model::load(dir)), tokenizer_(Tokenizer::from_model_dir(dir)) {
    const ModelConfig& c = model_->config();
    if (options.threads < 0) fail("engine: threads must be >= 0, got {}", options.threads);
    if (options.threads > 0) set_default_pool_threads(options.threads);
    if (options.context < 0) fail("engine: context must be >= 0, got {}", options.context);
    if (options.context > c.max_position_embeddings)
      fail("engine: context {} exceeds the model's max_position_embeddings ({})", options.context,
           c.max_position_embeddings);
    context_ = options.context > 0 ? options.context : c.max_position_embeddings;
    if (tokenizer_.vocab_size() > c.vocab_size)
      fail("{}: tokenizer has {} tokens but config.json vocab_size is {}", dir.string(),
           tokenizer_.vocab_size(), c.vocab_size);

    const KvCompressionOptions& kv = options.kv;
    const BudgetSpec budget = BudgetSpec::parse(kv.budget);
    const bool everything = budget.unit == BudgetSpec::Unit::kFraction && budget.value == 1.0;
    if (kv.policy != "full" || !everything) {
      if (!kv.profile.empty()) profile_ = CalibrationProfile::load(kv.profile, c);
      compression_ = CompressionConfig{};
      compression_->policy = kv.policy;
      compression_->allocator = kv.allocator;
      compression_->budget = budget;
      compression_->profile = kv.profile.empty() ? nullptr : &*profile_;
      // Validates the combination now (unknown names, missing profile, impossible
      // budgets) rather than at the first prompt.
      CompressedKvCache probe(c, *compression_, context_, default_pool());
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    return tokenizer_.encode(text, add_special_tokens);
  }
  std::string decode(std::span<const int32_t> ids) const override { return tokenizer_.decode(ids); }

  std::unique_ptr<Session> new_session() const override {
    return std::make_unique<SessionImpl>(*model_, context_, compression_ ? &*compression_ : nullptr);
  }

  GenerateStats generate(std::string_view prompt, const GenerateOptions& options,
                         const std::function<void(std::string_view)>& on_text) const override {
    if (options.max_new_tokens < 0) fail("generate: max_new_tokens must be >= 0");
    Sampler sampler(options.sampling);
    const std::vector<int32_t> ids = tokenizer_.encode(prompt, /*add_special_tokens=*/true);
    if (ids.empty()) fail("generate: the prompt encodes to no tokens");
    if (static_cast<int64_t>(ids.size()) >= context_)
      fail("prompt of {} tokens does not fit the context of {} tokens (leave room for one more)",
           ids.size(), context_);
    GenerateStats stats;
    stats.prompt_tokens = static_cast<int64_t>(ids.size());
    auto session = new_session();

    const auto t0 = Clock::now();
    std::span<const float> logits = session->prefill(ids);
    stats.prefill_seconds = seconds_since(t0);

    StreamDecoder text(tokenizer_);
    const std::vector<int32_t> eos = tokenizer_.eos_ids();
    stats.stop_reason = "length";
    const auto t1 = Clock::now();
    for (int i = 0; i < options.max_new_tokens; ++i) {
      const int32_t next = sampler.sample(logits);
      if (options.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) {
        stats.stop_reason = "eos";
        break;
      }
      stats.tokens.push_back(next);
      ++stats.generated_tokens;
      if (on_text) {
        const std::string piece = text.push(next);
        if (!piece.empty()) on_text(piece);
      }
      if (i + 1 == options.max_new_tokens) break;  // no need to run the last token
      if (session->length() >= context_) {
        stats.stop_reason = "context";
        break;
      }
      logits = session->decode(next);
      ++stats.decode_steps;
      stats.decode_bytes_read += session->last_bytes_read();
    }
    stats.decode_seconds = seconds_since(t1);
    if (on_text) {
      const std::string rest = text.flush();
      if (!rest.empty()) on_text(rest);
    }
    stats.kv_bytes = session->kv_bytes();
    stats.kv_full_bytes = session->kv_full_bytes();
    return stats;
  }

  std::string architecture() const override { return model_->config().arch_name; }
  int vocab_size() const override { return model_->config().vocab_size; }
  int64_t context() const override { return context_; }
  size_t weight_bytes() const override { return model_->tensors().total_bytes(); }

 private:
  std::unique_ptr<Model> model_;
  Tokenizer tokenizer_;
  int64_t context_ = 0;
  std::optional<CalibrationProfile> profile_;
  std::optional<CompressionConfig> compression_;
};

}  // namespace

std::unique_ptr<Engine> Engine::open(const std::filesystem::path& model_dir,
                                     const EngineOptions& options) {
  return std::make_unique<EngineImpl>(model_dir, options);
}

}  // namespace ekva
