// The decode path's attention allocates nothing once warm: refilling the chunk lists
// from the paged store's kept view, planning into the backend's workspace and the
// CPU attention itself (scored queries or not) make no heap allocation after the
// first calls have grown the buffers to the batch.
//
// Counts every call of the replaceable global operator new of this test program (all
// threads), so it must be the only replacement in the program.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "cpu/cpu_backend.h"
#include "kv/paged_store.h"
#include "ops/ops.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

// Under AddressSanitizer the runtime supplies operator new and delete; replacing some
// of them here (and not the nothrow forms the standard library also calls) pairs an
// ASan allocation with this file's free(), which ASan reports as a mismatch in every
// test of the binary. The count is then not taken and the test skips.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCountsAllocations = false;
#else
constexpr bool kCountsAllocations = true;
// Not inlined: once GCC inlines these into a call site it pairs the free() with
// `new` and warns (-Wmismatched-new-delete), although the pair is this file's own.
__attribute__((noinline)) void* operator new(std::size_t bytes) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(bytes > 0 ? bytes : 1)) return p;
  throw std::bad_alloc();
}
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

namespace ekva {
namespace {

TEST(HotPathAllocations, DecodeAttentionAllocatesNothingOnceWarm) {
  if (!kCountsAllocations)
    GTEST_SKIP() << "AddressSanitizer owns operator new here; the release build counts";
  const KvShape kv{1, 4, 64};
  const int n_heads = 16, E = 8, kSeqs = 3;
  StoreConfig sc;
  sc.shape = kv;
  sc.n_experts = E;
  sc.block_size = 16;
  sc.max_context = 4096;
  PagedKvStore store(sc);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<int> seqs;
  for (int i = 0; i < kSeqs; ++i) {
    const int seq = store.add_sequence();
    seqs.push_back(seq);
    const int64_t n = i < 2 ? 200 + 200 * i : 3000;  // ragged: the long lists are split
    std::vector<int32_t> pos(static_cast<size_t>(n)), tags(static_cast<size_t>(n));
    std::vector<float> k(static_cast<size_t>(n * kv.n_kv_heads * kv.head_dim)), v(k.size());
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    for (int64_t t = 0; t < n; ++t) {
      pos[static_cast<size_t>(t)] = static_cast<int32_t>(t);
      tags[static_cast<size_t>(t)] = static_cast<int32_t>(rng() % E);
    }
    store.cache(seq).append(0, pos, k.data(), v.data());
    store.cache(seq).tag(0, pos, tags.data());
  }

  CpuBackend backend(2);
  std::vector<std::vector<KvChunk>> lists(static_cast<size_t>(kSeqs * kv.n_kv_heads));
  std::vector<float> q(static_cast<size_t>(kSeqs * n_heads * kv.head_dim)), out(q.size());
  for (auto& x : q) x = 0.1f * normal(rng);
  std::vector<int32_t> q_pos, q_seq;
  for (int i = 0; i < kSeqs; ++i) {
    q_pos.push_back(static_cast<int32_t>(store.cache(seqs[static_cast<size_t>(i)]).length()));
    q_seq.push_back(i);
  }
  const std::vector<uint8_t> scored = {1, 0, 1};
  AttentionParams p;
  p.n_queries = kSeqs;
  p.n_heads = n_heads;
  p.n_kv_heads = kv.n_kv_heads;
  p.head_dim = kv.head_dim;
  p.scale = 1.f / std::sqrt(static_cast<float>(kv.head_dim));
  p.q = q.data();
  p.q_positions = q_pos.data();
  p.out = out.data();
  p.q_seq = q_seq.data();
  p.n_seqs = kSeqs;
  // One decode step's attention of one layer, as Model::attention_block makes it.
  const auto step = [&](bool score) {
    for (int i = 0; i < kSeqs; ++i)
      for (int h = 0; h < kv.n_kv_heads; ++h) {
        auto& list = lists[static_cast<size_t>(i * kv.n_kv_heads + h)];
        list.clear();
        store.cache(seqs[static_cast<size_t>(i)]).view(0, h, list);
      }
    p.q_scored = score ? scored.data() : nullptr;
    backend.attention(p, lists);
  };
  step(true);  // warm-up: the lists, plan and partials grow to the batch
  step(false);
  for (bool score : {false, true, false}) {
    const int64_t before = g_allocations.load();
    step(score);
    EXPECT_EQ(g_allocations.load() - before, 0) << (score ? "scored" : "unscored") << " step";
  }
  // The counter counts: a fresh plan allocates.
  const int64_t before = g_allocations.load();
  const AttentionPlan plan = plan_attention(p, lists);
  EXPECT_GT(g_allocations.load() - before, 0);
  EXPECT_GT(plan.items.size(), static_cast<size_t>(kSeqs * kv.n_kv_heads));  // lists split
}

}  // namespace
}  // namespace ekva
