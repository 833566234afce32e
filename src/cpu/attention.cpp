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
#include <hwy/cache_control.h>
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "cpu/reduce-inl.h"
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
// The most query heads one work item computes together (MLA: every head shares the
// one latent "kv-head", up to 128 in DeepSeek-V3).
constexpr int64_t kMaxGroup = 128;

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
// bf16 K/V read two vectors at a time in even/odd order: one 2N-element load as N
// u32 lanes gives the even elements by a shift and the odd ones by a mask, one
// operation per vector where the in-order widening takes two (a shuffle and a
// shift). The order does not matter to a dot product if q is permuted the same way,
// nor to an accumulation into o if o is kept permuted until the piece ends.
struct PairedBf16 {
  uint16_t bits;
};
template <typename KT>
constexpr bool kPaired = std::is_same_v<KT, PairedBf16>;

// Elements [p, p + 2N) as even (elements 0, 2, ..) and odd (1, 3, ..) vectors.
HWY_INLINE void load_pair(const PairedBf16* p, hn::Vec<DF>& even, hn::Vec<DF>& odd) {
  const DF df;
  const DU32 du;
  const auto u = hn::LoadU(du, reinterpret_cast<const uint32_t*>(p));
  even = hn::BitCast(df, hn::ShiftLeft<16>(u));
  odd = hn::BitCast(df, hn::And(u, hn::Set(du, 0xFFFF0000u)));
}

template <typename KT>
HWY_INLINE float kv_scalar(const KT* p, int64_t i) {
  if constexpr (kPaired<KT>) {
    return bf16_to_f32(p[i].bits);  // (never reached: paired pieces have no tails)
  } else if constexpr (std::is_same_v<KT, float>) {
    return p[i];
  } else {
    return bf16_to_f32(p[i]);
  }
}

// Masked scores: finite (so the vector exp stays in its domain), far below any real
// score; a block whose maximum is this low has nothing visible.
constexpr float kMasked = -1e30f;
constexpr float kRescaleSlack = 8.f;

// K and V rows fetched a fixed distance ahead of their use. A list's chunks are
// blocks scattered over the arena (one kv-head's blocks interleave with every other
// head's and layer's), so the hardware prefetcher, which follows a stream within a
// page and only some twenty lines ahead, starts cold at every block, and the loads
// stalled on memory latency with nothing to overlap them. A cursor runs
// kAheadEntries entries in front of the scorer over the piece's chunks and fetches
// as many rows as the scorer consumes (one block ahead was too close: a block
// takes longer to arrive at one core's share of the bandwidth than to compute).
constexpr int64_t kAheadEntries = 2 * kBlock;

class RowPrefetch {
 public:
  RowPrefetch() = default;
  // Entries [begin, end) of chunks[0..n_chunks), the cursor starting kAheadEntries in.
  RowPrefetch(const KvChunk* chunks, int64_t n_chunks, int64_t begin, int64_t end, int64_t D)
      : chunks_(chunks),
        n_chunks_(n_chunks),
        left_(std::max<int64_t>(end - begin - kAheadEntries, 0)) {
    int64_t skip = begin + std::min(kAheadEntries, end - begin);
    while (c_ < n_chunks_ && skip >= chunks_[c_].n) skip -= chunks_[c_++].n;
    offset_ = skip;
    if (c_ < n_chunks_) row_bytes_ = static_cast<size_t>(D) * dtype_size(chunks_[c_].dtype);
    row_d_ = D;
  }

  // Fetches the next `rows` rows at the cursor and moves it on.
  void advance(int64_t rows) {
    rows = std::min(rows, left_);
    left_ -= rows;
    while (rows > 0 && c_ < n_chunks_) {
      const KvChunk& ch = chunks_[c_];
      const int64_t take = std::min(rows, ch.n - offset_);
      const size_t first = static_cast<size_t>(offset_) * row_bytes_;
      const size_t bytes = static_cast<size_t>(take) * row_bytes_;
      const bool own_v = ch.v != ch.k;  // keys only (MLA): V is read from the K rows
      for (size_t b = 0; b < bytes; b += 64) {
        line(static_cast<const char*>(ch.k) + first + b);
        if (own_v) line(static_cast<const char*>(ch.v) + first + b);
      }
      rows -= take;
      offset_ += take;
      if (offset_ == ch.n && ++c_ < n_chunks_) {
        offset_ = 0;
        row_bytes_ = static_cast<size_t>(row_d_) * dtype_size(chunks_[c_].dtype);
      }
    }
  }

 private:
  // GCC 12's dead-code elimination drops __builtin_prefetch (and hwy::Prefetch)
  // here at -O2, so on x86 the instruction is written out. Into L2 (T2): a T0
  // prefetch holds one of the core's few L1 fill buffers until the line arrives.
  static HWY_INLINE void line(const char* p) {
#if HWY_ARCH_X86
    asm volatile("prefetcht2 %0" : : "m"(*p));
#else
    hwy::Prefetch(p);
#endif
  }

  const KvChunk* chunks_ = nullptr;
  int64_t n_chunks_ = 0;
  int64_t c_ = 0, offset_ = 0;  // the cursor: chunk, and entry within it
  int64_t left_ = 0;            // entries of the piece still to fetch
  size_t row_bytes_ = 0;
  int64_t row_d_ = 0;
};

// Scaled scores of kHeads query heads q[0..kHeads) against the K rows
// k[0..n) of a block: out[h * kBlock + j] = scale * q_h · k_j. Every K vector
// loaded (and widened) feeds all the heads, and kTokens = N / kHeads rows are taken
// at a time so that the kHeads x kTokens accumulators are exactly N vectors,
// reduced together by sum_lanes_transposed.
template <int kHeads, typename KT>
HWY_INLINE void block_scores(const float* const* q, const KT* k, int64_t D, int64_t n, float scale,
                             float* out, RowPrefetch& prefetch) {
  const DF d;
  constexpr size_t kN = hn::MaxLanes(DF());
  constexpr int kTokens = static_cast<int>(kN) / kHeads;
  static_assert(kTokens >= 1 && kHeads * kTokens == static_cast<int>(kN));
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  const auto vscale = hn::Set(d, scale);
  const int64_t D_vec = D - D % N;
  for (int64_t j0 = 0; j0 < n; j0 += kTokens) {
    // Rows past the block's end repeat its last row; their sums are dropped.
    const KT* rows[kTokens];
    for (int t = 0; t < kTokens; ++t) rows[t] = k + std::min<int64_t>(j0 + t, n - 1) * D;
    prefetch.advance(std::min<int64_t>(kTokens, n - j0));
    hn::Vec<DF> acc[kN];
    for (size_t i = 0; i < kN; ++i) acc[i] = hn::Zero(d);
    if constexpr (kPaired<KT>) {  // q permuted to match; D a multiple of 2N
      for (int64_t x = 0; x < D_vec; x += 2 * N) {
        hn::Vec<DF> ke[kTokens], ko[kTokens];
        for (int t = 0; t < kTokens; ++t) load_pair(rows[t] + x, ke[t], ko[t]);
        for (int h = 0; h < kHeads; ++h) {
          const auto qe = hn::LoadU(d, q[h] + x), qo = hn::LoadU(d, q[h] + x + N);
          for (int t = 0; t < kTokens; ++t) {
            acc[h * kTokens + t] = hn::MulAdd(qe, ke[t], acc[h * kTokens + t]);
            acc[h * kTokens + t] = hn::MulAdd(qo, ko[t], acc[h * kTokens + t]);
          }
        }
      }
    } else {
      for (int64_t x = 0; x < D_vec; x += N) {
        hn::Vec<DF> kv[kTokens];
        for (int t = 0; t < kTokens; ++t) kv[t] = load_kv(rows[t] + x);
        for (int h = 0; h < kHeads; ++h) {
          const auto qv = hn::LoadU(d, q[h] + x);
          for (int t = 0; t < kTokens; ++t)
            acc[h * kTokens + t] = hn::MulAdd(qv, kv[t], acc[h * kTokens + t]);
        }
      }
    }
    HWY_ALIGN float sums[kN];
    hn::Store(hn::Mul(sum_lanes_transposed<kN>(d, acc), vscale), d, sums);
    if (D_vec < D)  // head dims that are not a multiple of the vector length
      for (int h = 0; h < kHeads; ++h)
        for (int t = 0; t < kTokens; ++t) {
          float tail = 0.f;
          for (int64_t y = D_vec; y < D; ++y) tail += q[h][y] * kv_scalar(rows[t], y);
          sums[h * kTokens + t] += scale * tail;
        }
    const int64_t valid = std::min<int64_t>(kTokens, n - j0);
    for (int h = 0; h < kHeads; ++h) std::copy_n(sums + h * kTokens, valid, out + h * kBlock + j0);
  }
}

// block_scores for all G heads, in the widest head groups the vector allows.
template <typename KT>
HWY_INLINE void group_scores(const float* const* q, int64_t G, const KT* k, int64_t D, int64_t n,
                             float scale, float* out, RowPrefetch& prefetch) {
  RowPrefetch none;  // the first head group alone moves the cursor
  constexpr size_t kN = hn::MaxLanes(DF());
  int64_t g = 0;
  if constexpr (kN >= 8)
    for (; g + 8 <= G; g += 8)
      block_scores<8>(q + g, k, D, n, scale, out + g * kBlock, g == 0 ? prefetch : none);
  if constexpr (kN >= 4)
    for (; g + 4 <= G; g += 4)
      block_scores<4>(q + g, k, D, n, scale, out + g * kBlock, g == 0 ? prefetch : none);
  if constexpr (kN >= 2)
    for (; g + 2 <= G; g += 2)
      block_scores<2>(q + g, k, D, n, scale, out + g * kBlock, g == 0 ? prefetch : none);
  for (; g < G; ++g)
    block_scores<1>(q + g, k, D, n, scale, out + g * kBlock, g == 0 ? prefetch : none);
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
// `rows` (all rows 0..n_rows-1 when rows is null; p_h is row h of a [heads, kBlock]
// score block, o_h row h of o [heads, D]). Each V vector is widened once for all
// the heads (bf16 widening is a good part of the work), and the heads' outputs stay
// in registers kCols vectors of columns at a time: kHeads x kCols accumulators, kCols
// V vectors and a broadcast weight. Four columns per pass on 32 registers (AVX-512)
// halve the passes over the rows and the broadcasts of two.
// o rows are D wide; V rows are ldv apart (ldv > D when V is a prefix of the K rows).
template <int kHeads, int kCols, typename KT>
HWY_INLINE void accumulate_columns(float* o, int64_t D, int64_t ldv, int64_t x, const float* p,
                                   const KT* v, const int32_t* rows, int64_t n_rows) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  hn::Vec<DF> a[kHeads][kCols];
  for (int h = 0; h < kHeads; ++h)
    for (int c = 0; c < kCols; ++c) a[h][c] = hn::LoadU(d, o + h * D + x + c * N);
  for (int64_t i = 0; i < n_rows; ++i) {
    const int64_t j = rows != nullptr ? rows[i] : i;
    const KT* r = v + j * ldv + x;
    hn::Vec<DF> vv[kCols];
    if constexpr (kPaired<KT>) {
      static_assert(kCols % 2 == 0);
      for (int c = 0; c < kCols; c += 2) load_pair(r + c * N, vv[c], vv[c + 1]);
    } else {
      for (int c = 0; c < kCols; ++c) vv[c] = load_kv(r + c * N);
    }
    for (int h = 0; h < kHeads; ++h) {
      const auto w = hn::Set(d, p[h * kBlock + j]);
      for (int c = 0; c < kCols; ++c) a[h][c] = hn::MulAdd(w, vv[c], a[h][c]);
    }
  }
  for (int h = 0; h < kHeads; ++h)
    for (int c = 0; c < kCols; ++c) hn::StoreU(a[h][c], d, o + h * D + x + c * N);
}

template <int kHeads, typename KT>
HWY_INLINE void accumulate_heads(float* o, int64_t D, int64_t ldv, const float* p, const KT* v,
                                 const int32_t* rows, int64_t n_rows) {
  constexpr int kWide = hn::MaxLanes(DF()) >= 16 && kHeads <= 4 ? 4 : 2;
  const auto N = static_cast<int64_t>(hn::Lanes(DF()));
  int64_t x = 0;
  for (; x + kWide * N <= D; x += kWide * N)
    accumulate_columns<kHeads, kWide>(o, D, ldv, x, p, v, rows, n_rows);
  if constexpr (kPaired<KT>) {
    for (; x < D; x += 2 * N) accumulate_columns<kHeads, 2>(o, D, ldv, x, p, v, rows, n_rows);
  } else {
    for (; x + N <= D; x += N) accumulate_columns<kHeads, 1>(o, D, ldv, x, p, v, rows, n_rows);
    for (; x < D; ++x)
      for (int64_t i = 0; i < n_rows; ++i) {
        const int64_t j = rows != nullptr ? rows[i] : i;
        for (int h = 0; h < kHeads; ++h)
          o[h * D + x] += p[h * kBlock + j] * kv_scalar(v, j * ldv + x);
      }
  }
}

template <typename KT>
HWY_INLINE void accumulate_group(float* o, int64_t G, int64_t D, int64_t ldv, const float* p,
                                 const KT* v, const int32_t* rows, int64_t n_rows) {
  int64_t g = 0;
  for (; g + 4 <= G; g += 4)
    accumulate_heads<4>(o + g * D, D, ldv, p + g * kBlock, v, rows, n_rows);
  switch (G - g) {
    case 3:
      return accumulate_heads<3>(o + g * D, D, ldv, p + g * kBlock, v, rows, n_rows);
    case 2:
      return accumulate_heads<2>(o + g * D, D, ldv, p + g * kBlock, v, rows, n_rows);
    case 1:
      return accumulate_heads<1>(o + g * D, D, ldv, p + g * kBlock, v, rows, n_rows);
    default:
      return;
  }
}

static_assert(kBlock % hn::MaxLanes(DF()) == 0, "a block of scores is whole vectors");

// The largest of a block's kBlock scores.
HWY_INLINE float max_of(const float* s) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  auto v = hn::Load(d, s);
  for (int64_t j = N; j < kBlock; j += N) v = hn::Max(v, hn::Load(d, s + j));
  return hn::GetLane(hn::MaxOfLanes(d, v));
}

// p[j] = exp(s[j] - m) for the kBlock scores of a block, in place; returns the sum.
HWY_INLINE float exp_shifted(float* s, float m) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  const auto vm = hn::Set(d, m);
  auto sum = hn::Zero(d);
  for (int64_t j = 0; j < kBlock; j += N) {
    const auto p = hn::Exp(d, hn::Sub(hn::Load(d, s + j), vm));
    hn::Store(p, d, s + j);
    sum = hn::Add(sum, p);
  }
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

// Attention of G query heads q [G, D] over entries [begin, end) of the
// concatenated chunks; writes m, l and unnormalised o [G, Dv] (Dv < D: V is the first
// Dv elements of each K row, MLA), and, when raw is set,
// every entry's scaled logit per head, raw [G, end - begin] (kMasked where hidden),
// from which the caller derives the entries' probabilities once m and l are final.
//
// Per block of kBlock entries: the scores of all G heads (K read once), then per
// head one rescale of o and FMAs of the block's V rows weighted by exp(s - m),
// with the exponentials computed as vectors.
void AttendPiece(const float* q, int64_t G, int64_t D, int64_t Dv, float scale_factor,
                 int32_t q_pos, int64_t window, const KvChunk* chunks, int64_t n_chunks,
                 int64_t begin, int64_t end, float* m, float* l, float* o, float* raw) {
  for (int64_t g = 0; g < G; ++g) {
    m[g] = kMasked;
    l[g] = 0.f;
  }
  std::fill(o, o + G * Dv, 0.f);
  // scores[g][j] for one block; G <= kMaxGroup is checked by the caller.
  HWY_ALIGN float scores[kMaxGroup * kBlock];
  const float* qh[kMaxGroup];
  for (int64_t g = 0; g < G; ++g) qh[g] = q + g * D;
  // bf16 pieces whose head dim is whole pairs of vectors read K and V in even/odd
  // order (PairedBf16): q permuted here, o un-permuted at the end.
  const auto N = static_cast<int64_t>(hn::Lanes(DF()));
  constexpr int64_t kPermutedFloats = 8192;
  bool paired = N > 1 && D % (2 * N) == 0 && Dv % (2 * N) == 0 && G * D <= kPermutedFloats;
  for (int64_t c = 0; c < n_chunks && paired; ++c) paired = chunks[c].dtype == DType::kBF16;
  HWY_ALIGN float q_permuted[kPermutedFloats];
  if (paired) {
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t x = 0; x < D; x += 2 * N)
        for (int64_t i = 0; i < N; ++i) {
          q_permuted[g * D + x + i] = q[g * D + x + 2 * i];
          q_permuted[g * D + x + N + i] = q[g * D + x + 2 * i + 1];
        }
      qh[g] = q_permuted + g * D;
    }
  }
  RowPrefetch ahead(chunks, n_chunks, begin, end, D);
  int64_t chunk_start = 0;
  for (int64_t c = 0; c < n_chunks; ++c) {
    const KvChunk& ch = chunks[c];
    const int64_t lo = std::max(begin, chunk_start) - chunk_start;
    const int64_t hi = std::min(end, chunk_start + ch.n) - chunk_start;
    const int64_t raw_offset =
        chunk_start - begin;  // entry j of the chunk is raw column raw_offset + j
    chunk_start += ch.n;
    for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {
      const int64_t nb = std::min(kBlock, hi - j0);
      // Entries the query does not see (causal mask, sliding window) are masked in
      // every head. A decode query sees them all and the block skips the row list
      // below; a block a prefill query sees none of is not scored at all.
      bool visible[kBlock];
      int64_t n_visible = 0;
      for (int64_t j = 0; j < nb; ++j) {
        const int32_t k_pos = ch.positions[j0 + j];
        visible[j] = k_pos <= q_pos && (window == 0 || q_pos - k_pos < window);
        n_visible += visible[j] ? 1 : 0;
      }
      const bool all_visible = n_visible == nb;
      if (n_visible == 0) {
        for (int64_t g = 0; g < G; ++g) std::fill_n(scores + g * kBlock, nb, kMasked);
        ahead.advance(nb);  // keeps its distance
      } else if (paired) {
        group_scores(qh, G, static_cast<const PairedBf16*>(ch.k) + j0 * D, D, nb, scale_factor,
                     scores, ahead);
      } else if (ch.dtype == DType::kBF16) {
        group_scores(qh, G, static_cast<const uint16_t*>(ch.k) + j0 * D, D, nb, scale_factor,
                     scores, ahead);
      } else {
        group_scores(qh, G, static_cast<const float*>(ch.k) + j0 * D, D, nb, scale_factor, scores,
                     ahead);
      }
      if (!all_visible)
        for (int64_t j = 0; j < nb; ++j)
          if (!visible[j])
            for (int64_t g = 0; g < G; ++g) scores[g * kBlock + j] = kMasked;
      if (raw != nullptr)
        for (int64_t g = 0; g < G; ++g)
          std::copy_n(scores + g * kBlock, nb, raw + g * (end - begin) + raw_offset + j0);
      // Per head: the online-softmax update, the block's scores turned into weights
      // in place (all 0 for a head that sees nothing in the block). A short block
      // is padded with masked scores so that every head's row is whole vectors.
      if (nb < kBlock)
        for (int64_t g = 0; g < G; ++g)
          std::fill(scores + g * kBlock + nb, scores + (g + 1) * kBlock, kMasked);
      for (int64_t g = 0; g < G; ++g) {
        float* sg = scores + g * kBlock;
        const float block_max = max_of(sg);
        if (block_max <= kMasked) {
          std::fill_n(sg, kBlock, 0.f);
          continue;
        }
        // The running maximum moves only when a block exceeds it by more than
        // kRescaleSlack: until then the weights exp(s - m) stay below e^8 (far
        // from overflow in f32), and most blocks skip the rescale of l and o and
        // its exponential. m is only a shift: the result is the same.
        if (block_max > m[g] + kRescaleSlack) {
          const float correction = std::exp(m[g] - block_max);  // 0 on the first block
          scale(o + g * Dv, correction, Dv);
          l[g] *= correction;
          m[g] = block_max;
        }
        l[g] += exp_shifted(sg, m[g]);
      }
      // The rows some head weighs (hidden rows, e.g. under a causal mask, are skipped),
      // then every head's V accumulation in one pass over them.
      // A block the query sees whole takes every row, listed by none.
      int32_t row_list[kBlock];
      const int32_t* rows = nullptr;
      int64_t n_rows = nb;
      if (!all_visible) {
        rows = row_list;
        n_rows = 0;
        for (int64_t j = 0; j < nb; ++j) {
          bool weighed = false;
          for (int64_t g = 0; g < G && !weighed; ++g) weighed = scores[g * kBlock + j] != 0.f;
          if (weighed) row_list[n_rows++] = static_cast<int32_t>(j);
        }
      }
      if (n_rows == 0) continue;
      // V rows are D apart: their own rows, or (Dv < D) the K rows they prefix.
      if (paired)
        accumulate_group(o, G, Dv, D, scores, static_cast<const PairedBf16*>(ch.v) + j0 * D, rows,
                         n_rows);
      else if (ch.dtype == DType::kBF16)
        accumulate_group(o, G, Dv, D, scores, static_cast<const uint16_t*>(ch.v) + j0 * D, rows,
                         n_rows);
      else
        accumulate_group(o, G, Dv, D, scores, static_cast<const float*>(ch.v) + j0 * D, rows,
                         n_rows);
    }
  }
  for (int64_t g = 0; g < G; ++g)
    if (m[g] <= kMasked) m[g] = -std::numeric_limits<float>::infinity();
  if (paired) {  // o back to element order, a pair of vectors at a time
    HWY_ALIGN float pair[2 * hn::MaxLanes(DF())];
    for (int64_t x = 0; x < G * Dv; x += 2 * N) {
      std::copy_n(o + x, 2 * N, pair);
      for (int64_t i = 0; i < N; ++i) {
        o[x + 2 * i] = pair[i];
        o[x + 2 * i + 1] = pair[N + i];
      }
    }
  }
}

// prob[e] = sum over the G heads of exp(raw[g][e] - m[g]) / l[g], for e < n: an
// entry's attention probability summed over its GQA group, from the raw logits
// of one work item (raw [G, stride], kMasked where hidden) and the heads' final
// maxima and sums. Heads that saw nothing (l = 0) add nothing.
void EntryProbabilities(const float* raw, int64_t stride, int64_t G, int64_t n, const float* m,
                        const float* l, float* prob) {
  const DF d;
  const auto N = static_cast<int64_t>(hn::Lanes(d));
  std::fill_n(prob, n, 0.f);
  for (int64_t g = 0; g < G; ++g) {
    if (!(l[g] > 0.f)) continue;
    const float* r = raw + g * stride;
    const auto vm = hn::Set(d, m[g]);
    const auto inv = hn::Set(d, 1.f / l[g]);
    int64_t e = 0;
    for (; e + N <= n; e += N) {
      const auto p = hn::Mul(hn::Exp(d, hn::Sub(hn::LoadU(d, r + e), vm)), inv);
      hn::StoreU(hn::Add(hn::LoadU(d, prob + e), p), d, prob + e);
    }
    for (; e < n; ++e)
      if (r[e] > kMasked) prob[e] += std::exp(r[e] - m[g]) / l[g];
  }
}

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ekva::cpu {

HWY_EXPORT(AttendPiece);
HWY_EXPORT(EntryProbabilities);

namespace {
// Entries per piece when a (query, kv-head) is split: large enough that the merge
// is noise, small enough that one decode token splits over all threads.
constexpr int64_t kMinPiece = 256;
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
  const int64_t Dv = p.value_dim();
  const int64_t KH = p.n_kv_heads;
  EKVA_CHECK(G <= 128, "attention: GQA group of {} query heads exceeds 128", G);
  EKVA_CHECK(Dv <= D, "attention: value width {} exceeds the key width {}", Dv, D);
  EKVA_CHECK(static_cast<int64_t>(chunks.size()) == p.n_seqs * KH,
             "attention: {} chunk lists for {} sequences x {} kv-heads", chunks.size(), p.n_seqs,
             KH);
  EKVA_CHECK(static_cast<int64_t>(plan.merge_begin.size()) == p.n_queries * KH + 1,
             "attention: the plan is for another problem ({} (query, kv-head) pairs, not {})",
             plan.merge_begin.size() - 1, p.n_queries * KH);
  const auto seq_of = [&](int64_t t) -> int64_t { return p.q_seq != nullptr ? p.q_seq[t] : 0; };
  const auto scored = [&](int64_t t) { return p.q_scored != nullptr && p.q_scored[t] != 0; };
  const auto n_items = static_cast<int64_t>(plan.items.size());

  // Partials: per item, G maxima, G sums and G x Dv unnormalised outputs; for the
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
  part_o.resize(static_cast<size_t>(n_items * G * Dv));
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
      (p.q + (it.query * p.n_heads + it.kv_head * G) * D, G, D, Dv, p.scale,
       p.q_positions[it.query], p.sliding_window, list.data(), static_cast<int64_t>(list.size()),
       it.begin, it.end, &part_m[static_cast<size_t>(i * G)], &part_l[static_cast<size_t>(i * G)],
       &part_o[static_cast<size_t>(i * G * Dv)],
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
        float* out = p.out + (t * p.n_heads + h * G + g) * Dv;
        std::fill(out, out + Dv, 0.f);
        if (m == -std::numeric_limits<float>::infinity()) continue;  // nothing visible
        float l = 0.f;
        for (int64_t i = i0; i < i1; ++i) {
          const auto idx = static_cast<size_t>(i * G + g);
          if (part_l[idx] == 0.f) continue;
          const float w = std::exp(part_m[idx] - m);
          l += part_l[idx] * w;
          const float* o = &part_o[idx * static_cast<size_t>(Dv)];
          for (int64_t d = 0; d < Dv; ++d) out[d] += w * o[d];
        }
        const float inv = 1.f / l;
        for (int64_t d = 0; d < Dv; ++d) out[d] *= inv;
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
        // Probabilities a stretch of entries at a time, vectorised over entries.
        constexpr int64_t kStretch = 512;
        float prob[kStretch];
        for (int64_t i = plan.merge_begin[static_cast<size_t>(t * KH + h)];
             i < plan.merge_begin[static_cast<size_t>(t * KH + h) + 1]; ++i) {
          const AttentionWorkItem& it = plan.items[static_cast<size_t>(i)];
          const int64_t len = it.end - it.begin;
          const float* r = raw.data() + raw_begin[static_cast<size_t>(i)];
          for (int64_t e0 = 0; e0 < len; e0 += kStretch) {
            const int64_t n = std::min(kStretch, len - e0);
            HWY_DYNAMIC_DISPATCH(EntryProbabilities)(r + e0, len, G, n, m, l, prob);
            for (int64_t j = 0; j < n; ++j) {
              const int64_t e = it.begin + e0 + j;
              while (e >= chunk_start + list[c].n) chunk_start += list[c++].n;
              if (float* slot = list[c].scores; slot != nullptr) slot[e - chunk_start] += prob[j];
            }
          }
        }
      }
    }
  });
}

}  // namespace ekva::cpu
#endif  // HWY_ONCE
