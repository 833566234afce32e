// y = x · wᵀ with bf16 or f32 weights, f32 activations and accumulation.
//
// Decode (one token) is a GEMV bound by reading w once; prefill reuses each weight
// tile for a block of tokens. The micro-kernel computes kRows weight rows against
// kTokens token rows with kRows * kTokens vector accumulators: each weight vector
// loaded (and promoted from bf16) feeds kTokens FMAs, and kRows independent weight
// streams keep enough loads in flight to approach the read bandwidth.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/matmul.cpp"
#include <hwy/cache_control.h>
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "cpu/reduce-inl.h"

#include <cstdlib>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/kernels.h"

HWY_BEFORE_NAMESPACE();
namespace ekva::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DU16 = hn::Rebind<uint16_t, DF>;  // half-width: as many lanes as DF
using DU32 = hn::RebindToUnsigned<DF>;

template <typename WT>
HWY_INLINE hn::Vec<DF> load_weights(const WT* p) {
  const DF df;
  if constexpr (std::is_same_v<WT, float>) {
    return hn::LoadU(df, p);
  } else {  // bf16: the upper half of an f32
    const DU16 du16;
    const DU32 du32;
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, p))));
  }
}

template <typename WT>
HWY_INLINE float weight_scalar(const WT* p, int64_t i) {
  if constexpr (std::is_same_v<WT, float>) {
    return p[i];
  } else {
    return bf16_to_f32(p[i]);
  }
}

// out[r][t] = w[r] · x[t] for kRows rows and kTokens tokens.
template <int kRows, int kTokens, typename WT>
HWY_INLINE void tile(const WT* const* w, const float* const* x, int64_t K, float* out_rows[]) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  hn::Vec<DF> acc[kRows][kTokens];
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < kTokens; ++t) acc[r][t] = hn::Zero(df);
  int64_t k = 0;
  for (; k + N <= K; k += N) {
    hn::Vec<DF> xv[kTokens];
    for (int t = 0; t < kTokens; ++t) xv[t] = hn::LoadU(df, x[t] + k);
    for (int r = 0; r < kRows; ++r) {
      const auto wv = load_weights<WT>(w[r] + k);
      for (int t = 0; t < kTokens; ++t) acc[r][t] = hn::MulAdd(wv, xv[t], acc[r][t]);
    }
  }
  constexpr size_t kN = hn::MaxLanes(DF());
  constexpr size_t kAcc = static_cast<size_t>(kRows * kTokens);
  if constexpr (!HWY_HAVE_SCALABLE && kN > 1 && kAcc % kN == 0) {
    // All accumulators reduced together (kN at a time): at small widths (a 256-wide
    // model's rows are 16 vectors) one reduction per accumulator cost as much as
    // the products.
    HWY_ALIGN float sums[kAcc];
    for (size_t g = 0; g < kAcc; g += kN)
      hn::Store(sum_lanes_transposed<kN>(df, &acc[0][0] + g), df, sums + g);
    for (int r = 0; r < kRows; ++r)
      for (int t = 0; t < kTokens; ++t) {
        float sum = sums[r * kTokens + t];
        for (int64_t kk = k; kk < K; ++kk) sum += weight_scalar(w[r], kk) * x[t][kk];
        out_rows[t][r] = sum;
      }
  } else {
    for (int r = 0; r < kRows; ++r) {
      for (int t = 0; t < kTokens; ++t) {
        float sum = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
        for (int64_t kk = k; kk < K; ++kk) sum += weight_scalar(w[r], kk) * x[t][kk];
        out_rows[t][r] = sum;
      }
    }
  }
}

// The decode GEMV's software prefetch (gemv_prefetch_bytes() below picks it per host):
// on an Intel Xeon host with one-core streams limited by outstanding misses, the
// hardware prefetchers alone left the decode step at 0.60 of the streaming read rate
// and prefetching 4096 bytes ahead took it to 0.81-0.94 (1.2 GB model; 2048-8192
// within the noise of one another, 512 at 0.71). On an AMD EPYC host the same
// prefetch halved it: 0.50-0.51 with it, 0.92-0.97 without (bench/results/
// cpu_decode_2026-12-04.json). A prefetch past the end of a matrix is harmless (it
// never faults).

// One token (decode): each weight row is one linear stream, walked with four
// independent accumulators. Reading rows one after another keeps the access
// pattern a single sequential stream per thread, which the hardware prefetcher
// follows across the whole matrix; interleaving several rows (as the prefill tile
// does) splits it into short streams the prefetcher keeps losing.
template <bool kPrefetch, typename WT>
HWY_INLINE float row_dot(const WT* w, const float* x, int64_t K, int64_t prefetch_bytes) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
  int64_t k = 0;
  for (; k + 4 * N <= K; k += 4 * N) {
    if constexpr (kPrefetch)
      for (int64_t b = 0; b < 4 * N * int64_t{sizeof(WT)}; b += 64)
        hwy::Prefetch(
            reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w + k) + prefetch_bytes + b));
    a0 = hn::MulAdd(load_weights<WT>(w + k), hn::LoadU(df, x + k), a0);
    a1 = hn::MulAdd(load_weights<WT>(w + k + N), hn::LoadU(df, x + k + N), a1);
    a2 = hn::MulAdd(load_weights<WT>(w + k + 2 * N), hn::LoadU(df, x + k + 2 * N), a2);
    a3 = hn::MulAdd(load_weights<WT>(w + k + 3 * N), hn::LoadU(df, x + k + 3 * N), a3);
  }
  for (; k + N <= K; k += N) a0 = hn::MulAdd(load_weights<WT>(w + k), hn::LoadU(df, x + k), a0);
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; k < K; ++k) sum += weight_scalar(w, k) * x[k];
  return sum;
}

// A few tokens (a decode batch, an expert's share of one): each weight row still
// one linear stream, against every token at once; each weight vector loaded (and
// widened) feeds kTokens FMAs, two accumulators per token for latency. The 4-row
// tile below splits a thread's reads into four interleaved streams, which halved the
// weights' read rate from memory at 2-8 tokens on the AMD host (14 GB/s against 30 at
// 1 token).
template <int kTokens, bool kPrefetch, typename WT>
HWY_INLINE void row_dot_tokens(const WT* w, const float* const* x, int64_t K,
                               int64_t prefetch_bytes, float* out) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  hn::Vec<DF> a0[kTokens], a1[kTokens];
  for (int t = 0; t < kTokens; ++t) a0[t] = a1[t] = hn::Zero(df);
  int64_t k = 0;
  for (; k + 2 * N <= K; k += 2 * N) {
    if constexpr (kPrefetch)
      for (int64_t b = 0; b < 2 * N * int64_t{sizeof(WT)}; b += 64)
        hwy::Prefetch(
            reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w + k) + prefetch_bytes + b));
    const auto w0 = load_weights<WT>(w + k), w1 = load_weights<WT>(w + k + N);
    for (int t = 0; t < kTokens; ++t) {
      a0[t] = hn::MulAdd(w0, hn::LoadU(df, x[t] + k), a0[t]);
      a1[t] = hn::MulAdd(w1, hn::LoadU(df, x[t] + k + N), a1[t]);
    }
  }
  for (; k + N <= K; k += N) {
    const auto w0 = load_weights<WT>(w + k);
    for (int t = 0; t < kTokens; ++t) a0[t] = hn::MulAdd(w0, hn::LoadU(df, x[t] + k), a0[t]);
  }
  for (int t = 0; t < kTokens; ++t) {
    float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(a0[t], a1[t])));
    for (int64_t kk = k; kk < K; ++kk) sum += weight_scalar(w, kk) * x[t][kk];
    out[t] = sum;
  }
}

template <int kTokens, typename WT>
void rows_tokens(const float* const* x_rows, const WT* w, int64_t K, int64_t row_begin,
                 int64_t row_end, float* const* y_rows, int64_t prefetch_bytes) {
  float out[kTokens];
  for (int64_t r = row_begin; r < row_end; ++r) {
    if (prefetch_bytes > 0)
      row_dot_tokens<kTokens, true>(w + r * K, x_rows, K, prefetch_bytes, out);
    else
      row_dot_tokens<kTokens, false>(w + r * K, x_rows, K, 0, out);
    for (int t = 0; t < kTokens; ++t) y_rows[t][r] = out[t];
  }
}

// Tokens up to which a matmul streams rows (row_dot_tokens) instead of tiling: at 8
// tokens the streamed form was no faster than the tile from memory (8.6 against 9.2
// GB/s of weights; eight token pointers and sixteen accumulators crowd the registers).
// At 4 the token loads bound it (four 64-byte loads per weight vector: 20-23 GB/s).
// Two rows at a time (half the token loads) made two streams and halved it again.
constexpr int64_t kStreamTokens = 4;

template <typename WT>
void matmul_range_t(const float* const* x_rows, int64_t n_tokens, const WT* w, int64_t K,
                    int64_t row_begin, int64_t row_end, float* const* y_rows,
                    int64_t prefetch_bytes) {
  if (n_tokens == 1) {
    if (prefetch_bytes > 0)
      for (int64_t r = row_begin; r < row_end; ++r)
        y_rows[0][r] = row_dot<true>(w + r * K, x_rows[0], K, prefetch_bytes);
    else
      for (int64_t r = row_begin; r < row_end; ++r)
        y_rows[0][r] = row_dot<false>(w + r * K, x_rows[0], K, 0);
    return;
  }
  if (n_tokens <= kStreamTokens) {
    switch (n_tokens) {
      case 2:
        return rows_tokens<2>(x_rows, w, K, row_begin, row_end, y_rows, prefetch_bytes);
      case 3:
        return rows_tokens<3>(x_rows, w, K, row_begin, row_end, y_rows, prefetch_bytes);
      default:
        return rows_tokens<4>(x_rows, w, K, row_begin, row_end, y_rows, prefetch_bytes);
    }
  }
  constexpr int kRows = 4;
  constexpr int kTokens = 4;
  int64_t r = row_begin;
  for (; r < row_end; r += (row_end - r >= kRows ? kRows : 1)) {
    const bool full_rows = row_end - r >= kRows;
    const WT* wr[kRows];
    for (int i = 0; i < kRows; ++i) wr[i] = w + (r + (full_rows ? i : 0)) * K;
    int64_t t = 0;
    for (; t + kTokens <= n_tokens; t += kTokens) {
      float* out[kTokens];
      for (int i = 0; i < kTokens; ++i) out[i] = y_rows[t + i] + r;
      if (full_rows)
        tile<kRows, kTokens>(wr, x_rows + t, K, out);
      else
        tile<1, kTokens>(wr, x_rows + t, K, out);
    }
    for (; t < n_tokens; ++t) {
      float* out[1] = {y_rows[t] + r};
      if (full_rows)
        tile<kRows, 1>(wr, x_rows + t, K, out);
      else
        tile<1, 1>(wr, x_rows + t, K, out);
    }
  }
}

void MatmulRange(const float* const* x_rows, int64_t n_tokens, const void* w, DType dtype,
                 int64_t K, int64_t row_begin, int64_t row_end, float* const* y_rows,
                 int64_t prefetch_bytes) {
  if (dtype == DType::kBF16)
    matmul_range_t(x_rows, n_tokens, static_cast<const uint16_t*>(w), K, row_begin, row_end, y_rows,
                   prefetch_bytes);
  else
    matmul_range_t(x_rows, n_tokens, static_cast<const float*>(w), K, row_begin, row_end, y_rows,
                   prefetch_bytes);
}

}  // namespace ekva::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ekva::cpu {

HWY_EXPORT(MatmulRange);

int64_t gemv_prefetch_bytes() {
  static const int64_t bytes = [] {
    if (const char* env = std::getenv("EKVA_GEMV_PREFETCH")) {
      char* end = nullptr;
      const long long v = std::strtoll(env, &end, 10);
      if (end == env || *end != '\0' || v < 0 || v > (1 << 20))
        fail("EKVA_GEMV_PREFETCH must be a byte distance in 0..1048576, got '{}'", env);
      return static_cast<int64_t>(v);
    }
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_is("intel") ? int64_t{4096} : int64_t{0};
#else
    return int64_t{0};
#endif
  }();
  return bytes;
}

namespace {

// Rows per thread share are rounded to multiples of this so that the 4-row tile
// rarely falls back to single rows.
constexpr int64_t kRowAlign = 16;

void matmul_impl(const float* const* x_rows, int64_t n_tokens, const WeightMatrix& w,
                 float* const* y_rows, ThreadPool& pool) {
  EKVA_CHECK(w.dtype == DType::kBF16 || w.dtype == DType::kF32, "matmul: unsupported dtype {}",
             dtype_name(w.dtype));
  const int64_t blocks = (w.rows + kRowAlign - 1) / kRowAlign;
  const int64_t prefetch = gemv_prefetch_bytes();
  pool.parallel_for(blocks, [&](int64_t b0, int64_t b1, int) {
    const int64_t r0 = b0 * kRowAlign;
    const int64_t r1 = std::min(w.rows, b1 * kRowAlign);
    HWY_DYNAMIC_DISPATCH(MatmulRange)
    (x_rows, n_tokens, w.data, w.dtype, w.cols, r0, r1, y_rows, prefetch);
  });
}

}  // namespace

void matmul(const MatmulParams& p, ThreadPool& pool) {
  // Row pointers let one kernel serve contiguous and gathered inputs alike; kept
  // per calling thread so decode's hundred calls a step allocate nothing.
  thread_local std::vector<const float*> xr;
  thread_local std::vector<float*> yr;
  xr.resize(static_cast<size_t>(p.n_rows));
  yr.resize(static_cast<size_t>(p.n_rows));
  for (int64_t i = 0; i < p.n_rows; ++i) {
    const int64_t row = p.rows != nullptr ? int64_t{p.rows[i]} : i;
    xr[static_cast<size_t>(i)] = p.x + row * p.x_stride();
    yr[static_cast<size_t>(i)] = p.y + i * p.ldy;
  }
  matmul_impl(xr.data(), p.n_rows, p.w, yr.data(), pool);
}

}  // namespace ekva::cpu
#endif  // HWY_ONCE
