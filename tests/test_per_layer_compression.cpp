// Compression layer by layer during the prefill (CompressionConfig::per_layer) on
// the shipped model: the forward pass and a replayed recording end every layer once,
// in order; the store's peak during a prefill at 10% is one uncompressed layer plus
// the compressed rest, the blocks eviction frees being reused by the next layer; for
// allocators whose layers do not compete beyond their live counts the result is the
// one of compressing after the last layer, entry for entry; ekva-mass, which predicts
// the later layers, holds the budget; a prompt fed in chunks is compressed in its
// last chunk, with the same result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kv/compressed_cache.h"
#include "kv/kv_arena.h"
#include "kv/profile.h"
#include "model/model.h"
#include "runtime/prefill_recording.h"
#include "test_util.h"

namespace ekva {
namespace {

const std::filesystem::path kSource(EKVA_SOURCE_DIR);

const Model& model() {
  static const auto m = Model::load(kSource / "models/ekva-moe-tiny");
  return *m;
}

const CalibrationProfile& profile() {
  static const CalibrationProfile p = CalibrationProfile::load(
      kSource / "bench/results/profile_ekva-moe-tiny.json", model().config());
  return p;
}

// One recording of a 1024-token prompt, shared by the tests (a prefill is the slow part).
const std::vector<int32_t>& prompt() {
  static const std::vector<int32_t> p = test::random_tokens(1024, 11);
  return p;
}
const PrefillRecording& recording() {
  static const PrefillRecording r =
      PrefillRecording::record(model(), prompt(), test::cpu(), DType::kBF16);
  return r;
}

CompressionConfig config(const std::string& allocator, const std::string& policy,
                         const std::string& budget, bool per_layer) {
  CompressionConfig c;
  c.allocator = allocator;
  c.policy = policy;
  c.budget = BudgetSpec::parse(budget);
  c.profile = &profile();
  c.per_layer = per_layer;
  return c;
}

// [layer * n_kv_heads + kv_head]: the positions of the entries a cache keeps.
std::vector<std::vector<int32_t>> kept_positions(const KvCache& cache) {
  const ModelConfig& c = model().config();
  std::vector<std::vector<int32_t>> out;
  std::vector<KvChunk> chunks;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      chunks.clear();
      cache.view(l, h, chunks);
      auto& p = out.emplace_back();
      for (const KvChunk& ch : chunks) p.insert(p.end(), ch.positions, ch.positions + ch.n);
    }
  }
  return out;
}

// The logits of one greedy decode step after the prompt.
std::vector<float> next_logits(KvCache& cache, std::span<const float> prompt_logits) {
  const auto next = static_cast<int32_t>(
      std::max_element(prompt_logits.begin(), prompt_logits.end()) - prompt_logits.begin());
  std::vector<float> logits;
  model().forward({&next, 1}, cache, logits, false, test::cpu());
  return logits;
}

// A full cache that logs the calls the forward pass makes.
class LoggingCache final : public KvCache {
 public:
  explicit LoggingCache(int64_t capacity)
      : full_({model().config().n_layers, model().config().n_kv_heads, model().config().head_dim},
              capacity) {}
  void append(int layer, std::span<const int32_t> positions, const float* k,
              const float* v) override {
    log.push_back("append " + std::to_string(layer));
    full_.append(layer, positions, k, v);
  }
  void tag(int layer, std::span<const int32_t>, const int32_t*) override {
    log.push_back("tag " + std::to_string(layer));
  }
  void end_layer(int layer) override { log.push_back("end_layer " + std::to_string(layer)); }
  void end_forward() override { log.push_back("end_forward"); }
  void view(int layer, int kv_head, std::vector<KvChunk>& out) const override {
    full_.view(layer, kv_head, out);
  }
  int64_t length() const override { return full_.length(); }
  size_t bytes_used() const override { return full_.bytes_used(); }
  void clear() override { full_.clear(); }

  std::vector<std::string> log;

 private:
  FullKvCache full_;
};

// What one forward call over the shipped model (every layer MoE) logs.
std::vector<std::string> expected_log(bool ends) {
  std::vector<std::string> want;
  for (int l = 0; l < model().config().n_layers; ++l) {
    want.push_back("append " + std::to_string(l));
    want.push_back("tag " + std::to_string(l));
    if (ends) want.push_back("end_layer " + std::to_string(l));
  }
  if (ends) want.push_back("end_forward");
  return want;
}

TEST(PerLayerCompression, ForwardAndReplayEndEveryLayerOnceInOrder) {
  const auto tokens = test::random_tokens(40, 3);
  std::vector<float> logits;
  LoggingCache forward(64);
  model().forward(tokens, forward, logits, false, test::cpu());
  EXPECT_EQ(forward.log, expected_log(true));

  // A prompt in chunks: the chunks with more to come end nothing; the last ends all.
  LoggingCache chunked(64);
  model().forward(tokens, chunked, logits, false, test::cpu(), nullptr, /*max_step=*/16);
  std::vector<std::string> want;
  for (int chunk = 0; chunk < 2; ++chunk)
    for (const std::string& s : expected_log(false)) want.push_back(s);
  for (const std::string& s : expected_log(true)) want.push_back(s);
  EXPECT_EQ(chunked.log, want);

  LoggingCache replayed(64);
  PrefillRecording::record(model(), tokens, test::cpu()).replay(replayed);
  EXPECT_EQ(replayed.log, expected_log(true));

  // A compressed cache checks the order.
  CompressedKvCache cache(model().config(), config("uniform", "snapkv", "50%", true), 1024,
                          test::cpu());
  test::expect_error([&] { cache.end_layer(1); }, {"end_layer(1)", "layer 0 was due"});
}

// Peak held bytes of a prefill replayed into a store of small slabs (16 blocks, so
// the mapped bytes follow the blocks closely).
struct Peak {
  size_t held = 0, mapped = 0, full = 0, full_mapped = 0;
  int64_t live_entries = 0, target_entries = 0;
};

Peak prefill_peak(const CompressionConfig& cfg) {
  const ModelConfig& c = model().config();
  const auto T = static_cast<int64_t>(prompt().size());
  StoreConfig sc = store_config_for(kv_shape_of(c), cfg, T + 1);
  sc.slab_blocks = 16;
  PagedKvStore store(sc);
  CompressedKvCache cache(store, kv_shape_of(c), cfg, test::cpu());
  store.reset_peak();
  recording().replay(cache);
  Peak p;
  p.held = store.peak_reserved_bytes();
  p.mapped = store.arena().peak_reserved_bytes();
  const int64_t B = sc.block_size;
  const int64_t full_blocks = (T + B - 1) / B * c.n_layers * c.n_kv_heads;
  p.full = static_cast<size_t>(full_blocks) * store.block_bytes();
  p.full_mapped = static_cast<size_t>((full_blocks + 15) / 16 * 16) * store.arena().block_bytes();
  const CompressionStats st = cache.stats();
  p.live_entries = st.live_entries;
  p.target_entries = st.target_entries;
  // Blocks freed by one layer's eviction were taken by the next layer's entries: the
  // arena mapped a slab only when every mapped one was full.
  const size_t slab = size_t{16} * store.arena().block_bytes();
  const size_t held_kv = p.held / store.block_bytes() * store.arena().block_bytes();
  EXPECT_LE(p.mapped, (held_kv + slab - 1) / slab * slab + slab) << cfg.allocator;
  EXPECT_LE(store.arena().reserved_bytes(), p.mapped) << "the arena never grows past its peak";
  return p;
}

TEST(PerLayerCompression, PeakDuringPrefillIsOneLayerPlusTheCompressedRest) {
  for (const std::string allocator : {"uniform", "adakv", "ekva-entropy", "ekva-mass"}) {
    const Peak on = prefill_peak(config(allocator, "snapkv", "10%", true));
    const Peak off = prefill_peak(config(allocator, "snapkv", "10%", false));
    std::printf("[ per-layer peak ] %-12s on: held %zu (%.3f of full %zu), mapped %zu; off: %zu\n",
                allocator.c_str(), on.held,
                static_cast<double>(on.held) / static_cast<double>(on.full), on.full, on.mapped,
                off.held);
    EXPECT_LT(static_cast<double>(on.held), 0.35 * static_cast<double>(on.full)) << allocator;
    EXPECT_LT(static_cast<double>(on.mapped), 0.35 * static_cast<double>(on.full_mapped))
        << allocator;
    EXPECT_EQ(off.held, off.full) << allocator << ": after the last layer, the whole prompt";
    EXPECT_LE(on.live_entries, on.target_entries) << allocator;
    if (allocator != "ekva-mass") {
      EXPECT_EQ(on.live_entries, off.live_entries) << allocator;
    }
  }
}

// Per layer against after the last layer, the same recording replayed, or the same
// prompt run through the model: the same entries in every (layer, kv-head), the same
// budgets, and the same logits at the next decode step.
TEST(PerLayerCompression, LayerIndependentAllocatorsGiveTheEndOfForwardResult) {
  const ModelConfig& c = model().config();
  const auto T = static_cast<int64_t>(prompt().size());
  for (const std::string allocator : {"uniform", "pyramidkv", "adakv", "ekva-entropy"}) {
    for (const std::string policy : {"snapkv", "h2o", "random"}) {
      CompressedKvCache on(c, config(allocator, policy, "10%", true), T + 2, test::cpu());
      CompressedKvCache off(c, config(allocator, policy, "10%", false), T + 2, test::cpu());
      recording().replay(on);
      recording().replay(off);
      const std::string what = allocator + ":" + policy;
      EXPECT_EQ(on.stats().compressions, 1) << what;
      EXPECT_LT(on.stats().live_entries, on.stats().full_entries / 5) << what;
      EXPECT_EQ(kept_positions(on), kept_positions(off)) << what;
      EXPECT_EQ(on.budgets(), off.budgets()) << what;
      EXPECT_EQ(next_logits(on, recording().last_logits), next_logits(off, recording().last_logits))
          << what;
    }
  }
  // Through Model::forward (scores from the attention op itself).
  CompressedKvCache on(c, config("adakv", "snapkv", "10%", true), T + 2, test::cpu());
  CompressedKvCache off(c, config("adakv", "snapkv", "10%", false), T + 2, test::cpu());
  std::vector<float> logits_on, logits_off;
  model().forward(prompt(), on, logits_on, false, test::cpu());
  model().forward(prompt(), off, logits_off, false, test::cpu());
  EXPECT_EQ(kept_positions(on), kept_positions(off));
  EXPECT_EQ(next_logits(on, logits_on), next_logits(off, logits_off));
}

// ekva-mass predicts the later layers from the calibration profile, so its per-layer
// budgets differ from those after the last layer; the total budget still holds and
// the split over layers stays close.
TEST(PerLayerCompression, EkvaMassHoldsTheBudgetLayerByLayer) {
  const ModelConfig& c = model().config();
  const auto T = static_cast<int64_t>(prompt().size());
  CompressedKvCache on(c, config("ekva-mass", "snapkv", "10%", true), T + 2, test::cpu());
  CompressedKvCache off(c, config("ekva-mass", "snapkv", "10%", false), T + 2, test::cpu());
  recording().replay(on);
  recording().replay(off);
  EXPECT_LE(on.stats().live_entries, on.stats().target_entries);
  EXPECT_EQ(on.stats().compressions, 1);
  int64_t moved = 0, total = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const auto sum = [&](const CompressedKvCache& cache) {
      int64_t s = 0;
      for (int64_t b : cache.budgets()[static_cast<size_t>(l)]) s += std::max<int64_t>(0, b);
      return s;
    };
    moved += std::abs(sum(on) - sum(off));
    total += sum(off);
  }
  const double moved_fraction = static_cast<double>(moved) / 2.0 / static_cast<double>(total);
  std::printf("[ per-layer ekva-mass ] %.4f of the budget moved between layers\n", moved_fraction);
  EXPECT_LT(moved_fraction, 0.25);
  const auto want = next_logits(off, recording().last_logits);
  const auto got = next_logits(on, recording().last_logits);
  EXPECT_LT(test::rel_error(got.data(), want.data(), want.size()), 0.5);
}

// A prompt fed in several forward calls is compressed in its last call, layer by
// layer there: the result of one call, per layer or not.
TEST(PerLayerCompression, ChunkedPrefillCompressesInItsLastChunk) {
  const ModelConfig& c = model().config();
  const auto T = static_cast<int64_t>(prompt().size());
  CompressedKvCache chunked_on(c, config("uniform", "snapkv", "10%", true), T + 2, test::cpu());
  CompressedKvCache chunked_off(c, config("uniform", "snapkv", "10%", false), T + 2, test::cpu());
  CompressedKvCache whole(c, config("uniform", "snapkv", "10%", true), T + 2, test::cpu());
  std::vector<float> logits_on, logits_off, logits_whole;
  model().forward(prompt(), chunked_on, logits_on, false, test::cpu(), nullptr, 300);
  model().forward(prompt(), chunked_off, logits_off, false, test::cpu(), nullptr, 300);
  model().forward(prompt(), whole, logits_whole, false, test::cpu());
  EXPECT_EQ(chunked_on.stats().compressions, 1);
  EXPECT_EQ(chunked_on.stats().live_entries, whole.stats().live_entries);
  EXPECT_EQ(kept_positions(chunked_on), kept_positions(chunked_off));
  EXPECT_EQ(next_logits(chunked_on, logits_on), next_logits(chunked_off, logits_off));
  // Chunks and the whole prompt differ in GEMM shapes, so in rounding: the same
  // prompt through a full cache in the same chunks sets the scale (3e-4 on an
  // AVX-512 host, below 1e-4 on AVX2 ones).
  const int64_t context = T + 2;
  FullKvCache full_chunked(kv_cache_shape(c), context, DType::kBF16);
  FullKvCache full_whole(kv_cache_shape(c), context, DType::kBF16);
  std::vector<float> full_chunked_logits, full_whole_logits;
  model().forward(prompt(), full_chunked, full_chunked_logits, false, test::cpu(), nullptr, 300);
  model().forward(prompt(), full_whole, full_whole_logits, false, test::cpu());
  const double rounding = test::rel_error(full_chunked_logits.data(), full_whole_logits.data(),
                                          full_whole_logits.size());
  const double err = test::rel_error(logits_on.data(), logits_whole.data(), logits_whole.size());
  std::printf("[ chunked prefill ] compressed %.2e, full cache %.2e\n", err, rounding);
  EXPECT_LT(err, std::max(1e-4, 4 * rounding));
}

// Decode after a per-layer prefill: the budgets hold and the sequence keeps its sinks
// and recent window, as after a prefill compressed at its end.
TEST(PerLayerCompression, DecodeAfterAPerLayerPrefillKeepsTheBudget) {
  const ModelConfig& c = model().config();
  const auto T = static_cast<int64_t>(prompt().size());
  CompressedKvCache on(c, config("ekva-mass", "snapkv", "10%", true), T + 64, test::cpu());
  recording().replay(on);
  std::vector<float> logits = recording().last_logits;
  for (int s = 0; s < 48; ++s) logits = next_logits(on, logits);
  const CompressionStats st = on.stats();
  EXPECT_EQ(on.length(), T + 48);
  // Within the target up to the eviction slack of every segment.
  int64_t slack = 0;
  for (const auto& layer : on.budgets())
    for (int64_t b : layer) slack += CompressedKvCache::slack(std::max<int64_t>(0, b));
  EXPECT_LE(st.live_entries, st.target_entries + slack);
  for (const auto& p : kept_positions(on)) {
    ASSERT_GE(p.size(), 36u);
    EXPECT_EQ(p.front(), 0);
    EXPECT_EQ(p.back(), T + 47);
  }
}

TEST(KvArena, PeakReservedBytesFollowTheMappedSlabs) {
  KvArena arena({.block_size = 4, .head_dim = 8, .slab_blocks = 4, .max_empty_slabs = 0});
  const size_t slab = 4 * arena.block_bytes();
  std::vector<int32_t> blocks;
  for (int i = 0; i < 10; ++i) blocks.push_back(arena.allocate());  // 3 slabs
  EXPECT_EQ(arena.peak_reserved_bytes(), 3 * slab);
  for (int32_t b : blocks) arena.release(b);
  EXPECT_EQ(arena.reserved_bytes(), 0u);
  EXPECT_EQ(arena.peak_reserved_bytes(), 3 * slab);
  arena.reset_peak();
  EXPECT_EQ(arena.peak_reserved_bytes(), 0u);
  blocks.clear();
  for (int i = 0; i < 4; ++i) blocks.push_back(arena.allocate());
  arena.release(blocks[1]);
  blocks.push_back(arena.allocate());  // the freed block again, no new slab
  EXPECT_EQ(blocks.back(), blocks[1]);
  EXPECT_EQ(arena.peak_reserved_bytes(), slab);
}

// H2O's scores recorded by the prefill's own attention (every query scored) replace
// the replay's scoring pass: the same entries are kept, from the whole prompt and
// from a prefix (the split), as when each replay scores its queries itself.
TEST(PrefillRecordingScores, RecordedAllQueryScoresKeepWhatTheScoringPassKeeps) {
  const ModelConfig& c = model().config();
  const auto T = static_cast<int64_t>(prompt().size());
  const int64_t split = T - 37;
  const PrefillRecording scored = PrefillRecording::record(
      model(), prompt(), test::cpu(), DType::kBF16, {.all_query_scores = true, .split = split});
  ASSERT_EQ(scored.size(), T);
  ASSERT_EQ(scored.scores.size(), static_cast<size_t>(c.n_layers));
  ASSERT_EQ(scored.split_scores.front().size(), static_cast<size_t>(split * c.n_kv_heads));
  // The recorded tensors are one call's, up to the rounding of the split's GEMM shapes.
  ASSERT_EQ(scored.k.back().size(), recording().k.back().size());
  EXPECT_LT(test::rel_error(scored.k.back().data(), recording().k.back().data(),
                            recording().k.back().size()),
            1e-3);
  for (const int64_t n : {T, split}) {
    for (const char* allocator : {"uniform", "adakv"}) {
      CompressedKvCache by_record(c, config(allocator, "h2o", "10%", true), T + 2, test::cpu());
      CompressedKvCache by_pass(c, config(allocator, "h2o", "10%", true), T + 2, test::cpu());
      scored.replay(by_record, n);
      recording().replay(by_pass, n);  // no recorded scores: the scoring pass
      const auto a = kept_positions(by_record);
      auto b = kept_positions(by_pass);
      for (auto& positions : b) std::sort(positions.begin(), positions.end());
      int64_t same = 0, total = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        total += static_cast<int64_t>(b[i].size());
        for (int32_t p : a[i]) same += std::binary_search(b[i].begin(), b[i].end(), p);
      }
      // Rounding (two computations of the same probabilities) may swap a few near ties.
      EXPECT_GE(static_cast<double>(same), 0.99 * static_cast<double>(total))
          << allocator << " n=" << n << ": " << same << " of " << total;
      EXPECT_EQ(by_record.stats().live_entries, by_pass.stats().live_entries);
    }
  }
  // A replay longer than the recording is an error.
  CompressedKvCache cache(c, config("uniform", "h2o", "10%", true), T + 2, test::cpu());
  EXPECT_THROW(scored.replay(cache, T + 1), Error);
}

}  // namespace
}  // namespace ekva
