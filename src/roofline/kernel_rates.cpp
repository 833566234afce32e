// The compute side of the CPU backend's own kernels: its matmul at 1..64 tokens and
// its decode attention, on data that stays in cache, so that the time they take is
// their arithmetic and not the memory's (that is the bandwidth ceilings' part).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/cpu_backend.h"
#include "roofline/hardware.h"

namespace ekva {

namespace {

template <typename Fn>
double median_seconds(int runs, Fn&& fn) {
  fn();  // warm-up: the data into cache, the workers awake
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<uint16_t> random_bf16(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 0.1f);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(normal(rng));
  return v;
}

}  // namespace

KernelRates probe_kernels(ThreadPool& pool, const KernelShape& shape, int runs) {
  EKVA_CHECK(shape.k >= 16 && shape.head_dim >= 8 && shape.group >= 1 && runs >= 1,
             "probe_kernels: bad shape k={} head_dim={} group={}", shape.k, shape.head_dim,
             shape.group);
  CpuBackend backend(pool);
  std::mt19937 rng(7);
  KernelRates r;
  r.matmul_k = shape.k;
  // 1 MiB of bf16 weights: in L2 (or close) on current cores, so each call computes
  // rather than waits, however many tokens it has.
  r.matmul_n = std::max<int64_t>(64, (int64_t{1} << 19) / shape.k / 16 * 16);
  const std::vector<uint16_t> w = random_bf16(static_cast<size_t>(r.matmul_n * shape.k), rng);
  constexpr int64_t kMaxTokens = 64;
  std::vector<float> x(static_cast<size_t>(kMaxTokens * shape.k), 0.5f);
  std::vector<float> y(static_cast<size_t>(kMaxTokens * r.matmul_n));
  // And a matrix in memory (twice the effective cache, at least 64 MiB) and one in the
  // cache (a quarter of it): the rate the kernel reads weights from each, per token count.
  const auto rows_of = [&](double bytes) {
    return std::max<int64_t>(
        16, static_cast<int64_t>(bytes / 2.0 / static_cast<double>(shape.k)) / 16 * 16);
  };
  const int64_t memory_n = rows_of(std::max(64.0 * (1 << 20), 2 * shape.cache_bytes));
  const int64_t cache_n = shape.cache_bytes > 0 ? rows_of(shape.cache_bytes / 4) : 0;
  const std::vector<uint16_t> big =
      random_bf16(static_cast<size_t>(std::max(memory_n, cache_n) * shape.k), rng);
  std::vector<float> y_big(static_cast<size_t>(kMaxTokens * std::max(memory_n, cache_n)));
  const auto stream_rate = [&](int64_t n, int64_t t) {
    const WeightMatrix m{DType::kBF16, n, shape.k, big.data()};
    const MatmulParams q{x.data(), t, nullptr, m, y_big.data(), n};
    const double s = median_seconds(std::max(2, runs / 2), [&] { backend.matmul(q); });
    return static_cast<double>(m.nbytes()) / s / 1e9;
  };
  for (int64_t t = 1; t <= kMaxTokens; t *= 2) {
    const WeightMatrix small{DType::kBF16, r.matmul_n, shape.k, w.data()};
    const MatmulParams p{x.data(), t, nullptr, small, y.data(), r.matmul_n};
    const double s = median_seconds(4 * runs, [&] { backend.matmul(p); });
    r.matmul_tokens.push_back(static_cast<double>(t));
    r.matmul_gflop_per_s.push_back(p.cost().flops / s / 1e9);
    r.matmul_stream_gb_per_s.push_back(stream_rate(memory_n, t));
    if (cache_n > 0) r.matmul_cache_stream_gb_per_s.push_back(stream_rate(cache_n, t));
  }

  // Decode attention: 4 sequences x 2 kv-heads x 1024 bf16 entries (about 2 MiB at head
  // dim 128), every entry seen.
  r.head_dim = shape.head_dim;
  r.group = shape.group;
  constexpr int64_t kSeqs = 4, kKvHeads = 2, kEntries = 1024;
  const int64_t D = shape.head_dim;
  std::vector<int32_t> positions(static_cast<size_t>(kEntries));
  for (int64_t i = 0; i < kEntries; ++i)
    positions[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  std::vector<std::vector<KvChunk>> lists(static_cast<size_t>(kSeqs * kKvHeads));
  std::vector<std::vector<uint16_t>> storage;  // each list its own K/V, as in a cache
  for (auto& list : lists) {
    storage.push_back(random_bf16(static_cast<size_t>(kEntries * D), rng));
    storage.push_back(random_bf16(static_cast<size_t>(kEntries * D), rng));
    KvChunk c;
    c.k = storage[storage.size() - 2].data();
    c.v = storage.back().data();
    c.positions = positions.data();
    c.n = kEntries;
    c.dtype = DType::kBF16;
    list.push_back(c);
  }
  const int64_t H = kKvHeads * shape.group;
  std::vector<float> q(static_cast<size_t>(kSeqs * H * D), 0.1f), out(q.size());
  std::vector<int32_t> q_pos(kSeqs, static_cast<int32_t>(kEntries)), q_seq(kSeqs);
  for (int64_t i = 0; i < kSeqs; ++i) q_seq[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  AttentionParams p;
  p.n_queries = kSeqs;
  p.n_heads = H;
  p.n_kv_heads = kKvHeads;
  p.head_dim = D;
  p.scale = 1.f / std::sqrt(static_cast<float>(D));
  p.q = q.data();
  p.q_positions = q_pos.data();
  p.out = out.data();
  p.q_seq = q_seq.data();
  p.n_seqs = kSeqs;
  const double s = median_seconds(4 * runs, [&] { backend.attention(p, lists); });
  const double kv_bytes = static_cast<double>(kSeqs * kKvHeads * kEntries) * 2.0 *
                          static_cast<double>(D) * sizeof(uint16_t);
  r.attention_gb_per_s = kv_bytes / s / 1e9;
  return r;
}

}  // namespace ekva
