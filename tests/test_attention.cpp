// Attention (split-K, threaded, SIMD) against the scalar reference: GQA groups,
// odd head dims, several chunks per kv-head, causal masks, sliding windows, and
// caches long enough that decode splits one (query, kv-head) into pieces.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <numeric>

#include "core/thread_pool.h"
#include "cpu/kernels.h"
#include "test_util.h"

namespace ekva {
namespace {

struct Case {
  int64_t n_queries, n_heads, n_kv_heads, head_dim, entries, n_chunks, window;
};

// The last n_queries positions of `entries` as queries (random q, seeded) and the
// params of attention over them; p.out is left for the caller.
struct Queries {
  std::vector<float> q;
  std::vector<int32_t> positions;
};
AttentionParams decode_params(int64_t n_queries, int64_t n_heads, int64_t n_kv_heads, int64_t D,
                              int64_t entries, int64_t window, uint64_t seed, Queries& qs) {
  qs.q = test::random_floats(static_cast<size_t>(n_queries * n_heads * D), seed);
  qs.positions.resize(static_cast<size_t>(n_queries));
  for (int64_t t = 0; t < n_queries; ++t)
    qs.positions[static_cast<size_t>(t)] = static_cast<int32_t>(entries - n_queries + t);
  AttentionParams p;
  p.n_queries = n_queries;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv_heads;
  p.head_dim = D;
  p.scale = 1.f / std::sqrt(static_cast<float>(D));
  p.sliding_window = window;
  p.q = qs.q.data();
  p.q_positions = qs.positions.data();
  return p;
}

class AttentionTest : public ::testing::TestWithParam<std::tuple<Case, int>> {};

TEST_P(AttentionTest, MatchesReference) {
  const auto [c, threads] = GetParam();
  ThreadPool pool(threads);
  const int64_t D = c.head_dim;
  // Entries hold positions 0..entries-1 in a shuffled order across chunks, as an
  // evicted/compacted cache would; the queries are the last n_queries positions.
  std::vector<int32_t> positions(static_cast<size_t>(c.entries));
  std::iota(positions.begin(), positions.end(), 0);
  std::mt19937 rng(7);
  std::shuffle(positions.begin(), positions.end(), rng);
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<KvChunk>> chunks(static_cast<size_t>(c.n_kv_heads));
  for (int64_t h = 0; h < c.n_kv_heads; ++h) {
    k.push_back(test::random_floats(static_cast<size_t>(c.entries * D), 100 + h));
    v.push_back(test::random_floats(static_cast<size_t>(c.entries * D), 200 + h));
    for (int64_t i = 0; i < c.n_chunks; ++i) {
      const int64_t b = c.entries * i / c.n_chunks, e = c.entries * (i + 1) / c.n_chunks;
      chunks[static_cast<size_t>(h)].push_back({&k.back()[static_cast<size_t>(b * D)],
                                                &v.back()[static_cast<size_t>(b * D)],
                                                &positions[static_cast<size_t>(b)], e - b});
    }
  }
  Queries qs;
  AttentionParams p =
      decode_params(c.n_queries, c.n_heads, c.n_kv_heads, D, c.entries, c.window, 5, qs);
  const std::vector<float>& q = qs.q;
  std::vector<float> out(q.size(), NAN), out_ref(q.size(), NAN);
  p.out = out.data();
  cpu::attention(p, chunks, pool);
  p.out = out_ref.data();
  ref::attention(p, chunks);
  EXPECT_LT(test::rel_error(out.data(), out_ref.data(), out.size()), 2e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AttentionTest,
    ::testing::Combine(::testing::Values(Case{1, 8, 2, 64, 1, 1, 0},         // a single entry
                                         Case{1, 8, 2, 64, 3000, 1, 0},      // decode, split-K
                                         Case{1, 28, 4, 80, 2049, 5, 0},     // G = 7, odd chunks
                                         Case{1, 4, 4, 17, 997, 3, 0},       // no GQA, odd dim
                                         Case{1, 32, 8, 128, 4097, 8, 512},  // window
                                         Case{13, 8, 2, 16, 97, 2, 0},       // prefill, causal
                                         Case{17, 12, 3, 32, 300, 4, 9}),    // prefill + window
                       ::testing::Values(1, 2, 4)));

TEST(Attention, SplittingChunksDoesNotChangeTheResult) {
  // The same entries as one chunk or as many must give the same output.
  ThreadPool pool(2);
  const int64_t D = 64, n = 1500;
  const auto k = test::random_floats(static_cast<size_t>(n * D), 1);
  const auto v = test::random_floats(static_cast<size_t>(n * D), 2);
  const auto q = test::random_floats(static_cast<size_t>(4 * D), 3);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  std::iota(pos.begin(), pos.end(), 0);
  const int32_t qp = static_cast<int32_t>(n);
  AttentionParams p{1, 4, 1, D, 0.125f, 0, q.data(), &qp, nullptr};
  std::vector<std::vector<KvChunk>> one{{{k.data(), v.data(), pos.data(), n}}};
  std::vector<std::vector<KvChunk>> many(1);
  for (int64_t b = 0; b < n; b += 7)
    many[0].push_back({&k[static_cast<size_t>(b * D)], &v[static_cast<size_t>(b * D)],
                       &pos[static_cast<size_t>(b)], std::min<int64_t>(7, n - b)});
  std::vector<float> a(static_cast<size_t>(4 * D)), b(a.size());
  p.out = a.data();
  cpu::attention(p, one, pool);
  p.out = b.data();
  cpu::attention(p, many, pool);
  EXPECT_LT(test::rel_error(a.data(), b.data(), a.size()), 1e-6);
}

// The kernel is compiled for every SIMD target Highway supports and dispatched to
// the best one of the host, so a host runs one of them; here each target this host
// can run is run in turn (AVX2 and SSE4 on an AVX-512 host, for instance), on
// shapes that take every path: head groups of 4 + 2 + 1, head dims that are not a
// multiple of any vector length, a causal mask over shuffled positions, a block
// shorter than a vector of tokens, f32 and bf16 storage; every query scored, so
// the entries' probabilities are checked too.
TEST(Attention, EveryCompiledTargetMatchesTheReference) {
  ThreadPool pool(2);
  struct Shape {
    int64_t n_queries, n_heads, n_kv_heads, head_dim, entries;
    DType dtype;
  };
  const Shape shapes[] = {{1, 14, 2, 128, 301, DType::kBF16},
                          {3, 7, 1, 19, 45, DType::kF32},
                          {1, 16, 2, 64, 2, DType::kBF16},
                          {5, 8, 8, 33, 130, DType::kBF16},
                          {1, 32, 4, 80, 700, DType::kF32}};
  for (const uint32_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    for (const Shape& c : shapes) {
      SCOPED_TRACE(::testing::Message()
                   << hwy::TargetName(target) << " G=" << c.n_heads / c.n_kv_heads
                   << " D=" << c.head_dim << " n=" << c.entries);
      const int64_t D = c.head_dim;
      std::vector<int32_t> positions(static_cast<size_t>(c.entries));
      std::iota(positions.begin(), positions.end(), 0);
      std::mt19937 rng(11);
      std::shuffle(positions.begin(), positions.end(), rng);
      std::vector<std::vector<float>> k32, v32;
      std::vector<std::vector<uint16_t>> k16, v16;
      std::vector<std::vector<KvChunk>> chunks(static_cast<size_t>(c.n_kv_heads));
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        k32.push_back(test::random_floats(static_cast<size_t>(c.entries * D), 300 + h));
        v32.push_back(test::random_floats(static_cast<size_t>(c.entries * D), 400 + h));
        k16.emplace_back(k32.back().size());
        v16.emplace_back(v32.back().size());
        for (size_t i = 0; i < k32.back().size(); ++i) {
          k16.back()[i] = f32_to_bf16(k32.back()[i]);
          v16.back()[i] = f32_to_bf16(v32.back()[i]);
        }
        // Three chunks of uneven length per kv-head.
        const int64_t cuts[] = {0, c.entries / 3, c.entries / 3 + (c.entries + 1) / 2, c.entries};
        for (int i = 0; i < 3; ++i) {
          const auto b = static_cast<size_t>(cuts[i] * D);
          const bool bf16 = c.dtype == DType::kBF16;
          chunks[static_cast<size_t>(h)].push_back(
              {bf16 ? static_cast<const void*>(&k16.back()[b]) : &k32.back()[b],
               bf16 ? static_cast<const void*>(&v16.back()[b]) : &v32.back()[b],
               &positions[static_cast<size_t>(cuts[i])], cuts[i + 1] - cuts[i], c.dtype});
        }
      }
      Queries qs;
      AttentionParams p =
          decode_params(c.n_queries, c.n_heads, c.n_kv_heads, D, c.entries, 0, 9, qs);
      const std::vector<float>& q = qs.q;
      // Every query scored: the entries' probabilities summed into their slots.
      const std::vector<uint8_t> scored(static_cast<size_t>(c.n_queries), 1);
      p.q_scored = scored.data();
      std::vector<float> slots(static_cast<size_t>(c.n_kv_heads * c.entries), 0.f),
          slots_ref(slots.size(), 0.f);
      const auto point_scores = [&](std::vector<float>& to) {
        for (int64_t h = 0; h < c.n_kv_heads; ++h) {
          int64_t at = h * c.entries;
          for (KvChunk& ch : chunks[static_cast<size_t>(h)]) {
            ch.scores = &to[static_cast<size_t>(at)];
            at += ch.n;
          }
        }
      };
      std::vector<float> out(q.size(), NAN), out_ref(q.size(), NAN);
      p.out = out.data();
      point_scores(slots);
      cpu::attention(p, chunks, pool);
      p.out = out_ref.data();
      point_scores(slots_ref);
      ref::attention(p, chunks);
      EXPECT_LT(test::rel_error(out.data(), out_ref.data(), out.size()), 2e-6);
      EXPECT_LT(test::rel_error(slots.data(), slots_ref.data(), slots.size()), 2e-6);
    }
  }
  hwy::SetSupportedTargetsForTest(0);  // back to the host's own
}

}  // namespace
}  // namespace ekva
