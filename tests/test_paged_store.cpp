// The K/V arena, the cells and the ragged paged KV store: bf16 storage holds the
// inputs rounded to nearest even in half the bytes of f32; attention over the store
// equals the reference attention over a full cache of the same dtype while nothing is
// evicted; tags send entries to their expert segments; keep() compacts survivors
// exactly; a long decode soak with periodic eviction keeps every invariant (protected
// tokens, budgets, no block lost or shared, payloads intact, exact bytes) in bf16 and
// f32; bad use fails with a clear message.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <string>

#include "core/thread_pool.h"
#include "cpu/kernels.h"
#include "ekva/error.h"
#include "kv/kv_arena.h"
#include "kv/kv_cache.h"
#include "kv/kv_cells.h"
#include "kv/paged_store.h"
#include "ops/ops.h"
#include "test_util.h"

namespace ekva {

// Test names say the dtype ("bf16", "f32"), not its byte.
inline void PrintTo(DType dtype, std::ostream* os) {
  *os << (dtype == DType::kBF16 ? "bf16" : "f32");
}

inline void PrintTo(Granularity g, std::ostream* os) {
  constexpr const char* kNames[] = {"per-layer", "per-head", "per-expert", "per-head-expert"};
  *os << kNames[static_cast<int>(g)];
}

namespace {

// Runs fn and expects an ekva::Error whose message contains `what`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing '" << what << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

// K and V rows whose values say which entry they belong to (exact small integers),
// so a test can tell that an entry's K, V and position stayed together.
float k_value(int seq, int layer, int head, int32_t pos, int d) {
  if (d == 0) return static_cast<float>(pos);
  if (d == 1) return static_cast<float>((seq * 10 + layer) * 10 + head);
  return static_cast<float>((pos * 31 + d * 7) % 1009);
}
float v_value(int seq, int layer, int head, int32_t pos, int d) {
  return -k_value(seq, layer, head, pos, d) - 0.5f;
}

// k, v [n, n_kv_heads, head_dim] for `positions`, filled with k_value / v_value.
void labelled_kv(int seq, int layer, const KvShape& shape, std::span<const int32_t> positions,
                 std::vector<float>& k, std::vector<float>& v) {
  const size_t n = positions.size(), H = static_cast<size_t>(shape.n_kv_heads),
               D = static_cast<size_t>(shape.head_dim);
  k.resize(n * H * D);
  v.resize(n * H * D);
  for (size_t t = 0; t < n; ++t)
    for (size_t h = 0; h < H; ++h)
      for (size_t d = 0; d < D; ++d) {
        const auto hd = static_cast<int>(h), dd = static_cast<int>(d);
        k[(t * H + h) * D + d] = k_value(seq, layer, hd, positions[t], dd);
        v[(t * H + h) * D + d] = v_value(seq, layer, hd, positions[t], dd);
      }
}

std::vector<int32_t> iota_positions(int64_t first, int64_t n) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = static_cast<int32_t>(first + i);
  return p;
}

// Positions of runs, in run order.
std::vector<int32_t> run_positions(const std::vector<EntryRun>& runs) {
  std::vector<int32_t> out;
  for (const EntryRun& r : runs) out.insert(out.end(), r.positions, r.positions + r.n);
  return out;
}

std::vector<EntryRun> segment_runs(PagedKvStore& store, int seq, int layer, int segment) {
  std::vector<EntryRun> runs;
  store.segment_runs(seq, layer, segment, runs);
  return runs;
}

std::vector<EntryRun> view_runs(PagedKvStore& store, int seq, int layer, int kv_head) {
  std::vector<EntryRun> runs;
  store.view_runs(seq, layer, kv_head, runs);
  return runs;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The reference for the kept view: a fresh walk of the block lists (view_runs walks
// them), runs that continue in the same block merged back into one chunk per block.
std::vector<KvChunk> walked_view(PagedKvStore& store, int seq, int layer, int kv_head) {
  const size_t row = store.arena().row_bytes();
  std::vector<KvChunk> out;
  for (const EntryRun& r : view_runs(store, seq, layer, kv_head)) {
    if (!out.empty()) {
      KvChunk& last = out.back();
      if (r.positions == last.positions + last.n &&
          r.k == static_cast<const std::byte*>(last.k) + static_cast<size_t>(last.n) * row) {
        last.n += r.n;
        continue;
      }
    }
    out.push_back({r.k, r.v, r.positions, r.n, r.dtype, r.scores});
  }
  return out;
}

// The kept view of every (layer, kv-head) of `seq` equals the walk: the same chunks
// through view_list() and KvCache::view() (which appends), each run naming its block
// and slot, and the runs' blocks, in order, are the sequence's block lists.
void expect_view_matches_walk(PagedKvStore& store, int seq, const KvShape& kv) {
  const int64_t B = store.config().block_size;
  std::vector<int32_t> run_blocks, list_blocks;
  for (int layer = 0; layer < kv.n_layers; ++layer) {
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      SCOPED_TRACE("sequence " + std::to_string(seq) + " layer " + std::to_string(layer) +
                   " kv-head " + std::to_string(h));
      const std::vector<KvChunk> want = walked_view(store, seq, layer, h);
      const std::span<const ViewRun> runs = store.view_list(seq, layer, h);
      std::vector<KvChunk> got(1);  // view() appends after what is there
      store.cache(seq).view(layer, h, got);
      ASSERT_EQ(runs.size(), want.size());
      ASSERT_EQ(got.size(), want.size() + 1);
      for (size_t i = 0; i < want.size(); ++i) {
        const KvChunk& w = want[i];
        for (const KvChunk& c : {runs[i].chunk, got[i + 1]}) {
          ASSERT_EQ(c.k, w.k) << "run " << i;
          ASSERT_EQ(c.v, w.v) << "run " << i;
          ASSERT_EQ(c.positions, w.positions) << "run " << i;
          ASSERT_EQ(c.scores, w.scores) << "run " << i;
          ASSERT_EQ(c.n, w.n) << "run " << i;
          ASSERT_EQ(c.dtype, w.dtype);
        }
        const ViewRun& r = runs[i];
        ASSERT_EQ(r.chunk.k, static_cast<const std::byte*>(store.arena().k(r.block)) +
                                 static_cast<size_t>(r.first_slot) * store.arena().row_bytes());
        ASSERT_EQ(r.chunk.positions, store.cells().positions(r.block) + r.first_slot);
        // Full blocks but the last.
        ASSERT_EQ(r.chunk.n, i + 1 < want.size() ? B : r.chunk.n);
        ASSERT_GT(r.chunk.n, 0);
        ASSERT_LE(r.first_slot + r.chunk.n, B);
        run_blocks.push_back(r.block);
      }
    }
  }
  store.blocks(seq, list_blocks);
  ASSERT_EQ(run_blocks, list_blocks);
}

// What a store of `dtype` holds for the f32 value x: x rounded to nearest even in bf16.
float stored(DType dtype, float x) {
  return dtype == DType::kBF16 ? bf16_to_f32(f32_to_bf16(x)) : x;
}

std::string dtype_label(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }

StoreConfig store_config(KvShape kv, int n_experts, int block_size, Granularity granularity,
                         int sinks, int window, int64_t max_context, DType dtype,
                         int slab_blocks = 0) {
  StoreConfig c{kv, n_experts, block_size, granularity, sinks, window, max_context, slab_blocks};
  c.kv_dtype = dtype;
  return c;
}

TEST(KvArena, RecyclesBlocksAndReturnsEmptySlabs) {
  KvArena pool(
      {/*block_size=*/4, /*head_dim=*/3, DType::kF32, /*slab_blocks=*/3, /*max_empty_slabs=*/0});
  KvCells cells(4, pool.slab_shift());
  EXPECT_EQ(pool.slab_blocks(), 4);  // rounded up to a power of two
  EXPECT_EQ(pool.block_bytes() % 64, 0u);
  std::vector<int32_t> blocks;
  for (int i = 0; i < 10; ++i) {
    blocks.push_back(pool.allocate());
    cells.add(blocks.back());
  }
  EXPECT_EQ(std::set<int32_t>(blocks.begin(), blocks.end()).size(), 10u);
  EXPECT_EQ(pool.blocks_in_use(), 10);
  EXPECT_EQ(pool.blocks_free(), 2);
  EXPECT_EQ(pool.slabs_mapped(), 3);
  EXPECT_EQ(pool.reserved_bytes(), 3 * 4 * pool.block_bytes());
  EXPECT_EQ(pool.offset(blocks[5]), static_cast<size_t>(blocks[5] & 3) * pool.block_bytes());
  const auto k_of = [&](int32_t b) { return static_cast<const float*>(pool.k(b)); };
  const auto v_of = [&](int32_t b) { return static_cast<const float*>(pool.v(b)); };
  // Every array of every block is distinct memory: fill all, then read all back.
  for (int32_t b : blocks) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pool.k(b)) % 64, 0u);
    const float kr[3] = {static_cast<float>(b), static_cast<float>(b), static_cast<float>(b)};
    const float vr[3] = {-kr[0], -kr[0], -kr[0]};
    for (int i = 0; i < 4; ++i) {
      pool.write(b, i, kr, vr);
      cells.positions(b)[i] = b;
      cells.tags(b)[i] = b + 1;
      cells.scores(b)[i] = static_cast<float>(b + 2);
    }
  }
  for (int32_t b : blocks) {
    for (int i = 0; i < 4 * 3; ++i) ASSERT_TRUE(k_of(b)[i] == b && v_of(b)[i] == -b);
    for (int i = 0; i < 4; ++i)
      ASSERT_TRUE(cells.positions(b)[i] == b && cells.tags(b)[i] == b + 1 &&
                  cells.scores(b)[i] == b + 2);
  }
  // Emptying the middle slab returns it to the OS at once (max_empty_slabs = 0).
  for (int i = 4; i < 8; ++i) {
    pool.release(blocks[static_cast<size_t>(i)]);
    cells.remove(blocks[static_cast<size_t>(i)]);
  }
  EXPECT_EQ(pool.slabs_mapped(), 2);
  EXPECT_EQ(pool.blocks_in_use(), 6);
  EXPECT_EQ(pool.blocks_free(), 2);
  EXPECT_FALSE(pool.in_use(blocks[4]));
  expect_error([&] { pool.release(blocks[4]); }, "released but not in use");
  expect_error([&] { cells.remove(blocks[4]); }, "removed but never added");
  // The lowest slab with room is used first: the free blocks of slab 2, then slab 1
  // is mapped again.
  EXPECT_EQ(pool.allocate() >> 2, 2);
  EXPECT_EQ(pool.allocate() >> 2, 2);
  EXPECT_EQ(pool.allocate() >> 2, 1);
  EXPECT_EQ(pool.slabs_mapped(), 3);

  // Draining: with slab 0 emptied (and returned), the live blocks are one in slab 1
  // and two in slab 2; the one in slab 1 moves to slab 2, with its K/V, and slab 1
  // goes back to the OS.
  for (int i : {0, 1, 2, 3, 8, 9}) pool.release(blocks[static_cast<size_t>(i)]);
  std::vector<int32_t> live;
  for (int32_t b = 0; b < 12; ++b)
    if (pool.in_use(b)) live.push_back(b);
  ASSERT_EQ(live, (std::vector<int32_t>{4, 10, 11}));
  EXPECT_EQ(pool.slabs_mapped(), 2);
  const float k4[3] = {1.f, 2.f, 3.f}, v4[3] = {-1.f, -2.f, -3.f};
  pool.write(4, 3, k4, v4);
  EXPECT_EQ(pool.begin_drain(), 1);
  EXPECT_TRUE(pool.draining(4));
  EXPECT_FALSE(pool.draining(10));
  const int32_t moved = pool.move(4);
  EXPECT_EQ(moved >> 2, 2);
  EXPECT_EQ(k_of(moved)[3 * 3 + 2], 3.f);
  EXPECT_EQ(v_of(moved)[3 * 3 + 1], -2.f);
  EXPECT_EQ(pool.end_drain(), 1);
  EXPECT_EQ(pool.slabs_mapped(), 1);
  EXPECT_EQ(pool.blocks_in_use(), 3);

  KvArena lazy({4, 3, DType::kBF16, 4, /*max_empty_slabs=*/1});
  std::vector<int32_t> more;
  for (int i = 0; i < 12; ++i) more.push_back(lazy.allocate());
  for (int32_t b : more) lazy.release(b);
  EXPECT_EQ(lazy.slabs_mapped(), 1);  // one empty slab kept against churn
  EXPECT_EQ(lazy.blocks_free(), 4);
  EXPECT_EQ(lazy.release_empty_slabs(), 1);
  EXPECT_EQ(lazy.slabs_mapped(), 0);
  EXPECT_EQ(lazy.reserved_bytes(), 0u);
  expect_error([] { KvArena bad({4, 3, DType::kF16}); }, "K/V are stored in bf16 or f32, not F16");
}

// bf16 storage: every value written comes back rounded to nearest even (ties to the
// even mantissa, NaN kept), copies move the 16-bit payloads unchanged, and a block
// takes exactly half the bytes of an f32 one.
TEST(KvArena, Bf16RoundTripAndHalfTheBytes) {
  constexpr int B = 32, D = 64;
  KvArena bf16({B, D, DType::kBF16, 4});
  KvArena f32({B, D, DType::kF32, 4});
  EXPECT_EQ(bf16.row_bytes(), size_t{D} * 2);
  EXPECT_EQ(2 * bf16.block_bytes(), f32.block_bytes());
  const int32_t a = bf16.allocate(), b = bf16.allocate();
  std::vector<float> k = test::random_floats(size_t{B} * D, 7, 3.f),
                     v = test::random_floats(size_t{B} * D, 8);
  // Exact ties: 1 + 2^-8 rounds down to 1 (even), 1 + 3 * 2^-8 up to 1 + 2^-6.
  k[0] = 1.00390625f;
  k[1] = 1.01171875f;
  k[2] = -1.00390625f;
  k[3] = std::numeric_limits<float>::quiet_NaN();
  for (int i = 0; i < B; ++i)
    bf16.write(a, i, &k[static_cast<size_t>(i) * D], &v[static_cast<size_t>(i) * D]);
  const auto* ka = static_cast<const uint16_t*>(bf16.k(a));
  const auto* va = static_cast<const uint16_t*>(bf16.v(a));
  EXPECT_EQ(bf16_to_f32(ka[0]), 1.f);
  EXPECT_EQ(bf16_to_f32(ka[1]), 1.015625f);
  EXPECT_EQ(bf16_to_f32(ka[2]), -1.f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(ka[3])));
  for (size_t i = 4; i < k.size(); ++i) {
    ASSERT_EQ(ka[i], f32_to_bf16(k[i])) << i;
    ASSERT_EQ(va[i], f32_to_bf16(v[i])) << i;
    ASSERT_LE(std::abs(bf16_to_f32(ka[i]) - k[i]), std::abs(k[i]) * (1.f / 256)) << i;
  }
  // Overlapping and cross-block copies keep the payload bits.
  bf16.copy_entries(a, 5, b, 0, 10);
  bf16.copy_entries(a, 1, a, 0, 31);
  const auto* kb = static_cast<const uint16_t*>(bf16.k(b));
  for (int i = 0; i < 10 * D; ++i)
    ASSERT_EQ(kb[i], f32_to_bf16(k[size_t{5} * D + static_cast<size_t>(i)])) << i;
  for (int i = 0; i < 31 * D; ++i)
    ASSERT_EQ(va[i], f32_to_bf16(v[size_t{D} + static_cast<size_t>(i)])) << i;
}

// Without eviction, attention over the chunks of each sequence's store view equals
// the reference attention over a FullKvCache of the same dtype fed the same appends
// (so the same stored values): both dtypes, several block sizes, GQA shapes, both
// ends of the granularity range, three sequences appended in turns.
struct AttentionShape {
  int n_heads, n_kv_heads, head_dim;
};

using PagedVsFullParam = std::tuple<int /*block_size*/, AttentionShape, Granularity, DType>;
class PagedVsFull : public ::testing::TestWithParam<PagedVsFullParam> {};

TEST_P(PagedVsFull, AttentionMatchesWithoutEviction) {
  // Not a structured binding: the lambda below captures these (clang 14 cannot).
  const int block_size = std::get<0>(GetParam());
  const AttentionShape shape = std::get<1>(GetParam());
  const Granularity granularity = std::get<2>(GetParam());
  const DType dtype = std::get<3>(GetParam());
  const KvShape kv{2, shape.n_kv_heads, shape.head_dim};
  const int E = 4;
  PagedKvStore store(store_config(kv, E, block_size, granularity, /*sinks=*/4, /*window=*/8,
                                  /*max_context=*/256, dtype));
  ThreadPool pool(2);
  std::mt19937 rng(block_size * 100 + shape.head_dim);
  const int n_seqs = 3;
  std::vector<int> seqs;
  std::vector<std::unique_ptr<FullKvCache>> full;
  for (int i = 0; i < n_seqs; ++i) {
    seqs.push_back(store.add_sequence());
    full.push_back(std::make_unique<FullKvCache>(kv, 256, dtype));
  }
  // One forward-like call: per layer append, attend the new tokens, tag (layer 0 is
  // MoE, layer 1 dense).
  const auto step = [&](int i, int64_t n_tokens) {
    KvCache& paged = store.cache(seqs[static_cast<size_t>(i)]);
    KvCache& ref = *full[static_cast<size_t>(i)];
    ASSERT_EQ(paged.length(), ref.length());
    const auto positions = iota_positions(ref.length(), n_tokens);
    for (int layer = 0; layer < 2; ++layer) {
      const size_t kv_size = static_cast<size_t>(n_tokens * kv.n_kv_heads * kv.head_dim);
      const auto k = test::random_floats(kv_size, rng());
      const auto v = test::random_floats(kv_size, rng());
      paged.append(layer, positions, k.data(), v.data());
      ref.append(layer, positions, k.data(), v.data());
      std::vector<std::vector<KvChunk>> paged_chunks(static_cast<size_t>(kv.n_kv_heads)),
          ref_chunks(static_cast<size_t>(kv.n_kv_heads));
      for (int h = 0; h < kv.n_kv_heads; ++h) {
        paged.view(layer, h, paged_chunks[static_cast<size_t>(h)]);
        ref.view(layer, h, ref_chunks[static_cast<size_t>(h)]);
        int64_t n = 0;
        for (const KvChunk& c : paged_chunks[static_cast<size_t>(h)]) {
          EXPECT_LE(c.n, block_size);
          EXPECT_EQ(c.dtype, dtype);
          n += c.n;
        }
        EXPECT_EQ(n, ref.length());
      }
      const auto q = test::random_floats(
          static_cast<size_t>(n_tokens * shape.n_heads * shape.head_dim), rng());
      std::vector<float> out(q.size()), out_ref(q.size());
      AttentionParams p;
      p.n_queries = n_tokens;
      p.n_heads = shape.n_heads;
      p.n_kv_heads = shape.n_kv_heads;
      p.head_dim = shape.head_dim;
      p.scale = 1.f / std::sqrt(static_cast<float>(shape.head_dim));
      p.q = q.data();
      p.q_positions = positions.data();
      p.out = out.data();
      cpu::attention(p, paged_chunks, pool);
      p.out = out_ref.data();
      ref::attention(p, ref_chunks);
      EXPECT_LT(test::rel_error(out.data(), out_ref.data(), out.size()), 1e-5)
          << dtype_label(dtype) << " sequence " << i << " layer " << layer << " at "
          << positions.front();
      if (layer == 0) {
        std::vector<int32_t> tags(static_cast<size_t>(n_tokens));
        for (auto& t : tags) t = static_cast<int32_t>(rng() % E);
        paged.tag(layer, positions, tags.data());
      }
    }
    // The same live K/V; the paged cache reports the whole blocks it holds.
    const StoreBytes bytes = store.bytes(seqs[static_cast<size_t>(i)]);
    EXPECT_EQ(bytes.kv, ref.bytes_used());
    EXPECT_EQ(paged.bytes_used(), bytes.reserved);
  };
  const int64_t prefill[n_seqs] = {9, 45, 1};
  for (int i = 0; i < n_seqs; ++i) step(i, prefill[i]);
  for (int t = 0; t < 30; ++t)
    for (int i = 0; i < n_seqs; ++i) step(i, t == 10 && i == 1 ? 5 : 1);
}

INSTANTIATE_TEST_SUITE_P(
    BlockSizesShapes, PagedVsFull,
    ::testing::Combine(::testing::Values(1, 7, 32),
                       ::testing::Values(AttentionShape{4, 2, 16}, AttentionShape{6, 3, 17},
                                         AttentionShape{8, 1, 32}),
                       ::testing::Values(Granularity::kPerHeadExpert, Granularity::kPerLayer),
                       ::testing::Values(DType::kBF16, DType::kF32)));

// Tags: sinks and the recent window stay protected; older entries land in the
// segment of their expert tag (kNoExpert for a dense layer), in position order.
TEST(PagedKvStore, TagsGraduateIntoExpertSegments) {
  const KvShape kv{2, 2, 4};
  const int E = 3, S = 4, W = 8;
  PagedKvStore store({kv, E, /*block_size=*/4, Granularity::kPerHeadExpert, S, W, 64});
  const int seq = store.add_sequence();
  KvCache& cache = store.cache(seq);
  const auto tag_of = [](int32_t pos) { return static_cast<int32_t>(pos * 7 % 3); };
  std::vector<float> k, v;
  const auto forward = [&](int64_t n) {
    const auto positions = iota_positions(cache.length(), n);
    for (int layer = 0; layer < 2; ++layer) {
      labelled_kv(seq, layer, kv, positions, k, v);
      cache.append(layer, positions, k.data(), v.data());
      if (layer == 0) {
        // Until tagged, the new entries wait in the protected segment (beside the
        // sinks) even past the window.
        const int64_t waiting = n - std::max<int64_t>(0, S - positions[0]);
        EXPECT_EQ(store.protected_entries(seq, 0, 1),
                  std::min<int64_t>(S, cache.length()) + std::max<int64_t>(W, waiting));
        std::vector<int32_t> tags;
        for (int32_t p : positions) tags.push_back(tag_of(p));
        cache.tag(layer, positions, tags.data());
      }
    }
  };
  // Protected: positions 0..S-1 and the last W; expert e: positions S..len-W-1 with
  // tag e; layer 1 (dense): all of S..len-W-1 as kNoExpert (graduated at the next
  // append, so one step behind for the last prefill entries).
  const auto check = [&](int layer, int64_t graduated_end) {
    const int64_t len = cache.length();
    for (int h = 0; h < kv.n_kv_heads; ++h) {
      std::vector<int32_t> protected_positions;
      for (const EntryRun& r : view_runs(store, seq, layer, h))
        if (r.segment == kProtectedSegment)
          protected_positions.insert(protected_positions.end(), r.positions, r.positions + r.n);
      std::vector<int32_t> expected_protected = iota_positions(0, S);
      for (int64_t p = graduated_end; p < len; ++p)
        expected_protected.push_back(static_cast<int32_t>(p));
      EXPECT_EQ(protected_positions, expected_protected) << "layer " << layer << " head " << h;
      for (int e = kNoExpert; e < E; ++e) {
        std::vector<int32_t> expected;
        for (int64_t p = S; p < graduated_end; ++p)
          if (layer == 0 ? tag_of(static_cast<int32_t>(p)) == e : e == kNoExpert)
            expected.push_back(static_cast<int32_t>(p));
        const auto runs = segment_runs(store, seq, layer, store.segment_id({layer, h, e}));
        EXPECT_EQ(run_positions(runs), expected)
            << "layer " << layer << " head " << h << " e " << e;
        for (const EntryRun& r : runs) {
          EXPECT_EQ(r.kv_head, h);
          for (int64_t j = 0; j < r.n; ++j) {
            EXPECT_EQ(r.tags[j], e);
            EXPECT_EQ(r.dtype, DType::kBF16);  // the default
            EXPECT_EQ(r.k_at(j * kv.head_dim + 1),
                      stored(r.dtype, k_value(seq, layer, h, r.positions[j], 1)));
            EXPECT_EQ(r.v_at(j * kv.head_dim + 3),
                      stored(r.dtype, v_value(seq, layer, h, r.positions[j], 3)));
          }
        }
      }
    }
  };
  forward(20);  // prefill: 4 sinks, 16 recent, of which 8 graduate once tagged
  check(0, 20 - W);
  check(1, S);  // dense: nothing tagged, so nothing graduates until the next append
  for (int step = 0; step < 10; ++step) {
    forward(1);
    check(0, cache.length() - W);
    check(1, cache.length() - W);
  }

  // Collapsed experts: one segment per kv-head, tags kept per entry.
  PagedKvStore per_head({kv, E, 4, Granularity::kPerHead, S, W, 64});
  const int s2 = per_head.add_sequence();
  const auto positions = iota_positions(0, 30);
  labelled_kv(s2, 0, kv, positions, k, v);
  per_head.cache(s2).append(0, positions, k.data(), v.data());
  std::vector<int32_t> tags;
  for (int32_t p : positions) tags.push_back(tag_of(p));
  per_head.cache(s2).tag(0, positions, tags.data());
  std::vector<SegmentInfo> infos;
  per_head.segments(s2, 0, infos);
  ASSERT_EQ(infos.size(), 2u);
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(infos[static_cast<size_t>(h)].key.kv_head, h);
    EXPECT_EQ(infos[static_cast<size_t>(h)].key.expert, kAllExperts);
    const auto runs = segment_runs(per_head, s2, 0, infos[static_cast<size_t>(h)].id);
    EXPECT_EQ(run_positions(runs), iota_positions(S, 30 - W - S));
    for (const EntryRun& r : runs)
      for (int64_t j = 0; j < r.n; ++j) EXPECT_EQ(r.tags[j], tag_of(r.positions[j]));
  }

  // Collapsed kv-heads: one segment per expert tag, spanning both kv-heads in order.
  PagedKvStore per_expert({kv, E, 4, Granularity::kPerExpert, S, W, 64});
  const int s3 = per_expert.add_sequence();
  per_expert.cache(s3).append(0, positions, k.data(), v.data());
  per_expert.cache(s3).tag(0, positions, tags.data());
  for (int e = 0; e < E; ++e) {
    const int id = per_expert.segment_id({0, kAllHeads, e});
    EXPECT_EQ(per_expert.segment_key(0, id).expert, e);
    std::vector<std::pair<int, int32_t>> got, want;  // (kv-head, position)
    for (const EntryRun& r : segment_runs(per_expert, s3, 0, id))
      for (int64_t j = 0; j < r.n; ++j) got.emplace_back(r.kv_head, r.positions[j]);
    for (int h = 0; h < 2; ++h)
      for (int32_t p = S; p < 30 - W; ++p)
        if (tag_of(p) == e) want.emplace_back(h, p);
    EXPECT_EQ(got, want) << "expert " << e;
  }
}

// keep() of a random subset: survivors are exactly the kept entries in order, with
// their K, V, positions, tags and scores; the segment shrinks to the fewest blocks;
// bytes are exact.
class KeepTest : public ::testing::TestWithParam<std::tuple<int, DType>> {};

TEST_P(KeepTest, CompactsSurvivorsInOrder) {
  const int B = std::get<0>(GetParam());
  const DType dtype = std::get<1>(GetParam());
  const KvShape kv{1, 2, 5};
  for (Granularity granularity : {Granularity::kPerHeadExpert, Granularity::kPerLayer}) {
    PagedKvStore store(store_config(kv, 2, B, granularity, /*sinks=*/2, /*window=*/3, 512, dtype));
    const int seq = store.add_sequence();
    const auto positions = iota_positions(0, 150);
    std::vector<float> k, v;
    labelled_kv(seq, 0, kv, positions, k, v);
    store.cache(seq).append(0, positions, k.data(), v.data());
    std::vector<int32_t> tags;
    for (int32_t p : positions) tags.push_back(p % 5 == 0 ? 0 : 1);
    store.cache(seq).tag(0, positions, tags.data());

    const int segment =
        granularity == Granularity::kPerLayer ? store.segment_id({0}) : store.segment_id({0, 1, 1});
    auto runs = segment_runs(store, seq, 0, segment);
    std::vector<std::pair<int, int32_t>> entries;  // (kv-head, position) in entry order
    for (EntryRun& r : runs)
      for (int64_t j = 0; j < r.n; ++j) {
        r.scores[j] = static_cast<float>(r.positions[j]) * 0.5f + static_cast<float>(r.kv_head);
        entries.emplace_back(r.kv_head, r.positions[j]);
      }
    std::vector<int32_t> keep;
    std::mt19937 rng(B);
    for (int32_t i = 0; i < static_cast<int32_t>(entries.size()); ++i)
      if (rng() % 3 == 0) keep.push_back(i);
    int64_t in_segment_per_head[2] = {0, 0};
    for (const auto& [head, pos] : entries) ++in_segment_per_head[head];

    store.keep(seq, 0, segment, keep);

    runs = segment_runs(store, seq, 0, segment);
    size_t i = 0;
    int64_t kept_per_head[2] = {0, 0};
    for (const EntryRun& r : runs) {
      for (int64_t j = 0; j < r.n; ++j, ++i) {
        ASSERT_LT(i, keep.size());
        const auto [head, pos] = entries[static_cast<size_t>(keep[i])];
        ++kept_per_head[head];
        EXPECT_EQ(r.kv_head, head);
        EXPECT_EQ(r.positions[j], pos);
        EXPECT_EQ(r.tags[j], pos % 5 == 0 ? 0 : 1);
        EXPECT_EQ(r.scores[j], static_cast<float>(pos) * 0.5f + static_cast<float>(head));
        for (int d = 0; d < kv.head_dim; ++d) {
          EXPECT_EQ(r.k_at(j * kv.head_dim + d), stored(dtype, k_value(seq, 0, head, pos, d)));
          EXPECT_EQ(r.v_at(j * kv.head_dim + d), stored(dtype, v_value(seq, 0, head, pos, d)));
        }
      }
    }
    EXPECT_EQ(i, keep.size());
    // One list per kv-head holds all its 150 entries but the evicted ones, in the
    // fewest blocks: ceil(live / B).
    const auto list_blocks = [&](int64_t evicted0, int64_t evicted1) {
      return ceil_div(150 - evicted0, B) + ceil_div(150 - evicted1, B);
    };
    std::vector<SegmentInfo> after;
    store.segments(seq, 0, after);
    for (const SegmentInfo& s : after) {
      if (s.id != segment) continue;
      EXPECT_EQ(s.n_entries, static_cast<int64_t>(keep.size()));
      EXPECT_LE(s.n_blocks, list_blocks(0, 0));
    }
    EXPECT_EQ(store.arena().blocks_in_use(),
              list_blocks(in_segment_per_head[0] - kept_per_head[0],
                          in_segment_per_head[1] - kept_per_head[1]));
    EXPECT_EQ(store.blocks_in_use(0), store.arena().blocks_in_use());
    // 150 entries per kv-head minus the evicted ones.
    const auto live = static_cast<size_t>(2 * 150) - (entries.size() - keep.size());
    const StoreBytes bytes = store.bytes(seq);
    EXPECT_EQ(bytes.kv, live * 2 * 5 * dtype_size(dtype));
    EXPECT_EQ(bytes.metadata, live * 12);
    EXPECT_EQ(bytes.reserved_kv,
              static_cast<size_t>(store.arena().blocks_in_use()) * store.arena().block_bytes());
    EXPECT_EQ(bytes.reserved,
              static_cast<size_t>(store.arena().blocks_in_use()) * store.block_bytes());
    EXPECT_EQ(store.cache(seq).bytes_used(), bytes.reserved);

    // Evicting everything leaves the lists only the entries of other segments.
    store.keep(seq, 0, segment, {});
    EXPECT_EQ(store.arena().blocks_in_use(),
              list_blocks(in_segment_per_head[0], in_segment_per_head[1]));
    std::vector<SegmentInfo> emptied;
    store.segments(seq, 0, emptied);
    for (const SegmentInfo& s : emptied) EXPECT_NE(s.id, segment);

    store.cache(seq).clear();
    EXPECT_EQ(store.arena().blocks_in_use(), 0);
    EXPECT_EQ(store.cache(seq).length(), 0);
    EXPECT_EQ(store.bytes(seq).kv, 0u);
    store.cache(seq).append(0, std::span(positions).first(3), k.data(), v.data());
    EXPECT_EQ(store.cache(seq).length(), 3);
  }
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, KeepTest,
                         ::testing::Combine(::testing::Values(1, 7, 32),
                                            ::testing::Values(DType::kBF16, DType::kF32)));

// The kept view against a fresh walk of the block lists after every kind of change,
// on random sequences sharing one store: appends within and across blocks (prefill
// chunks and single decode tokens), eviction from several segments in a row (which
// compacts one list, or all of a layer's when kv-heads are collapsed), clear, a
// sequence removed and its id and blocks reused, defragmentation (blocks move).
class ViewTest : public ::testing::TestWithParam<std::tuple<Granularity, int>> {};

TEST_P(ViewTest, KeptViewEqualsAWalkOfTheBlockLists) {
  const Granularity granularity = std::get<0>(GetParam());
  const int B = std::get<1>(GetParam());
  const KvShape kv{3, 3, 8};
  const int E = 4, kSeqs = 3, kOps = 400;
  const int64_t kContext = 1 << 14;
  PagedKvStore store(store_config(kv, E, B, granularity, /*sinks=*/2, /*window=*/5, kContext,
                                  DType::kBF16, /*slab_blocks=*/8));
  std::mt19937 rng(99 + B + static_cast<int>(granularity));
  std::vector<int> seqs;
  for (int i = 0; i < kSeqs; ++i) seqs.push_back(store.add_sequence());
  std::vector<float> k, v;
  const auto append = [&](int seq, int64_t n) {
    KvCache& cache = store.cache(seq);
    if (cache.length() + n > kContext) return;
    const auto positions = iota_positions(cache.length(), n);
    for (int layer = 0; layer < kv.n_layers; ++layer) {
      labelled_kv(seq, layer, kv, positions, k, v);
      cache.append(layer, positions, k.data(), v.data());
      std::vector<int32_t> tags;
      for (size_t t = 0; t < positions.size(); ++t) tags.push_back(static_cast<int32_t>(rng() % E));
      if (layer != 1) cache.tag(layer, positions, tags.data());  // layer 1: a dense layer
    }
  };
  const auto evict = [&](int seq) {
    const int layer = static_cast<int>(rng() % kv.n_layers);
    std::vector<SegmentInfo> infos;
    store.segments(seq, layer, infos);
    std::shuffle(infos.begin(), infos.end(), rng);
    for (size_t i = 0; i < infos.size() && i < 3; ++i) {  // several segments in a row
      std::vector<int32_t> keep;
      for (int32_t e = 0; e < infos[i].n_entries; ++e)
        if (rng() % 3 != 0) keep.push_back(e);
      store.keep(seq, layer, infos[i].id, keep);
    }
  };
  for (int op = 0; op < kOps; ++op) {
    const int i = static_cast<int>(rng() % kSeqs);
    const int seq = seqs[static_cast<size_t>(i)];
    const unsigned what = rng() % 20;
    if (what < 6) {
      append(seq, 1);  // decode
    } else if (what < 10) {
      append(seq, 1 + static_cast<int64_t>(rng() % (3 * B + 2)));  // within or across blocks
    } else if (what < 15) {
      evict(seq);
    } else if (what == 15) {
      store.cache(seq).clear();
    } else if (what == 16) {
      store.remove_sequence(seq);  // its blocks go back; the next sequence may take them
      seqs[static_cast<size_t>(i)] = store.add_sequence();
      append(seqs[static_cast<size_t>(i)], 1 + static_cast<int64_t>(rng() % (2 * B)));
    } else if (what == 17) {
      store.defragment();
    } else {
      append(seq, 1);
      evict(seq);
    }
    for (int s : seqs) {
      SCOPED_TRACE("op " + std::to_string(op));
      expect_view_matches_walk(store, s, kv);
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    GranularitiesAndBlockSizes, ViewTest,
    ::testing::Combine(::testing::Values(Granularity::kPerLayer, Granularity::kPerHead,
                                         Granularity::kPerExpert, Granularity::kPerHeadExpert),
                       ::testing::Values(1, 5, 16)));

// 3 sequences x 2 layers x 2 kv-heads x 8 experts, 2000 decode steps with random
// tags, each segment evicted down to a random budget whenever it passes budget +
// slack; the store is audited against a mirror of the live positions after every
// step. Reports the paging waste it measured.
class SoakTest : public ::testing::TestWithParam<std::tuple<int, DType>> {};

TEST_P(SoakTest, DecodeWithPeriodicEviction) {
  const int B = std::get<0>(GetParam());
  const DType dtype = std::get<1>(GetParam());
  constexpr int kHeads = 2;
  const KvShape kv{2, kHeads, 16};
  const int E = 8, S = 4, W = 32, kSlack = 8, kSteps = 2000, kSeqs = 3;
  const int64_t kContext = 4096;
  PagedKvStore store(store_config(kv, E, B, Granularity::kPerHeadExpert, S, W, kContext, dtype,
                                  /*slab_blocks=*/16));
  const int n_segments = store.n_segments();
  std::mt19937 rng(1234 + B);

  struct Mirror {
    int id = -1;
    std::vector<std::vector<char>> alive_by_head;  // [layer * n_kv_heads + head][position]
    std::vector<int> budgets;                      // [layer * n_segments + segment]

    std::vector<char>& alive(int layer, int kv_head) {
      return alive_by_head[static_cast<size_t>(layer * kHeads + kv_head)];
    }
    int& budget(int layer, int segment, int n_segments) {
      return budgets[static_cast<size_t>(layer * n_segments + segment)];
    }
  };
  std::vector<Mirror> mirrors(kSeqs);
  const auto draw_budgets = [&](Mirror& m) {
    m.budgets.resize(static_cast<size_t>(kv.n_layers * n_segments));
    for (int& b : m.budgets) b = static_cast<int>(rng() % 49);
  };
  std::vector<float> k, v;
  const auto forward = [&](Mirror& m, int64_t n) {
    KvCache& cache = store.cache(m.id);
    const auto positions = iota_positions(cache.length(), n);
    for (int layer = 0; layer < kv.n_layers; ++layer) {
      labelled_kv(m.id, layer, kv, positions, k, v);
      cache.append(layer, positions, k.data(), v.data());
      std::vector<int32_t> tags;
      for (size_t t = 0; t < positions.size(); ++t) tags.push_back(static_cast<int32_t>(rng() % E));
      cache.tag(layer, positions, tags.data());
      for (int h = 0; h < kv.n_kv_heads; ++h)
        for (int32_t p : positions) m.alive(layer, h)[static_cast<size_t>(p)] = 1;
    }
  };
  const auto start = [&](Mirror& m) {
    m.id = store.add_sequence();
    m.alive_by_head.assign(static_cast<size_t>(kv.n_layers * kv.n_kv_heads),
                           std::vector<char>(static_cast<size_t>(kContext), 0));
    draw_budgets(m);
    forward(m, 1 + static_cast<int64_t>(rng() % 64));
  };
  // Amortised eviction: a segment past budget + slack drops to a random subset of
  // `budget` entries.
  const auto evict = [&](Mirror& m) {
    for (int layer = 0; layer < kv.n_layers; ++layer) {
      std::vector<SegmentInfo> infos;
      store.segments(m.id, layer, infos);
      for (const SegmentInfo& s : infos) {
        const int budget = m.budget(layer, s.id, n_segments);
        if (s.n_entries <= budget + kSlack) continue;
        const auto positions = run_positions(segment_runs(store, m.id, layer, s.id));
        std::vector<int32_t> all(positions.size()), keep;
        for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
        std::sample(all.begin(), all.end(), std::back_inserter(keep), budget, rng);
        std::vector<char> kept(all.size(), 0);
        for (int32_t i : keep) kept[static_cast<size_t>(i)] = 1;
        for (size_t i = 0; i < all.size(); ++i)
          if (!kept[i]) m.alive(layer, s.key.kv_head)[static_cast<size_t>(positions[i])] = 0;
        store.keep(m.id, layer, s.id, keep);
      }
    }
  };

  size_t sum_reserved = 0, sum_kv = 0;
  const auto audit = [&](int step) {
    std::vector<int32_t> all_blocks;
    size_t kv_total = 0;
    for (Mirror& m : mirrors) {
      SCOPED_TRACE("step " + std::to_string(step) + " sequence " + std::to_string(m.id));
      const int64_t len = store.cache(m.id).length();
      int64_t live = 0, list_blocks = 0;
      for (int layer = 0; layer < kv.n_layers; ++layer) {
        for (int h = 0; h < kv.n_kv_heads; ++h) {
          const auto& alive = m.alive(layer, h);
          std::vector<int32_t> seen, protected_positions;
          for (const EntryRun& r : view_runs(store, m.id, layer, h)) {
            ASSERT_GT(r.n, 0);
            ASSERT_LE(r.n, B);
            for (int64_t j = 0; j < r.n; ++j) {
              const int32_t p = r.positions[j];
              seen.push_back(p);
              if (r.segment == kProtectedSegment) protected_positions.push_back(p);
              const bool full_row = step % 100 == 0;
              for (int d = 0; d < kv.head_dim; d += full_row ? 1 : kv.head_dim - 1) {
                ASSERT_EQ(r.k_at(j * kv.head_dim + d), stored(dtype, k_value(m.id, layer, h, p, d)))
                    << p;
                ASSERT_EQ(r.v_at(j * kv.head_dim + d), stored(dtype, v_value(m.id, layer, h, p, d)))
                    << p;
              }
            }
          }
          // The store holds exactly the mirror's live positions.
          std::sort(seen.begin(), seen.end());
          std::vector<int32_t> expected;
          for (int32_t p = 0; p < len; ++p)
            if (alive[static_cast<size_t>(p)]) expected.push_back(p);
          ASSERT_EQ(seen, expected) << "layer " << layer << " head " << h;
          live += static_cast<int64_t>(seen.size());
          // Protected: the sinks and the last W positions, never evicted.
          std::vector<int32_t> want_protected;
          for (int32_t p = 0; p < len; ++p)
            if (p < S || p >= len - W) want_protected.push_back(p);
          ASSERT_EQ(protected_positions, want_protected);
          ASSERT_EQ(store.protected_entries(m.id, layer, h),
                    static_cast<int64_t>(want_protected.size()));
          // One list per (layer, kv-head), compact: the fewest blocks for its entries.
          list_blocks += ceil_div(static_cast<int64_t>(seen.size()), B);
        }
        std::vector<SegmentInfo> infos;
        store.segments(m.id, layer, infos);
        for (const SegmentInfo& s : infos) {
          ASSERT_LE(s.n_entries, m.budget(layer, s.id, n_segments) + kSlack);
          ASSERT_GE(s.n_blocks, ceil_div(s.n_entries, B));
          const auto runs = segment_runs(store, m.id, layer, s.id);
          const auto positions = run_positions(runs);
          ASSERT_TRUE(std::adjacent_find(positions.begin(), positions.end(),
                                         [](int32_t a, int32_t b) { return a >= b; }) ==
                      positions.end())
              << "positions not strictly increasing in segment " << s.id;
          for (const EntryRun& r : runs)
            for (int64_t j = 0; j < r.n; ++j) ASSERT_EQ(r.tags[j], s.key.expert);
        }
      }
      expect_view_matches_walk(store, m.id, kv);
      if (HasFatalFailure()) return;
      std::vector<int32_t> blocks;
      store.blocks(m.id, blocks);
      const auto n_blocks = static_cast<int64_t>(blocks.size());
      ASSERT_EQ(n_blocks, list_blocks);
      all_blocks.insert(all_blocks.end(), blocks.begin(), blocks.end());
      // Exact bytes.
      const StoreBytes bytes = store.bytes(m.id);
      ASSERT_EQ(bytes.kv, static_cast<size_t>(live) * 2 * kv.head_dim * dtype_size(dtype));
      ASSERT_EQ(bytes.metadata, static_cast<size_t>(live) * 12);
      ASSERT_EQ(bytes.reserved_kv, static_cast<size_t>(n_blocks) * store.arena().block_bytes());
      ASSERT_EQ(bytes.reserved, static_cast<size_t>(n_blocks) * store.block_bytes());
      ASSERT_EQ(store.cache(m.id).bytes_used(), bytes.reserved);
      kv_total += bytes.kv;
    }
    // No block leaked or held twice.
    std::sort(all_blocks.begin(), all_blocks.end());
    ASSERT_TRUE(std::adjacent_find(all_blocks.begin(), all_blocks.end()) == all_blocks.end());
    ASSERT_EQ(static_cast<int64_t>(all_blocks.size()), store.arena().blocks_in_use());
    for (int32_t b : all_blocks) ASSERT_TRUE(store.arena().in_use(b));
    ASSERT_EQ(store.blocks_in_use(0) + store.blocks_in_use(1), store.arena().blocks_in_use());
    const StoreBytes total = store.bytes();
    ASSERT_EQ(total.kv, kv_total);
    ASSERT_EQ(total.reserved, all_blocks.size() * store.block_bytes());
    sum_reserved += total.reserved;
    sum_kv += total.kv;
  };

  for (Mirror& m : mirrors) start(m);
  for (int step = 0; step < kSteps; ++step) {
    if (step == kSteps / 2) {  // a sequence ends and a new one takes its id and blocks
      const int old = mirrors[1].id;
      store.remove_sequence(old);
      start(mirrors[1]);
      EXPECT_EQ(mirrors[1].id, old);
    }
    for (Mirror& m : mirrors) {
      if (step % 500 == 499) draw_budgets(m);
      forward(m, 1);
      evict(m);
    }
    if (step % 250 == 125) {  // pack the survivors of eviction into the fewest slabs
      store.defragment();
      EXPECT_EQ(store.arena().slabs_mapped(),
                ceil_div(store.arena().blocks_in_use(), store.arena().slab_blocks()));
    }
    audit(step);
    if (HasFatalFailure()) return;
  }

  const StoreBytes end = store.bytes();
  const double mean_waste = static_cast<double>(sum_reserved) / static_cast<double>(sum_kv) - 1.0;
  const double metadata_share = static_cast<double>(end.metadata) / static_cast<double>(end.kv);
  std::printf(
      "[ soak B=%d %s ] paging waste: mean %.3f, final %.3f (metadata %.3f of it); "
      "%lld blocks in %lld slabs (arena reserved %zu bytes)\n",
      B, dtype_label(dtype).c_str(), mean_waste, end.paging_waste(), metadata_share,
      static_cast<long long>(store.arena().blocks_in_use()),
      static_cast<long long>(store.arena().slabs_mapped()), store.arena().reserved_bytes());
  RecordProperty("mean_paging_waste", std::to_string(mean_waste));

  for (Mirror& m : mirrors) store.remove_sequence(m.id);
  EXPECT_EQ(store.arena().blocks_in_use(), 0);
  EXPECT_EQ(store.blocks_in_use(0) + store.blocks_in_use(1), 0);
  EXPECT_EQ(store.bytes().kv, 0u);
  EXPECT_EQ(store.bytes().reserved, 0u);
  EXPECT_LE(store.arena().slabs_mapped(), 1);  // max_empty_slabs: the rest went back to the OS
  store.defragment();
  EXPECT_EQ(store.arena().reserved_bytes(), 0u);
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, SoakTest,
                         ::testing::Combine(::testing::Values(8, 32),
                                            ::testing::Values(DType::kBF16, DType::kF32)));

TEST(PagedKvStore, BadUseFailsWithClearMessages) {
  const KvShape kv{2, 2, 4};
  PagedKvStore store({kv, 3, 4, Granularity::kPerHeadExpert, 2, 2, /*max_context=*/16});
  const int seq = store.add_sequence();
  KvCache& cache = store.cache(seq);
  std::vector<float> k, v;
  const auto positions = iota_positions(0, 10);
  labelled_kv(seq, 0, kv, positions, k, v);
  cache.append(0, positions, k.data(), v.data());
  const std::vector<int32_t> tags(10, 1);

  expect_error([&] { store.cache(7); }, "unknown sequence 7");
  expect_error([&] { store.keep(-1, 0, 0, {}); }, "unknown sequence -1");
  expect_error([&] { cache.append(2, positions, k.data(), v.data()); }, "layer 2 is out of range");
  expect_error([&] { cache.append(0, positions, k.data(), v.data()); },
               "layer 0 gets position 0 after position 9 (positions must increase)");
  labelled_kv(seq, 1, kv, iota_positions(0, 17), k, v);
  expect_error([&] { cache.append(1, iota_positions(0, 17), k.data(), v.data()); },
               "17 tokens exceed the context of 16 tokens");
  expect_error([&] { cache.tag(0, std::span(positions).first(4), tags.data()); },
               "positions 0..9 (10) await tags");
  const std::vector<int32_t> bad_tags = {1, 1, 1, 3, 1, 1, 1, 1, 1, 1};
  expect_error([&] { cache.tag(0, positions, bad_tags.data()); },
               "expert tag 3 of position 3 is out of range (0..2)");
  cache.tag(0, positions, tags.data());
  expect_error([&] { cache.tag(0, positions, tags.data()); }, "no entries await tags");

  const int segment = store.segment_id({0, 0, 1});
  std::vector<SegmentInfo> infos;
  store.segments(seq, 0, infos);
  ASSERT_EQ(infos.size(), 2u);  // expert 1 of each kv-head: positions 2..7
  EXPECT_EQ(infos[0].n_entries, 6);
  const std::vector<int32_t> out_of_range = {0, 6};
  expect_error([&] { store.keep(seq, 0, segment, out_of_range); },
               "keep: index 6 is out of range (6 entries in segment 2 of layer 0)");
  const std::vector<int32_t> unordered = {3, 1};
  expect_error([&] { store.keep(seq, 0, segment, unordered); },
               "strictly increasing (1 follows 3)");
  expect_error([&] { store.keep(seq, 0, store.n_segments(), {}); }, "segment 8 is out of range");
  expect_error([&] { store.segment_id({0, kAllHeads, 1}); }, "no segment (layer 0, kv-head -1");
  // A refused keep changed nothing.
  EXPECT_EQ(run_positions(segment_runs(store, seq, 0, segment)), iota_positions(2, 6));

  store.remove_sequence(seq);
  expect_error([&] { store.remove_sequence(seq); }, "unknown sequence 0");
  const auto make_store = [](const StoreConfig& config) { PagedKvStore bad(config); };
  expect_error(
      [&] {
        make_store({kv, 3, 0, Granularity::kPerLayer, 2, 2, 16});
      },
      "block_size must be positive");
  expect_error(
      [&] {
        make_store({kv, 3, 4, Granularity::kPerLayer, 2, 2, 0});
      },
      "max_context must be in 1..2^31-1");
  expect_error(
      [&] { make_store(store_config(kv, 3, 4, Granularity::kPerLayer, 2, 2, 16, DType::kF16)); },
      "K/V are stored in bf16 or f32, not F16");
}

// The same entries, evicted alike, take exactly half the K/V bytes in bf16, live and
// held; the cells (metadata) are the same in both.
TEST(PagedKvStore, Bf16HalvesTheKvBytesOfF32) {
  const KvShape kv{2, 2, 64};
  StoreBytes got[2];
  int i = 0;
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    PagedKvStore store(store_config(kv, 4, 16, Granularity::kPerHeadExpert, 4, 8, 1024, dtype));
    const int seq = store.add_sequence();
    const auto positions = iota_positions(0, 300);
    std::vector<float> k, v;
    std::vector<int32_t> tags;
    for (int32_t p : positions) tags.push_back(p % 4);
    for (int layer = 0; layer < 2; ++layer) {
      labelled_kv(seq, layer, kv, positions, k, v);
      store.cache(seq).append(layer, positions, k.data(), v.data());
      store.cache(seq).tag(layer, positions, tags.data());
    }
    std::vector<int32_t> keep;
    for (int32_t e = 0; e < 72; e += 3) keep.push_back(e);
    store.keep(seq, 0, store.segment_id({0, 1, 2}), keep);
    got[i++] = store.bytes(seq);
    EXPECT_EQ(store.cache(seq).bytes_used(), got[i - 1].reserved);
  }
  EXPECT_EQ(got[1].kv, (2 * 2 * 300 - 48) * 2 * 64 * sizeof(float));
  EXPECT_EQ(2 * got[0].kv, got[1].kv);
  EXPECT_EQ(2 * got[0].reserved_kv, got[1].reserved_kv);
  EXPECT_EQ(got[0].metadata, got[1].metadata);
  EXPECT_EQ(got[0].reserved - got[0].reserved_kv, got[1].reserved - got[1].reserved_kv);
}

}  // namespace
}  // namespace ekva
