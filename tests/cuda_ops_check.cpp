#include "cuda_ops_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <numeric>
#include <random>
#include <sstream>

#include "core/dtype.h"
#include "ekva/error.h"
#include "ops/attention_plan.h"
#include "ops/ops.h"

namespace ekva::test {

namespace {

using Metrics = std::vector<CudaOpsMetric>;
using cuda::CudaBackend;

// Tolerances (see cuda_ops_check.h).
constexpr double kExact = 0;
constexpr double kF32 = 1e-6;
constexpr double kMatmulF32 = 1e-5;
constexpr double kMatmulBf16 = 8e-3;
constexpr double kMatmulBf16SameX = 2e-5;
constexpr double kAttention = 1e-3;

std::string str(int64_t v) { return std::to_string(v); }
std::string dname(DType t) { return t == DType::kBF16 ? "bf16" : "f32"; }

// ||a - b|| / ||b||; NaN anywhere stays NaN (and fails every tolerance).
double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double{a[i]} - double{b[i]};
    num += d * d;
    den += double{b[i]} * double{b[i]};
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);
}
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() != b.size() ? INFINITY : rel_err(a.data(), b.data(), a.size());
}

// Normal values times `scale`, never all zero.
std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  if (n > 0 && std::all_of(v.begin(), v.end(), [](float x) { return x == 0.f; })) v[0] = scale;
  return v;
}
std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
  std::vector<uint16_t> h(f.size());
  for (size_t i = 0; i < f.size(); ++i) h[i] = f32_to_bf16(f[i]);
  return h;
}

// Device copies through the backend's own allocate/upload/download.
template <typename T>
BackendBuffer<T> to_device(CudaBackend& g, const std::vector<T>& h) {
  BackendBuffer<T> b(g, std::max<size_t>(h.size(), 1));
  g.upload(b.data(), h.data(), h.size() * sizeof(T));
  return b;
}
template <typename T>
std::vector<T> to_host(CudaBackend& g, const BackendBuffer<T>& b, size_t n) {
  std::vector<T> h(n);
  g.download(h.data(), b.data(), n * sizeof(T));
  return h;
}
// NaN bit patterns (0xff bytes) for outputs, so an element the GPU never writes shows.
std::vector<float> poison(size_t n) { return std::vector<float>(n, NAN); }

// A weight matrix in host memory (f32 values, or bf16 bits) and its device copy.
struct Weights {
  DType dtype;
  int64_t rows, cols;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  const void* host() const {
    return dtype == DType::kBF16 ? static_cast<const void*>(bf16.data()) : f32.data();
  }
  size_t bytes() const { return static_cast<size_t>(rows * cols) * dtype_size(dtype); }
};
Weights make_weights(DType dtype, int64_t rows, int64_t cols, uint64_t seed, float scale) {
  Weights w{dtype, rows, cols, random_floats(static_cast<size_t>(rows * cols), seed, scale), {}};
  if (dtype == DType::kBF16) {
    w.bf16 = to_bf16(w.f32);
    w.f32.clear();
  }
  return w;
}
BackendBuffer<uint8_t> weights_to_device(CudaBackend& g, const Weights& w) {
  BackendBuffer<uint8_t> b(g, std::max<size_t>(w.bytes(), 1));
  g.upload(b.data(), w.host(), w.bytes());
  return b;
}

// ---- cases -------------------------------------------------------------------------

CudaOpsCase embedding_case(int64_t n, int64_t vocab, int64_t width, DType dtype) {
  return {"embedding_" + str(n) + "x" + str(vocab) + "x" + str(width) + "_" + dname(dtype),
          "embedding", n * width <= 4096, [=](CudaBackend& g, Backend& ref) -> Metrics {
            const Weights table = make_weights(dtype, vocab, width, 6, 0.5f);
            std::vector<int32_t> ids(static_cast<size_t>(n));
            for (int64_t t = 0; t < n; ++t)
              ids[static_cast<size_t>(t)] = static_cast<int32_t>((t * 31 + 5) % vocab);
            ids.back() = static_cast<int32_t>(vocab - 1);  // the last row too
            std::vector<float> y_ref(static_cast<size_t>(n * width));
            ref.embedding({{dtype, vocab, width, table.host()}, ids.data(), n, y_ref.data()});
            const auto d_table = weights_to_device(g, table);
            const auto d_ids = to_device(g, ids);
            auto d_y = to_device(g, poison(y_ref.size()));
            g.embedding({{dtype, vocab, width, d_table.data()}, d_ids.data(), n, d_y.data()});
            return {{"out", rel_err(to_host(g, d_y, y_ref.size()), y_ref), kExact}};
          }};
}

// Bad ids are found on the device and thrown at synchronize(), naming the token; the
// good rows of the call are written, and the backend works afterwards.
CudaOpsCase embedding_bad_token_case() {
  return {
      "embedding_bad_token", "embedding", true, [](CudaBackend& g, Backend& ref) -> Metrics {
        const int64_t vocab = 101, width = 33, n = 9;
        const Weights table = make_weights(DType::kBF16, vocab, width, 7, 0.5f);
        std::vector<int32_t> ids = {3, 100, 0, 57, 8, -1, 44, 44, 9};
        const auto d_table = weights_to_device(g, table);
        auto d_y = to_device(g, poison(static_cast<size_t>(n * width)));
        const WeightMatrix wm{DType::kBF16, vocab, width, d_table.data()};
        // One bad id per call, at row 5: just past the end, negative, far out. Counts the
        // calls whose error did not name the token, its row and the bound.
        double unnamed = 0;
        for (int32_t bad : {101, -1, 1000}) {
          ids[5] = bad;
          const auto d_ids = to_device(g, ids);
          g.embedding({wm, d_ids.data(), n, d_y.data()});
          bool named = false;
          try {
            g.synchronize();
          } catch (const Error& e) {
            const std::string m = e.what();
            named = m.find("token " + std::to_string(bad) + " ") != std::string::npos &&
                    m.find("row 5") != std::string::npos &&
                    m.find("outside [0, 101)") != std::string::npos;
          }
          unnamed += named ? 0 : 1;
        }
        // The good rows against the reference (with the bad id replaced).
        std::vector<int32_t> fixed = ids;
        fixed[5] = 0;
        std::vector<float> y_ref(static_cast<size_t>(n * width));
        ref.embedding({{DType::kBF16, vocab, width, table.host()}, fixed.data(), n, y_ref.data()});
        std::vector<float> y = to_host(g, d_y, y_ref.size());
        double rows_err = 0;
        for (int64_t t = 0; t < n; ++t) {
          const size_t o = static_cast<size_t>(t * width), w = static_cast<size_t>(width);
          if (t != 5) rows_err = std::max(rows_err, rel_err(&y[o], &y_ref[o], w));
        }
        // Cleared: a good call synchronises without error.
        auto d_fixed = to_device(g, fixed);
        g.embedding({wm, d_fixed.data(), n, d_y.data()});
        double after = 1;
        try {
          after = rel_err(to_host(g, d_y, y_ref.size()), y_ref);
        } catch (const Error&) {
        }
        return {{"errors_not_naming_token", unnamed, kExact},
                {"good_rows", rows_err, kExact},
                {"after_fault", after, kExact}};
      }};
}

CudaOpsCase matmul_case(int64_t n, int64_t rows, int64_t cols, DType dtype, bool gather) {
  return {"matmul_" + str(n) + "x" + str(rows) + "x" + str(cols) + "_" + dname(dtype) +
              (gather ? "_gather" : ""),
          "matmul", n * rows * cols <= 100000, [=](CudaBackend& g, Backend& ref) -> Metrics {
            const Weights w = make_weights(dtype, rows, cols, 2, 0.1f);
            const int64_t n_x = gather ? n + 3 : n;
            const auto x = random_floats(static_cast<size_t>(n_x * cols), 1);
            std::vector<int32_t> idx(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i)
              idx[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 2) % n_x);
            const int64_t ldy = rows + 5;  // the padding past each row must stay as it was
            std::vector<float> y_ref(static_cast<size_t>(n * ldy), 0.5f);
            const std::vector<float> y0 = y_ref;
            MatmulParams p{
                x.data(),     n,  gather ? idx.data() : nullptr, {dtype, rows, cols, w.host()},
                y_ref.data(), ldy};
            ref.matmul(p);
            const auto d_w = weights_to_device(g, w);
            const auto d_x = to_device(g, x);
            const auto d_idx = to_device(g, idx);
            auto d_y = to_device(g, y0);
            g.matmul({d_x.data(),
                      n,
                      gather ? d_idx.data() : nullptr,
                      {dtype, rows, cols, d_w.data()},
                      d_y.data(),
                      ldy});
            const auto y = to_host(g, d_y, y_ref.size());
            if (dtype != DType::kBF16) return {{"y", rel_err(y, y_ref), kMatmulF32}};
            // The same x rounded to bf16, as the device rounds it: only the summation
            // order may differ.
            std::vector<float> xr(x.size());
            for (size_t i = 0; i < x.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
            std::vector<float> y_same = y0;
            p.x = xr.data();
            p.y = y_same.data();
            ref.matmul(p);
            return {{"y", rel_err(y, y_ref), kMatmulBf16},
                    {"y_same_bf16_x", rel_err(y, y_same), kMatmulBf16SameX}};
          }};
}

CudaOpsCase rmsnorm_case(int64_t n, int64_t width, bool in_place) {
  return {"rmsnorm_" + str(n) + "x" + str(width) + (in_place ? "_in_place" : ""), "rmsnorm",
          n * width <= 8192, [=](CudaBackend& g, Backend& ref) -> Metrics {
            const auto x = random_floats(static_cast<size_t>(n * width), 3, 2.f);
            const auto w = random_floats(static_cast<size_t>(width), 4);
            std::vector<float> y_ref(x.size());
            ref.rmsnorm({x.data(), w.data(), n, width, 1e-5f, y_ref.data()});
            auto d_x = to_device(g, x);
            const auto d_w = to_device(g, w);
            auto d_y = to_device(g, poison(x.size()));
            float* out = in_place ? d_x.data() : d_y.data();
            g.rmsnorm({d_x.data(), d_w.data(), n, width, 1e-5f, out});
            return {{"out", rel_err(to_host(g, in_place ? d_x : d_y, x.size()), y_ref), kF32}};
          }};
}

CudaOpsCase rope_case(int64_t n, int64_t heads, int64_t dim, int32_t max_pos, float theta) {
  return {"rope_" + str(n) + "x" + str(heads) + "x" + str(dim) + "_pos" + str(max_pos), "rope",
          n * heads * dim <= 8192, [=](CudaBackend& g, Backend& ref) -> Metrics {
            auto x = random_floats(static_cast<size_t>(n * heads * dim), 5);
            std::vector<int32_t> pos(static_cast<size_t>(n));
            for (int64_t t = 0; t < n; ++t)
              pos[static_cast<size_t>(t)] = static_cast<int32_t>((t * 977 + 13) % max_pos);
            pos[0] = max_pos - 1;  // the largest angle
            std::vector<float> inv(static_cast<size_t>(dim / 2));
            for (size_t i = 0; i < inv.size(); ++i)
              inv[i] = std::pow(theta, -2.f * static_cast<float>(i) / static_cast<float>(dim));
            auto d_x = to_device(g, x);
            const auto d_pos = to_device(g, pos);
            const auto d_inv = to_device(g, inv);
            ref.rope({x.data(), pos.data(), n, heads, dim, inv.data()});
            g.rope({d_x.data(), d_pos.data(), n, heads, dim, d_inv.data()});
            return {{"x", rel_err(to_host(g, d_x, x.size()), x), kF32}};
          }};
}

// In-place element-wise ops: x (and a second operand) random, scale chosen so that
// clamp and silu see their extremes.
template <typename Params>
CudaOpsCase elementwise_case(std::string op, int64_t n, float scale, double tolerance,
                             std::function<Params(float* x, const float* y)> make,
                             void (Backend::*method)(const Params&)) {
  return {op + "_" + str(n), op, n <= 8192, [=](CudaBackend& g, Backend& ref) -> Metrics {
            auto x = random_floats(static_cast<size_t>(n), 7, scale);
            const auto y = random_floats(static_cast<size_t>(n), 8);
            auto d_x = to_device(g, x);
            const auto d_y = to_device(g, y);
            (ref.*method)(make(x.data(), y.data()));
            (static_cast<Backend&>(g).*method)(make(d_x.data(), d_y.data()));
            return {{"x", rel_err(to_host(g, d_x, x.size()), x), tolerance}};
          }};
}

CudaOpsCase add_bias_case(int64_t n, int64_t width) {
  return {"add_bias_" + str(n) + "x" + str(width), "add_bias", n * width <= 8192,
          [=](CudaBackend& g, Backend& ref) -> Metrics {
            auto x = random_floats(static_cast<size_t>(n * width), 17);
            const auto b = random_floats(static_cast<size_t>(width), 18);
            auto d_x = to_device(g, x);
            const auto d_b = to_device(g, b);
            ref.add_bias({x.data(), b.data(), n, width});
            g.add_bias({d_x.data(), d_b.data(), n, width});
            return {{"x", rel_err(to_host(g, d_x, x.size()), x), kExact}};
          }};
}

CudaOpsCase route_case(int64_t n, int experts, int top_k, bool renormalize, bool underflow) {
  return {
      "route_" + str(n) + "x" + str(experts) + "_top" + str(top_k) + (renormalize ? "_norm" : "") +
          (underflow ? "_underflow" : ""),
      "route", n * experts <= 4096,
      [=](CudaBackend& g, Backend& ref) -> Metrics {
        auto logits = random_floats(static_cast<size_t>(n * experts), 9, 2.f);
        for (int64_t t = 0; t < n; ++t) {
          float* l = logits.data() + t * experts;
          // Exact ties must go to the lower id: a tie anywhere every third token,
          // a tie at the very top every fifth.
          if (t % 3 == 0 && experts > 1) l[1] = l[0];
          if (t % 5 == 1 && experts > 5) l[5] = l[2] = *std::max_element(l, l + experts) + 1;
          // Probabilities that underflow to 0 in f32 (logits 300 below the top, rising
          // with the id): ranked by f32 probability, as the CPU backend ranks them, they
          // all tie and the lower ids win (ranked by logit, or in ref::'s double, the
          // higher ids would).
          if (underflow)
            for (int e = 0; e < experts; ++e)
              if (e % 4 != 3) l[e] = -300.f + static_cast<float>(e);
        }
        const auto K = static_cast<size_t>(n * top_k);
        std::vector<int32_t> e_ref(K);
        std::vector<float> w_ref(K);
        ref.route({logits.data(), n, experts, top_k, renormalize, e_ref.data(), w_ref.data()});
        const auto d_logits = to_device(g, logits);
        auto d_e = to_device(g, std::vector<int32_t>(K, -7));
        auto d_w = to_device(g, poison(K));
        g.route({d_logits.data(), n, experts, top_k, renormalize, d_e.data(), d_w.data()});
        const auto e = to_host(g, d_e, K);
        const auto w = to_host(g, d_w, K);
        double mismatches = 0;
        for (size_t i = 0; i < K; ++i) mismatches += e[i] != e_ref[i] ? 1 : 0;
        return {{"expert_mismatches", mismatches, kExact}, {"weights", rel_err(w, w_ref), kF32}};
      },
      underflow ? "cpu" : ""};
}

CudaOpsCase scatter_add_case(int64_t n, int64_t width) {
  return {"scatter_add_" + str(n) + "x" + str(width), "scatter_add", n * width <= 8192,
          [=](CudaBackend& g, Backend& ref) -> Metrics {
            const int64_t n_out = n + 4;
            auto out = random_floats(static_cast<size_t>(n_out * width), 10);
            const auto y = random_floats(static_cast<size_t>(n * width), 11);
            const auto w = random_floats(static_cast<size_t>(n), 12);
            std::vector<int32_t> rows(static_cast<size_t>(n_out));
            std::iota(rows.begin(), rows.end(), 0);
            std::shuffle(rows.begin(), rows.end(), std::mt19937(13));
            rows.resize(static_cast<size_t>(n));  // distinct, some output rows untouched
            auto d_out = to_device(g, out);
            const auto d_y = to_device(g, y);
            const auto d_w = to_device(g, w);
            const auto d_rows = to_device(g, rows);
            ref.scatter_add({out.data(), y.data(), rows.data(), w.data(), n, width});
            g.scatter_add({d_out.data(), d_y.data(), d_rows.data(), d_w.data(), n, width});
            return {{"out", rel_err(to_host(g, d_out, out.size()), out), kF32}};
          }};
}

CudaOpsCase gated_add_case(int64_t n, int64_t width) {
  return {"gated_add_" + str(n) + "x" + str(width), "gated_add", n * width <= 8192,
          [=](CudaBackend& g, Backend& ref) -> Metrics {
            auto out = random_floats(static_cast<size_t>(n * width), 14);
            const auto y = random_floats(static_cast<size_t>(n * width), 15);
            const auto gl = random_floats(static_cast<size_t>(n), 16, 3.f);
            auto d_out = to_device(g, out);
            const auto d_y = to_device(g, y);
            const auto d_gl = to_device(g, gl);
            ref.gated_add({out.data(), y.data(), gl.data(), n, width});
            g.gated_add({d_out.data(), d_y.data(), d_gl.data(), n, width});
            return {{"out", rel_err(to_host(g, d_out, out.size()), out), kF32}};
          }};
}

// A batch of sequences with ragged bf16 caches (some lists empty), each list cut into
// chunks of at most `block` entries stored apart; the three-argument form (host
// metadata, scored queries) against the reference, then the two-argument form with
// the metadata in device memory when `device_metadata`: the same plan, so the same bits.
struct AttentionShape {
  std::vector<int64_t> lengths, queries;  // per sequence
  int64_t heads, kv_heads, dim, window, block;
  bool scored, device_metadata;
};

CudaOpsCase attention_case(const std::string& name, AttentionShape s) {
  int64_t total = 0;
  for (int64_t l : s.lengths) total += l;
  return {
      "attention_" + name, "attention", total * s.kv_heads <= 3000,
      [=](CudaBackend& g, Backend& ref) -> Metrics {
        std::mt19937_64 rng(31);
        const int64_t S = static_cast<int64_t>(s.lengths.size()), KH = s.kv_heads, D = s.dim,
                      H = s.heads;
        // Entries of list (seq, kv-head): sequence length minus a random dropout,
        // positions increasing with gaps (a compressed cache).
        struct Chunk {
          int64_t offset, n;
        };
        std::vector<std::vector<Chunk>> lists(static_cast<size_t>(S * KH));
        std::vector<int32_t> pos;
        std::vector<int32_t> span(static_cast<size_t>(S), 1);
        for (int64_t q = 0; q < S; ++q)
          for (int64_t h = 0; h < KH; ++h) {
            const int64_t want =
                s.lengths[static_cast<size_t>(q)] == 0
                    ? 0
                    : std::max<int64_t>(1, s.lengths[static_cast<size_t>(q)] - (h * 13) % 7);
            int32_t p = 0;
            for (int64_t done = 0; done < want;) {
              const int64_t n = std::min<int64_t>(
                  want - done, std::uniform_int_distribution<int64_t>(1, s.block)(rng));
              lists[static_cast<size_t>(q * KH + h)].push_back(
                  {static_cast<int64_t>(pos.size()), n});
              for (int64_t j = 0; j < n; ++j) {
                p += static_cast<int32_t>(1 + rng() % 3);
                pos.push_back(p);
              }
              done += n;
            }
            span[static_cast<size_t>(q)] = std::max(span[static_cast<size_t>(q)], p + 1);
          }
        const auto E = static_cast<int64_t>(pos.size());
        const auto kv = to_bf16(random_floats(static_cast<size_t>(2 * E * D), 32));
        auto scores0 = random_floats(static_cast<size_t>(E), 33, 1e-6f);
        for (float& x : scores0) x = std::fabs(x) + 1e-7f;
        // Queries: the last one of each sequence decodes (sees everything), the others
        // sit at random positions (the causal mask); q_scored on every other.
        std::vector<int32_t> q_pos, q_seq;
        std::vector<uint8_t> q_scored;
        for (int64_t q = 0; q < S; ++q)
          for (int64_t j = 0; j < s.queries[static_cast<size_t>(q)]; ++j) {
            q_seq.push_back(static_cast<int32_t>(q));
            q_pos.push_back(j + 1 == s.queries[static_cast<size_t>(q)]
                                ? span[static_cast<size_t>(q)]
                                : static_cast<int32_t>(
                                      rng() % static_cast<uint64_t>(span[static_cast<size_t>(q)])));
            q_scored.push_back(s.scored && q_scored.size() % 2 == 0 ? 1 : 0);
          }
        const auto T = static_cast<int64_t>(q_pos.size());
        const auto qv = random_floats(static_cast<size_t>(T * H * D), 34);
        const auto chunk_lists = [&](const uint16_t* k, const int32_t* p, float* sc) {
          std::vector<std::vector<KvChunk>> out(lists.size());
          for (size_t li = 0; li < lists.size(); ++li)
            for (const Chunk& c : lists[li])
              out[li].push_back({k + c.offset * D, k + (E + c.offset) * D, p + c.offset, c.n,
                                 DType::kBF16, sc + c.offset});
          return out;
        };
        AttentionParams ap;
        ap.n_queries = T;
        ap.n_heads = H;
        ap.n_kv_heads = KH;
        ap.head_dim = D;
        ap.scale = 1.f / std::sqrt(static_cast<float>(D));
        ap.sliding_window = s.window;
        ap.q_positions = q_pos.data();
        ap.q_seq = q_seq.data();
        ap.n_seqs = S;
        ap.q_scored = s.scored ? q_scored.data() : nullptr;
        // Reference on host copies.
        std::vector<float> out_ref(static_cast<size_t>(T * H * D)), sc_ref = scores0;
        const auto host_lists = chunk_lists(kv.data(), pos.data(), sc_ref.data());
        AttentionParams hp = ap;
        hp.q = qv.data();
        hp.out = out_ref.data();
        ref.attention(hp, host_lists);
        // The GPU: the three-argument form with a plan for its options.
        const auto d_kv = to_device(g, kv);
        const auto d_pos = to_device(g, pos);
        auto d_sc = to_device(g, scores0);
        const auto d_q = to_device(g, qv);
        auto d_out = to_device(g, poison(out_ref.size()));
        const auto dev_lists = chunk_lists(d_kv.data(), d_pos.data(), d_sc.data());
        AttentionParams dp = ap;
        dp.q = d_q.data();
        dp.out = d_out.data();
        const AttentionPlan plan = plan_attention(dp, dev_lists, g.attention_plan_options());
        g.attention(dp, dev_lists, plan);
        const auto out = to_host(g, d_out, out_ref.size());
        const auto sc = to_host(g, d_sc, scores0.size());
        std::vector<float> added(sc.size()), added_ref(sc.size());
        for (size_t i = 0; i < sc.size(); ++i) {
          added[i] = sc[i] - scores0[i];
          added_ref[i] = sc_ref[i] - scores0[i];
        }
        Metrics m = {{"out", rel_err(out, out_ref), kAttention}};
        if (s.scored) m.push_back({"scores", rel_err(added, added_ref), kAttention});
        // The two-argument form, unscored, metadata where the case says.
        const auto d_qpos = to_device(g, q_pos);
        const auto d_qseq = to_device(g, q_seq);
        auto d_out2 = to_device(g, poison(out_ref.size()));
        AttentionParams dp2 = dp;
        dp2.out = d_out2.data();
        dp2.q_scored = nullptr;
        if (s.device_metadata) {
          dp2.q_positions = d_qpos.data();
          dp2.q_seq = d_qseq.data();
        }
        g.attention(dp2, dev_lists);
        const auto out2 = to_host(g, d_out2, out_ref.size());
        double bits_differ = 0;
        for (size_t i = 0; i < out.size(); ++i)
          bits_differ += std::memcmp(&out[i], &out2[i], 4) != 0 ? 1 : 0;
        m.push_back({"two_arg_form_bits_differ", bits_differ, kExact});
        if (s.device_metadata && s.scored) {
          // Device-resident q_scored too: the scores added again match the first pass.
          const auto d_qsc = to_device(g, q_scored);
          AttentionParams dp3 = dp2;
          dp3.q_scored = d_qsc.data();
          g.attention(dp3, dev_lists);
          const auto sc3 = to_host(g, d_sc, scores0.size());
          std::vector<float> added3(sc3.size());
          for (size_t i = 0; i < sc3.size(); ++i) added3[i] = sc3[i] - sc[i];
          m.push_back({"scores_device_metadata", rel_err(added3, added_ref), kAttention});
        }
        return m;
      }};
}

// A layer's first ops queued back to back with no synchronisation in between
// (embedding, rmsnorm, bf16 q projection with a bias, rope, residual add): stream
// order and scratch reuse.
CudaOpsCase chain_case() {
  return {"chain_embed_norm_proj_rope_add", "chain", true,
          [](CudaBackend& g, Backend& ref) -> Metrics {
            const int64_t T = 7, V = 211, Hd = 96, heads = 3, D = 32;
            const Weights emb = make_weights(DType::kBF16, V, Hd, 40, 1.f);
            const Weights wq = make_weights(DType::kBF16, heads * D, Hd, 41, 0.1f);
            const auto norm_w = random_floats(static_cast<size_t>(Hd), 42);
            const auto bias = random_floats(static_cast<size_t>(heads * D), 43);
            std::vector<int32_t> ids(static_cast<size_t>(T)), pos(static_cast<size_t>(T));
            for (int64_t t = 0; t < T; ++t) {
              ids[static_cast<size_t>(t)] = static_cast<int32_t>((t * 53 + 7) % V);
              pos[static_cast<size_t>(t)] = static_cast<int32_t>(t * 1001 + 3);
            }
            std::vector<float> inv(static_cast<size_t>(D / 2));
            for (size_t i = 0; i < inv.size(); ++i)
              inv[i] = std::pow(10000.f, -2.f * static_cast<float>(i) / static_cast<float>(D));
            const auto resid = random_floats(static_cast<size_t>(T * heads * D), 44);
            const auto run = [&](Backend& b, const void* e, const void* w, const int32_t* id,
                                 const int32_t* p, const float* nw, const float* bi,
                                 const float* iv, const float* r, float* x, float* xn, float* q) {
              b.embedding({{DType::kBF16, V, Hd, e}, id, T, x});
              b.rmsnorm({x, nw, T, Hd, 1e-6f, xn});
              b.matmul({xn, T, nullptr, {DType::kBF16, heads * D, Hd, w}, q, heads * D});
              b.add_bias({q, bi, T, heads * D});
              b.rope({q, p, T, heads, D, iv});
              b.add({q, r, T * heads * D});
            };
            std::vector<float> x(static_cast<size_t>(T * Hd)), xn(x.size()),
                q_ref(static_cast<size_t>(T * heads * D));
            run(ref, emb.host(), wq.host(), ids.data(), pos.data(), norm_w.data(), bias.data(),
                inv.data(), resid.data(), x.data(), xn.data(), q_ref.data());
            const auto d_emb = weights_to_device(g, emb);
            const auto d_wq = weights_to_device(g, wq);
            const auto d_ids = to_device(g, ids), d_pos = to_device(g, pos);
            const auto d_nw = to_device(g, norm_w), d_bias = to_device(g, bias),
                       d_inv = to_device(g, inv), d_resid = to_device(g, resid);
            auto d_x = to_device(g, poison(x.size())), d_xn = to_device(g, poison(x.size())),
                 d_q = to_device(g, poison(q_ref.size()));
            run(g, d_emb.data(), d_wq.data(), d_ids.data(), d_pos.data(), d_nw.data(),
                d_bias.data(), d_inv.data(), d_resid.data(), d_x.data(), d_xn.data(), d_q.data());
            return {{"q", rel_err(to_host(g, d_q, q_ref.size()), q_ref), kMatmulBf16}};
          }};
}

// allocate(): 64-byte aligned for odd sizes and 0 bytes, release(nullptr) harmless, and
// an impossible size an ekva::Error naming it (after which allocation still works).
CudaOpsCase allocate_case() {
  return {"allocate_align_and_errors", "allocate", true, [](CudaBackend& g, Backend&) -> Metrics {
            double misaligned = 0;
            for (size_t bytes : {size_t{0}, size_t{1}, size_t{3}, size_t{1000}, size_t{65537}}) {
              void* p = g.allocate(bytes);
              misaligned += p == nullptr || reinterpret_cast<uintptr_t>(p) % 64 != 0 ? 1 : 0;
              g.release(p);
            }
            g.release(nullptr);
            double named = 1;
            const size_t huge = size_t{1} << 50;  // 1 PiB
            try {
              g.release(g.allocate(huge));
            } catch (const Error& e) {
              if (std::string(e.what()).find(std::to_string(huge)) != std::string::npos) named = 0;
            }
            void* p = g.allocate(256);
            g.release(p);
            return {{"misaligned", misaligned, kExact}, {"oom_error_names_size", named, kExact}};
          }};
}

}  // namespace

std::vector<CudaOpsCase> cuda_ops_cases() {
  const DType bf16 = DType::kBF16, f32 = DType::kF32;
  std::vector<CudaOpsCase> c = {
      allocate_case(),
      embedding_case(1, 5, 17, f32),
      embedding_case(37, 1031, 4095, bf16),
      embedding_case(64, 97, 129, f32),
      embedding_case(200, 3001, 64, bf16),
      embedding_bad_token_case(),
      matmul_case(1, 97, 1023, bf16, false),
      matmul_case(37, 1031, 515, bf16, true),
      matmul_case(64, 384, 1000, bf16, false),
      matmul_case(3, 4099, 128, bf16, true),
      matmul_case(5, 17, 33, f32, true),
      matmul_case(130, 257, 96, f32, false),
      matmul_case(17, 1, 7, f32, false),
      matmul_case(2, 5, 0, f32, false),
      matmul_case(9, 33, 17, bf16, true),
      rmsnorm_case(1, 17, false),
      rmsnorm_case(7, 4096, false),
      rmsnorm_case(33, 1023, false),
      rmsnorm_case(5, 515, true),
      rope_case(1, 1, 64, 131072, 10000.f),
      rope_case(13, 7, 128, 40000, 10000.f),
      rope_case(37, 3, 96, 4096, 1e6f),
      rope_case(5, 2, 6, 17, 10000.f),
      rope_case(300, 4, 64, 1 << 20, 500000.f),
      add_bias_case(1, 17),
      add_bias_case(7, 1023),
      add_bias_case(130, 4097),
      elementwise_case<ClampParams>(
          "clamp", 10007, 2.f, kExact,
          [](float* x, const float*) {
            return ClampParams{x, 10007, 0.7f};
          },
          &Backend::clamp),
      elementwise_case<ClampParams>(
          "clamp", 3, 2.f, kExact,
          [](float* x, const float*) {
            return ClampParams{x, 3, 0.1f};
          },
          &Backend::clamp),
      elementwise_case<AddParams>(
          "add", 100003, 1.f, kExact,
          [](float* x, const float* y) {
            return AddParams{x, y, 100003};
          },
          &Backend::add),
      elementwise_case<AddParams>(
          "add", 1, 1.f, kExact,
          [](float* x, const float* y) {
            return AddParams{x, y, 1};
          },
          &Backend::add),
      elementwise_case<SiluMulParams>(
          "silu_mul", 65537, 8.f, kF32,
          [](float* x, const float* y) {
            return SiluMulParams{x, y, 65537};
          },
          &Backend::silu_mul),
      elementwise_case<SiluMulParams>(
          "silu_mul", 33, 8.f, kF32,
          [](float* x, const float* y) {
            return SiluMulParams{x, y, 33};
          },
          &Backend::silu_mul),
      scatter_add_case(1, 17),
      scatter_add_case(13, 4097),
      scatter_add_case(64, 129),
      gated_add_case(1, 1),
      gated_add_case(9, 1023),
      gated_add_case(33, 4096),
      route_case(1, 8, 2, true, false),
      route_case(37, 60, 4, false, false),
      route_case(129, 64, 8, true, false),
      route_case(5, 512, 7, false, false),
      route_case(17, 3, 3, true, false),
      route_case(33, 16, 6, true, true),
      route_case(1000, 128, 1, false, false),
      attention_case("d64_g4_3seqs_scored_devmeta",
                     {{40, 0, 300}, {1, 1, 3}, 8, 2, 64, 0, 16, true, true}),
      attention_case("d128_g2_prefill_window_scored",
                     {{700, 90}, {9, 1}, 4, 2, 128, 100, 64, true, false}),
      attention_case("d128_g8_decode_batch_devmeta",
                     {{1, 17, 1200, 5, 333}, {1, 1, 1, 1, 1}, 16, 2, 128, 0, 200, false, true}),
      chain_case(),
  };
  return c;
}

CudaOpsResult run_cuda_ops_case(const CudaOpsCase& c, cuda::CudaBackend& gpu, Backend& reference) {
  CudaOpsResult r;
  std::ostringstream os;
  os << c.name << " vs " << reference.name() << ":";
  if (!c.reference_only.empty() && reference.name() != c.reference_only) {
    r.ok = r.skipped = true;
    os << " skipped (its semantics are the " << c.reference_only << " backend's)";
    r.detail = os.str();
    return r;
  }
  try {
    r.metrics = c.run(gpu, reference);
    r.ok = !r.metrics.empty();
    for (const CudaOpsMetric& m : r.metrics) {
      const bool pass = m.value <= m.tolerance;
      r.ok = r.ok && pass;
      os << " " << m.name << " " << m.value << (pass ? " <= " : " > ") << m.tolerance << ";";
    }
  } catch (const std::exception& e) {
    r.ok = false;
    os << " threw: " << e.what();
    try {  // leave the backend clean for the next case
      gpu.synchronize();
    } catch (const std::exception&) {
    }
  }
  r.detail = os.str();
  return r;
}

}  // namespace ekva::test
