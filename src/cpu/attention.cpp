// Decode and prefill attention over KV chunks, as one split-K problem.
//
// Work item = (query token, kv-head, piece of that kv-head's entries). A piece
// walks its entries in blocks of kBlock: scores of all query heads of the GQA group
// against each K row (K read once per group), an online softmax (running max m and
// sum l per head), and the V rows accumulated into o. Pieces of one (query,
// kv-head) are merged by log-sum-exp at the end. Long caches are cut into several
// pieces so that a single decode token keeps every thread busy.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/attention.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
// After highway.h, in every target pass.
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/kernels.h"

HWY_BEFORE_NAMESPACE();
namespace ekva::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kBlock = 32;

using DF = hn::ScalableTag<float>;
using DU16 = hn::Rebind<uint16_t, DF>;  // half-width: as many lanes as DF
using DU32 = hn::RebindToUnsigned<DF>;

// N consecutive K/V elements widened to f32: stored f32, or bf16 (the upper half
// of an f32, so widening is a shift).
template <typename KT>
HWY_INLINE hn::Vec<DF> load_kv(const KT* p) {
  const DF df;
  if constexpr (std::is_same_v<KT, float>) {
    return hn::LoadU(df, p);
  } else {
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(DU32(), hn::LoadU(DU16(), p))));
  }
}
template <typename KT>
HWY_INLINE float kv_scalar(const KT* p, int64_t i) {
  if constexpr (std::is_same_v<KT, float>) {
    return p[i];
  } else {
    return bf16_to_f32(p[i]);
  }
}

// Masked scores: finite (so the vector exp stays in its domain), far below any real
// score; a block whose maximum is this low has nothing visible.
constexpr float kMasked = -1e30f;

// s[i] = q_i · k for up to four query heads at once: each K vector loaded feeds
// four FMAs (the group's heads share the key).
template <int kHeads, typename KT>
HWY_INLINE void dots(const float* const* q, const KT* k, int64_t D, float* s) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  hn::Vec<DF> acc[kHeads];
  for (int i = 0; i < kHeads; ++i) acc[i] = hn::Zero(d);
  int64_t x = 0;
  for (; x + N <= D; x += N) {
    const auto kv = load_kv(k + x);
    for (int i = 0; i < kHeads; ++i) acc[i] = hn::MulAdd(hn::LoadU(d, q[i] + x), kv, acc[i]);
  }
  for (int i = 0; i < kHeads; ++i) {
    float sum = hn::GetLane(hn::SumOfLanes(d, acc[i]));
    for (int64_t y = x; y < D; ++y) sum += q[i][y] * kv_scalar(k, y);
    s[i] = sum;
  }
}

// o *= c
HWY_INLINE void scale(float* o, float c, int64_t n) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  const auto vc = hn::Set(d, c);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(vc, hn::LoadU(d, o + i)), d, o + i);
  for (; i < n; ++i) o[i] *= c;
}

// o_h += sum_j p_h[j] * v[j] for kHeads heads at once, over the block rows listed in
// `rows` (p_h is row h of a [heads, kBlock] score block, o_h row h of o [heads, D]).
// Each V vector is widened once for all the heads (a head-by-head pass widens every
// V row G times, and bf16 widening is most of the work), and the heads' outputs stay
// in registers two vectors of columns at a time: 2 kHeads accumulators, two V vectors
// and a broadcast weight fit AVX2's 16 registers for kHeads <= 4.
template <int kHeads, typename KT>
HWY_INLINE void accumulate_heads(float* o, int64_t D, const float* p, const KT* v,
                                 const int32_t* rows, int64_t n_rows) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  int64_t x = 0;
  for (; x + 2 * N <= D; x += 2 * N) {
    hn::Vec<DF> a[kHeads][2];
    for (int h = 0; h < kHeads; ++h) {
      a[h][0] = hn::LoadU(d, o + h * D + x);
      a[h][1] = hn::LoadU(d, o + h * D + x + N);
    }
    for (int64_t i = 0; i < n_rows; ++i) {
      const int64_t j = rows[i];
      const KT* r = v + j * D + x;
      const auto v0 = load_kv(r);
      const auto v1 = load_kv(r + N);
      for (int h = 0; h < kHeads; ++h) {
        const auto w = hn::Set(d, p[h * kBlock + j]);
        a[h][0] = hn::MulAdd(w, v0, a[h][0]);
        a[h][1] = hn::MulAdd(w, v1, a[h][1]);
      }
    }
    for (int h = 0; h < kHeads; ++h) {
      hn::StoreU(a[h][0], d, o + h * D + x);
      hn::StoreU(a[h][1], d, o + h * D + x + N);
    }
  }
  for (; x + N <= D; x += N) {
    hn::Vec<DF> a[kHeads];
    for (int h = 0; h < kHeads; ++h) a[h] = hn::LoadU(d, o + h * D + x);
    for (int64_t i = 0; i < n_rows; ++i) {
      const int64_t j = rows[i];
      const auto v0 = load_kv(v + j * D + x);
      for (int h = 0; h < kHeads; ++h) a[h] = hn::MulAdd(hn::Set(d, p[h * kBlock + j]), v0, a[h]);
    }
    for (int h = 0; h < kHeads; ++h) hn::StoreU(a[h], d, o + h * D + x);
  }
  for (; x < D; ++x)
    for (int64_t i = 0; i < n_rows; ++i)
      for (int h = 0; h < kHeads; ++h)
        o[h * D + x] += p[h * kBlock + rows[i]] * kv_scalar(v, rows[i] * D + x);
}

template <typename KT>
HWY_INLINE void accumulate_group(float* o, int64_t G, int64_t D, const float* p, const KT* v,
                                 const int32_t* rows, int64_t n_rows) {
  int64_t g = 0;
  for (; g + 4 <= G; g += 4) accumulate_heads<4>(o + g * D, D, p + g * kBlock, v, rows, n_rows);
  switch (G - g) {
    case 3:
      return accumulate_heads<3>(o + g * D, D, p + g * kBlock, v, rows, n_rows);
    case 2:
      return accumulate_heads<2>(o + g * D, D, p + g * kBlock, v, rows, n_rows);
    case 1:
      return accumulate_heads<1>(o + g * D, D, p + g * kBlock, v, rows, n_rows);
    default:
      return;
  }
}

// p[j] = exp(s[j] - m) for j < n, in place; returns the sum.
HWY_INLINE float exp_shifted(float* s, int64_t n, float m) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  const auto vm = hn::Set(d, m);
  auto sum = hn::Zero(d);
  int64_t j = 0;
  for (; j + N <= n; j += N) {
    const auto p = hn::Exp(d, hn::Sub(hn::LoadU(d, s + j), vm));
    hn::StoreU(p, d, s + j);
    sum = hn::Add(sum, p);
  }
  float total = hn::GetLane(hn::SumOfLanes(d, sum));
  for (; j < n; ++j) total += s[j] = std::exp(s[j] - m);
  return total;
}

// Attention of G query heads q [G, D] over entries [begin, end) of the
// concatenated chunks; writes m, l and unnormalised o [G, D], and, when raw is set,
// every entry's scaled logit per head, raw [G, end - begin] (kMasked where hidden),
// from which the caller derives the entries' probabilities once m and l are final.
//
// Per block of kBlock entries: the scores of all G heads (K read once), then per
// head one rescale of o and FMAs of the block's V rows weighted by exp(s - m),
// with the exponentials computed as vectors.
void AttendPiece(const float* q, int64_t G, int64_t D, float scale_factor, int32_t q_pos,
                 int64_t window, const KvChunk* chunks, int64_t n_chunks, int64_t begin,
                 int64_t end, float* m, float* l, float* o, float* raw) {
  for (int64_t g = 0; g < G; ++g) {
    m[g] = kMasked;
    l[g] = 0.f;
  }
  std::fill(o, o + G * D, 0.f);
  // scores[g][j] for one block; G <= 64 is checked by the caller.
  HWY_ALIGN float scores[64 * kBlock];
  const float* qh[64];
  for (int64_t g = 0; g < G; ++g) qh[g] = q + g * D;
  int64_t chunk_start = 0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    const KvChunk& ch = chunks[c];
    const int64_t lo = std::max(begin, chunk_start) - chunk_start;
    const int64_t hi = std::min(end, chunk_start + ch.n) - chunk_start;
    const int64_t raw_offset =
        chunk_start - begin;  // entry j of the chunk is raw column raw_offset + j
    chunk_start += ch.n;
    // Scores of query heads against entry j of this chunk, in its stored dtype.
    const auto key_dots4 = [&](const float* const* qs, int64_t j, float* out) {
      if (ch.dtype == DType::kBF16)
        dots<4>(qs, static_cast<const uint16_t*>(ch.k) + j * D, D, out);
      else
        dots<4>(qs, static_cast<const float*>(ch.k) + j * D, D, out);
    };
    const auto key_dots1 = [&](const float* const* qs, int64_t j, float* out) {
      if (ch.dtype == DType::kBF16)
        dots<1>(qs, static_cast<const uint16_t*>(ch.k) + j * D, D, out);
      else
        dots<1>(qs, static_cast<const float*>(ch.k) + j * D, D, out);
    };
    for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {
      const int64_t nb = std::min(kBlock, hi - j0);
      for (int64_t j = 0; j < nb; ++j) {
        const int32_t k_pos = ch.positions[j0 + j];
        const bool visible = k_pos <= q_pos && (window == 0 || q_pos - k_pos < window);
        float s[4];
        int64_t g = 0;
        for (; g + 4 <= G; g += 4) {
          if (visible) key_dots4(qh + g, j0 + j, s);
          for (int i = 0; i < 4; ++i)
            scores[(g + i) * kBlock + j] = visible ? s[i] * scale_factor : kMasked;
        }
        for (; g < G; ++g) {
          if (visible) key_dots1(qh + g, j0 + j, s);
          scores[g * kBlock + j] = visible ? s[0] * scale_factor : kMasked;
        }
      }
      if (raw != nullptr)
        for (int64_t g = 0; g < G; ++g)
          std::copy_n(scores + g * kBlock, nb, raw + g * (end - begin) + raw_offset + j0);
      // Per head: the online-softmax update, the block's scores turned into weights
      // in place (all 0 for a head that sees nothing in the block).
      for (int64_t g = 0; g < G; ++g) {
        float* sg = scores + g * kBlock;
        float block_max = kMasked;
        for (int64_t j = 0; j < nb; ++j) block_max = std::max(block_max, sg[j]);
        if (block_max <= kMasked) {
          std::fill_n(sg, nb, 0.f);
          continue;
        }
        const float m_new = std::max(m[g], block_max);
        const float correction = std::exp(m[g] - m_new);  // 0 on the first block
        if (correction != 1.f) scale(o + g * D, correction, D);
        l[g] = l[g] * correction + exp_shifted(sg, nb, m_new);
        m[g] = m_new;
      }
      // The rows some head weighs (hidden rows, e.g. under a causal mask, are skipped),
      // then every head's V accumulation in one pass over them.
      int32_t rows[kBlock];
      int64_t n_rows = 0;
      for (int64_t j = 0; j < nb; ++j) {
        bool weighed = false;
        for (int64_t g = 0; g < G; ++g) weighed |= scores[g * kBlock + j] != 0.f;
        if (weighed) rows[n_rows++] = static_cast<int32_t>(j);
      }
      if (n_rows == 0) continue;
      if (ch.dtype == DType::kBF16)
        accumulate_group(o, G, D, scores, static_cast<const uint16_t*>(ch.v) + j0 * D, rows,
                         n_rows);
      else
        accumulate_group(o, G, D, scores, static_cast<const float*>(ch.v) + j0 * D, rows, n_rows);
    }
  }
  for (int64_t g = 0; g < G; ++g)
    if (m[g] <= kMasked) m[g] = -std::numeric_limits<float>::infinity();
}

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ekva::cpu {

HWY_EXPORT(AttendPiece);

namespace {
// Entries per piece when a (query, kv-head) is split: large enough that the merge
// is noise, small enough that one decode token splits over all threads.
constexpr int64_t kMinPiece = 256;
// AttendPiece's logit of a hidden entry (HWY_NAMESPACE::kMasked).
constexpr float kMaskedScore = -1e30f;
}  // namespace

AttentionPlanOptions attention_plan_options(const ThreadPool& pool) {
  // Four tasks per thread absorb uneven item costs (masked entries, cache misses).
  return {.min_tasks = 4 * static_cast<int64_t>(pool.size()), .min_item_entries = kMinPiece};
}

void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               ThreadPool& pool) {
  AttentionWorkspace workspace;
  attention(p, chunks, pool, workspace);
}

void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               const AttentionPlan& plan, ThreadPool& pool) {
  AttentionWorkspace workspace;
  attention(p, chunks, plan, pool, workspace);
}

void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               ThreadPool& pool, AttentionWorkspace& workspace) {
  plan_attention(p, chunks, attention_plan_options(pool), workspace.plan);
  attention(p, chunks, workspace.plan, pool, workspace);
}

// Allocates nothing once the workspace has grown to the problem: the partials and
// the raw logits are resized within their capacity, the pool's parallel_for passes
// the lambdas by pointer (no std::function), and AttendPiece keeps its block of
// scores on the stack (tests/test_hot_path_allocations.cpp counts).
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               const AttentionPlan& plan, ThreadPool& pool, AttentionWorkspace& workspace) {
  const int64_t G = p.n_heads / p.n_kv_heads;
  const int64_t D = p.head_dim;
  const int64_t KH = p.n_kv_heads;
  EKVA_CHECK(G <= 64, "attention: GQA group of {} query heads exceeds 64", G);
  EKVA_CHECK(static_cast<int64_t>(chunks.size()) == p.n_seqs * KH,
             "attention: {} chunk lists for {} sequences x {} kv-heads", chunks.size(), p.n_seqs,
             KH);
  EKVA_CHECK(static_cast<int64_t>(plan.merge_begin.size()) == p.n_queries * KH + 1,
             "attention: the plan is for another problem ({} (query, kv-head) pairs, not {})",
             plan.merge_begin.size() - 1, p.n_queries * KH);
  const auto seq_of = [&](int64_t t) -> int64_t { return p.q_seq != nullptr ? p.q_seq[t] : 0; };
  const auto scored = [&](int64_t t) { return p.q_scored != nullptr && p.q_scored[t] != 0; };
  const auto n_items = static_cast<int64_t>(plan.items.size());

  // Partials: per item, G maxima, G sums and G x D unnormalised outputs; for the
  // items of scored queries also the raw logits of their entries ([G, item
  // length] at raw_begin[item]) until m and l are final.
  // Every slot is written by AttendPiece before it is read, so resizing (which keeps
  // the old values) is enough.
  std::vector<float>& part_m = workspace.part_m;
  std::vector<float>& part_l = workspace.part_l;
  std::vector<float>& part_o = workspace.part_o;
  std::vector<int64_t>& raw_begin = workspace.raw_begin;
  std::vector<float>& raw = workspace.raw;
  part_m.resize(static_cast<size_t>(n_items * G));
  part_l.resize(static_cast<size_t>(n_items * G));
  part_o.resize(static_cast<size_t>(n_items * G * D));
  if (p.q_scored != nullptr) {
    raw_begin.assign(static_cast<size_t>(n_items) + 1, 0);
    for (int64_t i = 0; i < n_items; ++i) {
      const AttentionWorkItem& it = plan.items[static_cast<size_t>(i)];
      raw_begin[static_cast<size_t>(i) + 1] =
          raw_begin[static_cast<size_t>(i)] + (scored(it.query) ? G * (it.end - it.begin) : 0);
    }
    raw.resize(static_cast<size_t>(raw_begin.back()));
  }

  pool.parallel_for(plan.n_tasks(), [&](int64_t k0, int64_t k1, int) {
    for (int64_t i = plan.task_begin[static_cast<size_t>(k0)];
         i < plan.task_begin[static_cast<size_t>(k1)]; ++i) {
      const AttentionWorkItem& it = plan.items[static_cast<size_t>(i)];
      const auto& list = chunks[static_cast<size_t>(seq_of(it.query) * KH + it.kv_head)];
      HWY_DYNAMIC_DISPATCH(AttendPiece)
      (p.q + (it.query * p.n_heads + it.kv_head * G) * D, G, D, p.scale, p.q_positions[it.query],
       p.sliding_window, list.data(), static_cast<int64_t>(list.size()), it.begin, it.end,
       &part_m[static_cast<size_t>(i * G)], &part_l[static_cast<size_t>(i * G)],
       &part_o[static_cast<size_t>(i * G * D)],
       scored(it.query) ? raw.data() + raw_begin[static_cast<size_t>(i)] : nullptr);
    }
  });

  // Merge the items of each (query, kv-head, head) by log-sum-exp.
  std::vector<float>& final_m = workspace.final_m;  // [n_queries, KH, G], for the entry scores
  std::vector<float>& final_l = workspace.final_l;
  final_m.clear();
  if (p.q_scored != nullptr) {
    final_m.assign(static_cast<size_t>(p.n_queries * KH * G),
                   -std::numeric_limits<float>::infinity());
    final_l.assign(final_m.size(), 0.f);
  }
  for (int64_t t = 0; t < p.n_queries; ++t) {
    for (int64_t h = 0; h < KH; ++h) {
      const int64_t i0 = plan.merge_begin[static_cast<size_t>(t * KH + h)];
      const int64_t i1 = plan.merge_begin[static_cast<size_t>(t * KH + h) + 1];
      for (int64_t g = 0; g < G; ++g) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t i = i0; i < i1; ++i) m = std::max(m, part_m[static_cast<size_t>(i * G + g)]);
        float* out = p.out + (t * p.n_heads + h * G + g) * D;
        std::fill(out, out + D, 0.f);
        if (m == -std::numeric_limits<float>::infinity()) continue;  // nothing visible
        float l = 0.f;
        for (int64_t i = i0; i < i1; ++i) {
          const auto idx = static_cast<size_t>(i * G + g);
          if (part_l[idx] == 0.f) continue;
          const float w = std::exp(part_m[idx] - m);
          l += part_l[idx] * w;
          const float* o = &part_o[idx * static_cast<size_t>(D)];
          for (int64_t d = 0; d < D; ++d) out[d] += w * o[d];
        }
        const float inv = 1.f / l;
        for (int64_t d = 0; d < D; ++d) out[d] *= inv;
        if (!final_m.empty()) {
          final_m[static_cast<size_t>((t * KH + h) * G + g)] = m;
          final_l[static_cast<size_t>((t * KH + h) * G + g)] = l;
        }
      }
    }
  }
  if (p.q_scored == nullptr) return;

  // Entry scores: each scored query adds its probability of every entry, summed
  // over the GQA group's heads, to the entry's score slot. Lists (sequence,
  // kv-head) run in parallel, the queries of one list in order, so no two threads
  // ever add to the same slot.
  pool.parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t l0, int64_t l1, int) {
    for (int64_t list_index = l0; list_index < l1; ++list_index) {
      const auto& list = chunks[static_cast<size_t>(list_index)];
      const int64_t h = list_index % KH;
      for (int64_t t = 0; t < p.n_queries; ++t) {
        if (!scored(t) || seq_of(t) * KH + h != list_index) continue;
        const float* m = &final_m[static_cast<size_t>((t * KH + h) * G)];
        const float* l = &final_l[static_cast<size_t>((t * KH + h) * G)];
        size_t c = 0;
        int64_t chunk_start = 0;
        for (int64_t i = plan.merge_begin[static_cast<size_t>(t * KH + h)];
             i < plan.merge_begin[static_cast<size_t>(t * KH + h) + 1]; ++i) {
          const AttentionWorkItem& it = plan.items[static_cast<size_t>(i)];
          const int64_t len = it.end - it.begin;
          const float* r = raw.data() + raw_begin[static_cast<size_t>(i)];
          for (int64_t e = it.begin; e < it.end; ++e) {
            while (e >= chunk_start + list[c].n) chunk_start += list[c++].n;
            float* slot = list[c].scores;
            if (slot == nullptr) continue;
            float prob = 0.f;
            for (int64_t g = 0; g < G; ++g) {
              const float x = r[g * len + (e - it.begin)];
              if (x > kMaskedScore && l[g] > 0.f) prob += std::exp(x - m[g]) / l[g];
            }
            slot[e - chunk_start] += prob;
          }
        }
      }
    }
  });
}

}  // namespace ekva::cpu
#endif  // HWY_ONCE
