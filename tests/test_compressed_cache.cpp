// The compressed cache on the shipped model: no-op budgets reproduce the full
// cache exactly; real budgets hold after every decode step (up to the eviction
// slack), protected tokens are never evicted, a batch of sequences with different
// budgets shares one store without leaking or sharing blocks, and feeding a
// recorded prefill through the cache's calls (what `ekva eval` does) is the same as
// a real forward.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "core/xz_file.h"
#include "ekva/error.h"
#include "kv/compressed_cache.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "runtime/prefill_recording.h"
#include "test_util.h"

namespace ekva {
namespace {

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models/ekva-moe-tiny";

const Model& model() {
  static const auto m = Model::load(kModel);
  return *m;
}

CompressionConfig config(const std::string& allocator, const std::string& policy,
                         const std::string& budget) {
  CompressionConfig c;
  c.allocator = allocator;
  c.policy = policy;
  c.budget = BudgetSpec::parse(budget);
  return c;
}

// Logits of prefill(prompt) then greedy decode `steps` tokens.
std::vector<std::vector<float>> run(KvCache& cache, const std::vector<int32_t>& prompt, int steps) {
  std::vector<std::vector<float>> out;
  std::vector<float> logits;
  model().forward(prompt, cache, logits, false, test::cpu());
  out.push_back(logits);
  for (int s = 0; s < steps; ++s) {
    const auto next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    model().forward({&next, 1}, cache, logits, false, test::cpu());
    out.push_back(logits);
  }
  return out;
}

// Against a full cache of the same K/V dtype (bf16, the default, and f32): the same
// stored values, so the same logits.
TEST(CompressedCache, FullBudgetReproducesTheFullCache) {
  const ModelConfig& c = model().config();
  const auto prompt = test::random_tokens(150, 1);
  for (const DType dtype : {DType::kBF16, DType::kF32}) {
    FullKvCache full(kv_cache_shape(c), 256, dtype);
    const auto want = run(full, prompt, 20);
    for (const auto& [alloc, policy, budget] :
         std::vector<std::tuple<std::string, std::string, std::string>>{
             {"uniform", "full", "10%"},
             {"uniform", "snapkv", "100%"},
             {"adakv", "h2o", "100%"},
             {"pyramidkv", "knorm", "100%"},
             {"uniform", "random", "4096"}}) {
      CompressionConfig cfg = config(alloc, policy, budget);
      cfg.kv_dtype = dtype;
      CompressedKvCache cache(c, cfg, 256, test::cpu());
      const auto got = run(cache, prompt, 20);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i)
        EXPECT_LT(test::rel_error(got[i].data(), want[i].data(), got[i].size()), 1e-5)
            << alloc << ":" << policy << "@" << budget << " " << dtype_name(dtype) << " step " << i;
      EXPECT_EQ(cache.stats().evicted_entries, 0);
    }
  }
}

// After every step: each segment within budget + slack, the protected tokens all
// present, and the bytes exact.
void check_invariants(CompressedKvCache& cache, const ModelConfig& c, int64_t length,
                      const StoreConfig& sc) {
  PagedKvStore& store = cache.store();
  std::vector<SegmentInfo> segs;
  for (int layer = 0; layer < c.n_layers; ++layer) {
    segs.clear();
    store.segments(cache.sequence(), layer, segs);
    const auto& budgets = cache.budgets()[static_cast<size_t>(layer)];
    if (budgets.empty()) continue;  // not compressed yet
    for (const SegmentInfo& s : segs) {
      const int64_t b = std::max<int64_t>(0, budgets[static_cast<size_t>(s.id)]);
      EXPECT_LE(s.n_entries, b + CompressedKvCache::slack(b))
          << "layer " << layer << " segment " << s.id;
    }
    for (int h = 0; h < c.n_kv_heads; ++h) {
      std::vector<KvChunk> chunks;
      cache.view(layer, h, chunks);
      std::set<int32_t> present;
      for (const KvChunk& ch : chunks)
        for (int64_t i = 0; i < ch.n; ++i)
          EXPECT_TRUE(present.insert(ch.positions[i]).second) << "duplicate";
      for (int32_t p = 0; p < std::min<int64_t>(sc.sink_tokens, length); ++p)
        EXPECT_TRUE(present.count(p)) << "sink " << p << " evicted";
      for (int64_t p = std::max<int64_t>(0, length - sc.recent_window); p < length; ++p)
        EXPECT_TRUE(present.count(static_cast<int32_t>(p))) << "recent " << p << " evicted";
    }
  }
  const CompressionStats st = cache.stats();
  EXPECT_EQ(st.bytes.kv,
            static_cast<size_t>(st.live_entries) * 2 * c.head_dim * dtype_size(sc.kv_dtype));
  EXPECT_EQ(cache.bytes_used(), st.bytes.reserved);  // the blocks held, not only live K/V
}

TEST(CompressedCache, BudgetsHoldDuringDecode) {
  const ModelConfig& c = model().config();
  const auto prompt = test::random_tokens(400, 2);
  for (const auto& [alloc, policy] :
       std::vector<std::pair<std::string, std::string>>{{"uniform", "snapkv"},
                                                        {"pyramidkv", "h2o"},
                                                        {"adakv", "snapkv"},
                                                        {"uniform", "knorm"},
                                                        {"uniform", "streamingllm"},
                                                        {"uniform", "random"}}) {
    const CompressionConfig cfg = config(alloc, policy, "15%");
    const StoreConfig sc = store_config_for(c, cfg, 1024);
    CompressedKvCache cache(c, cfg, 1024, test::cpu());
    std::vector<float> logits;
    model().forward(prompt, cache, logits, false, test::cpu());
    check_invariants(cache, c, 400, sc);
    const CompressionStats after_prompt = cache.stats();
    EXPECT_EQ(after_prompt.compressions, 1) << alloc << ":" << policy;
    // 15% of the full cache, but never below the protected entries.
    EXPECT_LE(after_prompt.live_entries,
              std::max(after_prompt.target_entries, after_prompt.protected_entries))
        << alloc << ":" << policy;
    for (int s = 0; s < 120; ++s) {
      const auto next =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      model().forward({&next, 1}, cache, logits, false, test::cpu());
      check_invariants(cache, c, 401 + s, sc);
      if (::testing::Test::HasFailure()) return;
    }
    EXPECT_GT(cache.stats().evicted_entries, after_prompt.evicted_entries)
        << "no eviction during decode";
  }
}

TEST(CompressedCache, BatchSharesOneStoreWithPerSequenceBudgets) {
  const ModelConfig& c = model().config();
  const auto cfg = [](const std::string& budget, DType dtype) {
    CompressionConfig x = config("uniform", "h2o", budget);
    x.kv_dtype = dtype;
    return x;
  };
  const DType dtype = DType::kBF16;  // the default
  PagedKvStore store(store_config_for(c, cfg("100%", dtype), 1024));
  std::vector<std::unique_ptr<CompressedKvCache>> seqs;
  const std::vector<std::string> budgets = {"100%", "20%", "10%"};
  for (const auto& b : budgets)
    seqs.push_back(std::make_unique<CompressedKvCache>(store, c, cfg(b, dtype), test::cpu()));
  std::vector<std::vector<float>> logits(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i)
    model().forward(test::random_tokens(300, 10 + i), *seqs[i], logits[i], false, test::cpu());
  for (int s = 0; s < 150; ++s) {
    for (size_t i = 0; i < seqs.size(); ++i) {  // interleaved decode steps
      const auto next = static_cast<int32_t>(std::max_element(logits[i].begin(), logits[i].end()) -
                                             logits[i].begin());
      model().forward({&next, 1}, *seqs[i], logits[i], false, test::cpu());
    }
    // No block held twice, none lost: the sequences' blocks are exactly the pool's.
    std::vector<int32_t> blocks;
    for (const auto& q : seqs) store.blocks(q->sequence(), blocks);
    std::set<int32_t> unique(blocks.begin(), blocks.end());
    ASSERT_EQ(unique.size(), blocks.size()) << "a block is shared";
    int64_t in_use = 0;
    for (int l = 0; l < c.n_layers; ++l) in_use += store.blocks_in_use(l);
    ASSERT_EQ(static_cast<int64_t>(blocks.size()), in_use) << "a block leaked";
  }
  // The uncompressed sequence matches its own full-cache run; the others hold less.
  FullKvCache full(kv_cache_shape(c), 1024, store.config().kv_dtype);
  const auto want = run(full, test::random_tokens(300, 10), 150);
  // The same stored dtype, so only summation order differs (one chunk per block
  // against one chunk); bf16 storage turns that f32 noise into the odd flipped
  // rounding of a K/V element, which 150 steps accumulate to ~5e-5 (f32: ~2e-7).
  EXPECT_LT(test::rel_error(logits[0].data(), want.back().data(), logits[0].size()), 5e-4);
  EXPECT_GT(seqs[0]->bytes_used(), seqs[1]->bytes_used());
  EXPECT_GT(seqs[1]->bytes_used(), seqs[2]->bytes_used());
  seqs.clear();
  for (int l = 0; l < c.n_layers; ++l) EXPECT_EQ(store.blocks_in_use(l), 0);
}

TEST(CompressedCache, ImpossibleBudgetsAndUnknownNamesAreClearErrors) {
  const ModelConfig& c = model().config();
  const auto expect_error = [&](const CompressionConfig& cfg, const char* fragment) {
    try {
      CompressedKvCache cache(c, cfg, 1024, test::cpu());
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr(fragment));
    }
  };
  expect_error(config("uniform", "snapkv", "8"), "protected");  // 8 tokens < sinks + window
  expect_error(config("uniform", "snapkv", "150%"), "150");
  // A fraction is checked at the longest sequence the cache takes: 1% of 1024 tokens
  // is 10 entries per (layer, kv-head), below the 36 sinks + recent window.
  expect_error(
      config("uniform", "snapkv", "1%"),
      "budget 1%: 163 entries of the full cache at the context of 1024 tokens is below the 576 "
      "protected entries");
  expect_error(config("adakv", "h2o", "0%"), "protected");
  expect_error(config("uniform", "lru", "10%"), "unknown policy 'lru'");
  expect_error(config("fancy", "snapkv", "10%"), "fancy");
  expect_error(config("ekva-mass", "snapkv", "10%"), "needs a calibration profile");
}

}  // namespace
}  // namespace ekva

namespace ekva {
namespace {

TEST(CompressedCache, ReplayedPrefillEqualsARealForward) {
  // What `ekva eval` relies on: a recorded prefill replayed into a cache leaves it
  // in the state a real forward would, compression included.
  const ModelConfig& c = model().config();
  const auto prompt = test::random_tokens(300, 5);
  for (const std::string policy : {"snapkv", "h2o"}) {
    const CompressionConfig cfg = config("adakv", policy, "12%");
    CompressedKvCache real(c, cfg, 512, test::cpu());
    CompressedKvCache replayed(c, cfg, 512, test::cpu());
    const auto want = run(real, prompt, 10);
    // Recorded through a full cache of the store's dtype: what the real prefill's attention read.
    const PrefillRecording rec =
        PrefillRecording::record(model(), prompt, test::cpu(), cfg.kv_dtype);
    rec.replay(replayed);
    EXPECT_LT(test::rel_error(rec.last_logits.data(), want[0].data(), want[0].size()), 1e-6);
    std::vector<float> logits = rec.last_logits;
    for (int s = 0; s < 10; ++s) {
      const auto next =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      model().forward({&next, 1}, replayed, logits, false, test::cpu());
      EXPECT_LT(
          test::rel_error(logits.data(), want[static_cast<size_t>(s + 1)].data(), logits.size()),
          1e-5)
          << policy << " step " << s;
    }
    EXPECT_EQ(replayed.stats().live_entries, real.stats().live_entries) << policy;
  }
}

}  // namespace
}  // namespace ekva

namespace ekva {
namespace {

// The paged store's memory at a 10% budget on the shipped model, as in
// bench/results/store_memory_*.json: a 4096-token pass-key prompt compressed after
// the prefill; the bytes the sequence holds (whole blocks: K, V and metadata) must
// stay within 1.10x of its live entries' K/V. EKVA_STORE_MEMORY_OUT=FILE writes
// the figures as JSON.
TEST(CompressedCache, HeldBytesStayWithinATenthOfLiveAtTenPercent) {
  const std::filesystem::path source(EKVA_SOURCE_DIR);
  std::istringstream in(read_text_file(source / "data/evalsets/retrieval.jsonl.xz"));
  std::string line, prompt;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.at("id") == "passkey-4096-d0.1-s0") prompt = j.at("prompt").get<std::string>();
  }
  ASSERT_FALSE(prompt.empty());
  const auto tokens = Tokenizer::from_model_dir(kModel).encode(prompt);
  const PrefillRecording rec = PrefillRecording::record(model(), tokens, test::cpu());
  const ModelConfig& c = model().config();
  const CalibrationProfile profile =
      CalibrationProfile::load(source / "bench/results/profile_ekva-moe-tiny.json", c);
  nlohmann::json rows = nlohmann::json::array();
  for (const std::string alloc : {"ekva-mass", "uniform"}) {
    for (const int block : {32, 16, 8}) {
      CompressionConfig cfg = config(alloc, "snapkv", "10%");
      cfg.profile = &profile;
      cfg.block_size = block;
      CompressedKvCache cache(c, cfg, static_cast<int64_t>(tokens.size()) + 1, test::cpu());
      rec.replay(cache);
      const CompressionStats st = cache.stats();
      const double held_over_live =
          static_cast<double>(st.bytes.reserved) / static_cast<double>(st.bytes.kv);
      EXPECT_EQ(cache.bytes_used(), st.bytes.reserved) << "the cache reports the bytes it holds";
      std::printf(
          "[ store memory ] %-12s B=%2d: %lld live entries, K/V %zu bytes, held %zu bytes "
          "(%.3fx)\n",
          alloc.c_str(), block, static_cast<long long>(st.live_entries), st.bytes.kv,
          st.bytes.reserved, held_over_live);
      if (block == 32) {
        EXPECT_LE(held_over_live, 1.10) << alloc << " at the default block size";
      }
      rows.push_back({{"allocator", alloc},
                      {"policy", "snapkv"},
                      {"budget", "10%"},
                      {"block_size", block},
                      {"live_entries", st.live_entries},
                      {"kv_bytes", st.bytes.kv},
                      {"metadata_bytes", st.bytes.metadata},
                      {"reserved_bytes", st.bytes.reserved},
                      {"reserved_over_kv", held_over_live}});
    }
  }
  if (const char* out = std::getenv("EKVA_STORE_MEMORY_OUT"))
    std::ofstream(out) << nlohmann::json{{"rows", rows}}.dump(2) << "\n";
}

}  // namespace
}  // namespace ekva
