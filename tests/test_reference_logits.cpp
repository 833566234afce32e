// The engine's logits against the independent numpy forward pass
// (tools/make_reference.py), for every supported architecture: prefill logits of
// every prompt position, then decode logits step by step, plus the router's top-k
// choices in every MoE layer.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "kv/compressed_cache.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "test_util.h"

namespace ekva {
namespace {

// f32 arithmetic against a float64 reference on weights stored in bf16/f16/f32:
// the difference is f32 rounding accumulated over a few layers.
constexpr double kTolerance = 1e-5;

struct Reference {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // [N, vocab]
  int64_t prefill_len = 0;
  nlohmann::json router_topk;  // {"layer": [[e0, e1], ...per token]}
};

Reference load_reference(const std::filesystem::path& dir) {
  const auto file = SafetensorsFile::open(dir / "reference.safetensors");
  Reference r;
  const TensorInfo& tokens = file->get("tokens");
  const TensorInfo& logits = file->get("logits");
  r.tokens.resize(static_cast<size_t>(tokens.numel()));
  std::memcpy(r.tokens.data(), tokens.data, tokens.nbytes);
  r.logits.resize(static_cast<size_t>(logits.numel()));
  std::memcpy(r.logits.data(), logits.data, logits.nbytes);
  r.prefill_len = std::stoll(file->metadata().at("prefill_len"));
  if (file->metadata().count("router_topk"))
    r.router_topk = nlohmann::json::parse(file->metadata().at("router_topk"));
  return r;
}

class ReferenceLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceLogits, PrefillThenDecodeMatch) {
  const auto dir = test::reference_dir() / GetParam();
  ASSERT_TRUE(std::filesystem::exists(dir))
      << dir << " missing: run the make_reference test fixture";
  const auto model = Model::load(dir);
  const Reference ref = load_reference(dir);
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  const auto N = static_cast<int64_t>(ref.tokens.size());
  Backend& pool = test::cpu();

  // Routing decisions seen by the engine: layer -> [token] -> experts.
  std::map<int, std::vector<std::vector<int32_t>>> routed;
  ForwardObserver observer;
  observer.routing = [&](int layer, const int32_t* experts, const float*, int64_t n, int k) {
    for (int64_t t = 0; t < n; ++t)
      routed[layer].emplace_back(experts + t * k, experts + (t + 1) * k);
  };

  FullKvCache cache(kv_cache_shape(c), N);
  std::vector<float> logits;
  model->forward(std::span(ref.tokens).first(static_cast<size_t>(ref.prefill_len)), cache, logits,
                 /*all_logits=*/true, pool, &observer);
  ASSERT_EQ(logits.size(), static_cast<size_t>(ref.prefill_len) * V);
  for (int64_t t = 0; t < ref.prefill_len; ++t) {
    EXPECT_LT(test::rel_error(&logits[static_cast<size_t>(t) * V],
                              &ref.logits[static_cast<size_t>(t) * V], V),
              kTolerance)
        << "prefill position " << t;
  }
  for (int64_t t = ref.prefill_len; t < N; ++t) {
    model->forward(std::span(ref.tokens).subspan(static_cast<size_t>(t), 1), cache, logits, false,
                   pool, &observer);
    ASSERT_EQ(logits.size(), V);
    EXPECT_LT(test::rel_error(logits.data(), &ref.logits[static_cast<size_t>(t) * V], V),
              kTolerance)
        << "decode position " << t;
  }
  EXPECT_EQ(cache.length(), N);

  for (const auto& [layer, per_token] : ref.router_topk.items()) {
    const auto& mine = routed[std::stoi(layer)];
    ASSERT_EQ(mine.size(), per_token.size()) << "layer " << layer;
    for (size_t t = 0; t < mine.size(); ++t)
      EXPECT_EQ(mine[t], per_token[t].get<std::vector<int32_t>>())
          << "layer " << layer << " token " << t;
  }
}

TEST_P(ReferenceLogits, LastLogitsOnlyMatchesAllLogits) {
  const auto dir = test::reference_dir() / GetParam();
  const auto model = Model::load(dir);
  const Reference ref = load_reference(dir);
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  FullKvCache cache(kv_cache_shape(c), 64);
  std::vector<float> logits;
  const auto n = static_cast<size_t>(ref.tokens.size());
  model->forward(ref.tokens, cache, logits, false, test::cpu());
  ASSERT_EQ(logits.size(), V);
  EXPECT_LT(test::rel_error(logits.data(), &ref.logits[(n - 1) * V], V), kTolerance);
}

TEST_P(ReferenceLogits, ChunkedPrefillMatchesWhole) {
  // A prompt run in chunks of 5 tokens (each chunk attending to the earlier ones
  // in the cache) gives every position the logits of the whole-prompt run.
  const auto dir = test::reference_dir() / GetParam();
  const auto model = Model::load(dir);
  const Reference ref = load_reference(dir);
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  FullKvCache cache(kv_cache_shape(c), 64);
  std::vector<float> logits;
  model->forward(ref.tokens, cache, logits, /*all_logits=*/true, test::cpu(), nullptr,
                 /*max_step=*/5);
  ASSERT_EQ(logits.size(), ref.tokens.size() * V);
  for (size_t t = 0; t < ref.tokens.size(); ++t)
    EXPECT_LT(test::rel_error(&logits[t * V], &ref.logits[t * V], V), kTolerance)
        << "position " << t;
}

TEST_P(ReferenceLogits, BatchMatchesEachSequenceAlone) {
  // Three sequences of different lengths in one batch, over three calls that mix
  // prefill chunks with decode tokens; every position's logits must equal those of
  // the sequence run alone (f32 rounding: the GEMM blocks tokens differently).
  const auto dir = test::reference_dir() / GetParam();
  const auto model = Model::load(dir);
  const Reference ref = load_reference(dir);
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> seqs = {ref.tokens, {}, {}};
  for (const size_t n : {ref.tokens.size() - 5, size_t{9}}) {
    auto& s = seqs[seqs[1].empty() ? 1 : 2];
    for (size_t i = 0; i < n; ++i)
      s.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size)));
  }
  std::vector<std::vector<float>> alone(3);
  for (size_t i = 0; i < 3; ++i) {
    FullKvCache cache(kv_cache_shape(c), 64);
    model->forward(seqs[i], cache, alone[i], /*all_logits=*/true, test::cpu());
  }

  // Call 1: a chunk of A, all of B but its last token, a chunk of C.
  // Call 2: B decodes its last token, the rest of A's prompt but 1, C continues.
  // Call 3: A and C decode their last tokens.
  const auto nA = seqs[0].size(), nB = seqs[1].size(), nC = seqs[2].size();
  const std::vector<std::vector<std::array<size_t, 2>>> plan = {
      {{0, 6}, {0, nB - 1}, {0, 4}},
      {{6, nA - 1}, {nB - 1, nB}, {4, nC - 1}},
      {{nA - 1, nA}, {}, {nC - 1, nC}}};
  std::vector<std::unique_ptr<FullKvCache>> caches;
  for (int i = 0; i < 3; ++i)
    caches.push_back(std::make_unique<FullKvCache>(kv_cache_shape(c), 64));
  Activations act(c, test::cpu(), {.max_sequences = 3, .max_tokens = 64, .max_logit_rows = 64});
  for (const auto& call : plan) {
    std::vector<SequenceStep> batch;
    std::vector<size_t> who;
    for (size_t i = 0; i < 3; ++i) {
      const auto [b, e] = call[i];
      if (b == e) continue;
      batch.push_back({caches[i].get(), std::span(seqs[i]).subspan(b, e - b), /*all_logits=*/true,
                       /*prompt_continues=*/e < seqs[i].size()});
      who.push_back(i);
    }
    model->forward(batch, act, test::cpu());
    for (size_t j = 0; j < batch.size(); ++j) {
      const size_t i = who[j], b = call[i][0];
      for (int64_t r = act.logit_begin[j]; r < act.logit_begin[j + 1]; ++r) {
        const size_t pos = b + static_cast<size_t>(r - act.logit_begin[j]);
        EXPECT_LT(
            test::rel_error(act.host_logits() + r * static_cast<int64_t>(V), &alone[i][pos * V], V),
            kTolerance)
            << "sequence " << i << " position " << pos;
      }
    }
  }
  // Sequence A is the reference's own: check it against numpy too.
  EXPECT_LT(test::rel_error(&alone[0][(nA - 1) * V], &ref.logits[(nA - 1) * V], V), kTolerance);
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(caches[i]->length(), static_cast<int64_t>(seqs[i].size()));
}

TEST_P(ReferenceLogits, ReferenceBackendMatchesNumpy) {
  // The whole forward pass on the scalar reference ops (the backend every other
  // one is tested against) agrees with the independent numpy forward pass.
  const auto dir = test::reference_dir() / GetParam();
  const auto model = Model::load(dir);
  const Reference ref = load_reference(dir);
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  const auto backend = make_reference_backend();
  FullKvCache cache(kv_cache_shape(c), 64);
  std::vector<float> logits;
  model->forward(ref.tokens, cache, logits, /*all_logits=*/true, *backend);
  for (size_t t = 0; t < ref.tokens.size(); ++t)
    EXPECT_LT(test::rel_error(&logits[t * V], &ref.logits[t * V], V), kTolerance)
        << "position " << t;
}

INSTANTIATE_TEST_SUITE_P(Architectures, ReferenceLogits,
                         ::testing::Values("mixtral", "mixtral_sharded", "mixtral_f32",
                                           "mixtral_f16", "qwen2_moe", "qwen2_moe_norm",
                                           "qwen3_moe", "qwen3_moe_dense", "qwen3_moe_sharded",
                                           "olmoe", "olmoe_clip", "mistral", "mistral_swa", "llama",
                                           "deepseek_v2", "deepseek_v2_group", "deepseek_v3",
                                           "deepseek_v3_yarn"));

// --- MLA (DeepSeek): the cache holds the latent, compressed caches run on it -------

// Logits of a prefill of the reference prompt's first `prefill` tokens, then of each
// remaining token decoded one at a time.
std::vector<std::vector<float>> prefill_then_decode(const Model& model, KvCache& cache,
                                                    const std::vector<int32_t>& tokens,
                                                    size_t prefill) {
  std::vector<std::vector<float>> out(1);
  model.forward(std::span(tokens).first(prefill), cache, out[0], false, test::cpu());
  for (size_t t = prefill; t < tokens.size(); ++t)
    model.forward(std::span(tokens).subspan(t, 1), cache, out.emplace_back(), false, test::cpu());
  return out;
}

TEST(MlaCache, BytesPerTokenAreTheLatents) {
  // DeepSeek-V3 case: 3 layers, latent kv_lora_rank 32 + rope 8 = 40 per token and layer.
  const auto model = Model::load(test::reference_dir() / "deepseek_v3");
  const ModelConfig& c = model->config();
  const Reference ref = load_reference(test::reference_dir() / "deepseek_v3");
  const auto n = static_cast<int64_t>(ref.tokens.size());
  const int64_t latent = 32 + 8;
  ASSERT_EQ(c.head_dim, latent);
  ASSERT_EQ(c.n_kv_heads, 1);

  FullKvCache full(kv_cache_shape(c), 64);  // f32
  std::vector<float> logits;
  const ForwardCounters prefill = model->forward(ref.tokens, full, logits, false, test::cpu());
  EXPECT_EQ(full.bytes_used(), static_cast<size_t>(n * c.n_layers * latent * 4));
  // Attention read each layer's n entries once, the latent row only (no V rows).
  EXPECT_EQ(prefill.kv_bytes, static_cast<size_t>(n * c.n_layers * latent * 4));
  std::vector<KvChunk> view;
  full.view(1, 0, view);
  ASSERT_EQ(view.size(), 1u);
  EXPECT_EQ(view[0].v, view[0].k);
  EXPECT_EQ(view[0].entry_bytes(latent), static_cast<size_t>(latent * 4));

  // The paged store (bf16) likewise: one latent row per entry.
  CompressionConfig cfg;
  cfg.policy = "full";
  CompressedKvCache paged(c, cfg, 64, test::cpu());
  model->forward(ref.tokens, paged, logits, false, test::cpu());
  const CompressionStats stats = paged.stats();
  EXPECT_EQ(stats.live_entries, n * c.n_layers);
  EXPECT_EQ(stats.bytes.kv, static_cast<size_t>(n * c.n_layers * latent * 2));
  EXPECT_EQ(paged.store_entry_bytes(), static_cast<size_t>(latent * 2));
}

TEST(MlaCache, CompressedCacheRunsOnDeepseek) {
  // Segments per (layer, expert) over the one latent head: a full budget reproduces
  // the full cache of the same dtype; a SnapKV budget of 40% evicts and stays finite.
  for (const char* name : {"deepseek_v2", "deepseek_v3"}) {
    const auto model = Model::load(test::reference_dir() / name);
    const ModelConfig& c = model->config();
    const Reference ref = load_reference(test::reference_dir() / name);
    FullKvCache full(kv_cache_shape(c), 64, DType::kBF16);
    const auto want = prefill_then_decode(*model, full, ref.tokens, 16);

    CompressionConfig cfg;
    cfg.policy = "snapkv";
    cfg.sink_tokens = 2;
    cfg.recent_window = 4;
    cfg.observation_window = 4;
    cfg.block_size = 4;
    cfg.budget = BudgetSpec::parse("100%");
    CompressedKvCache same(c, cfg, 64, test::cpu());
    const auto got = prefill_then_decode(*model, same, ref.tokens, 16);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_LT(test::rel_error(got[i].data(), want[i].data(), got[i].size()), 1e-5)
          << name << " step " << i;
    EXPECT_EQ(same.stats().evicted_entries, 0);

    cfg.budget = BudgetSpec::parse("40%");
    CompressedKvCache snap(c, cfg, 64, test::cpu());
    const auto small = prefill_then_decode(*model, snap, ref.tokens, 16);
    const CompressionStats st = snap.stats();
    EXPECT_GT(st.evicted_entries, 0) << name;
    EXPECT_LT(st.live_entries, st.full_entries) << name;
    for (const auto& row : small)
      for (float x : row) ASSERT_TRUE(std::isfinite(x)) << name;
  }
}

}  // namespace
}  // namespace ekva
