// Every op of the Backend interface, on every backend present, against its scalar
// reference (ref::): one table of (op, odd shape, dtype, error threshold) rows, in
// the manner of llama.cpp's test-backend-ops. Each row builds random inputs (never
// all-zero), runs the op on the backend and the reference on copies, and compares
// with a metric fit for the op: relative error of the outputs, exact equality for
// the router's integer choices. A backend joins by adding itself to backends().
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <string>

#include <fmt/format.h>

#include "cpu/cpu_backend.h"
#include "test_util.h"

namespace ekva {
namespace {

struct BackendEntry {
  std::string name;
  std::function<std::unique_ptr<Backend>()> make;
};

std::vector<BackendEntry> backends() {
  return {{"cpu1", [] { return std::make_unique<CpuBackend>(1); }},
          {"cpu3", [] { return std::make_unique<CpuBackend>(3); }}};
}

struct OpCase {
  std::string name;  // op and shape, for the test name
  double max_error;  // relative error allowed against ref::
  // Runs the op on `backend` and on ref:: over the same inputs; returns the
  // relative error (or 0/1 for exact comparisons).
  std::function<double(Backend& backend)> run;
};

// All buffers the ops read and write are host memory on the CPU backends. A
// device backend would copy them in and out here.
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  return test::rel_error(a.data(), b.data(), a.size());
}

WeightMatrix weights(DType dtype, int64_t rows, int64_t cols, std::vector<float>& f32,
                     std::vector<uint16_t>& bf16, uint64_t seed) {
  if (dtype == DType::kBF16) {
    bf16 = test::random_bf16(static_cast<size_t>(rows * cols), seed, 0.1f);
    return {dtype, rows, cols, bf16.data()};
  }
  f32 = test::random_floats(static_cast<size_t>(rows * cols), seed, 0.1f);
  return {dtype, rows, cols, f32.data()};
}

OpCase matmul_case(int64_t n, int64_t rows, int64_t cols, DType dtype, bool gather) {
  return {fmt::format("matmul_{}x{}x{}_{}{}", n, rows, cols, dtype_name(dtype),
                      gather ? "_gather" : ""),
          2e-6, [=](Backend& b) {
            std::vector<float> wf;
            std::vector<uint16_t> wb;
            const WeightMatrix w = weights(dtype, rows, cols, wf, wb, 2);
            const int64_t n_x = gather ? n + 3 : n;
            const auto x = test::random_floats(static_cast<size_t>(n_x * cols), 1);
            std::vector<int32_t> idx(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i)
              idx[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 2) % n_x);
            const int64_t ldy = rows + 5;
            std::vector<float> y(static_cast<size_t>(n * ldy), 0.5f), y_ref = y;
            MatmulParams p{x.data(), n, gather ? idx.data() : nullptr, w, y.data(), ldy};
            b.matmul(p);
            p.y = y_ref.data();
            ref::matmul(p);
            return rel(y, y_ref);  // the padding past each row must be untouched
          }};
}

OpCase rmsnorm_case(int64_t n, int64_t width) {
  return {fmt::format("rmsnorm_{}x{}", n, width), 1e-6, [=](Backend& b) {
            const auto x = test::random_floats(static_cast<size_t>(n * width), 3);
            const auto w = test::random_floats(static_cast<size_t>(width), 4);
            std::vector<float> y(x.size()), y_ref(x.size());
            b.rmsnorm({x.data(), w.data(), n, width, 1e-5f, y.data()});
            ref::rmsnorm({x.data(), w.data(), n, width, 1e-5f, y_ref.data()});
            return rel(y, y_ref);
          }};
}

OpCase rope_case(int64_t n, int64_t heads, int64_t dim) {
  return {fmt::format("rope_{}x{}x{}", n, heads, dim), 1e-6, [=](Backend& b) {
            auto x = test::random_floats(static_cast<size_t>(n * heads * dim), 5);
            auto x_ref = x;
            std::vector<int32_t> pos(static_cast<size_t>(n));
            for (int64_t t = 0; t < n; ++t)
              pos[static_cast<size_t>(t)] = static_cast<int32_t>(t * 977 % 40000);
            std::vector<float> inv(static_cast<size_t>(dim / 2));
            for (size_t i = 0; i < inv.size(); ++i)
              inv[i] = std::pow(10000.f, -2.f * static_cast<float>(i) / static_cast<float>(dim));
            b.rope({x.data(), pos.data(), n, heads, dim, inv.data()});
            ref::rope({x_ref.data(), pos.data(), n, heads, dim, inv.data()});
            return rel(x, x_ref);
          }};
}

OpCase embedding_case(int64_t n, int64_t vocab, int64_t width, DType dtype) {
  return {fmt::format("embedding_{}x{}x{}_{}", n, vocab, width, dtype_name(dtype)), 0,
          [=](Backend& b) {
            std::vector<float> wf;
            std::vector<uint16_t> wb;
            const WeightMatrix table = weights(dtype, vocab, width, wf, wb, 6);
            std::vector<int32_t> ids(static_cast<size_t>(n));
            for (int64_t t = 0; t < n; ++t)
              ids[static_cast<size_t>(t)] = static_cast<int32_t>((t * 31 + 5) % vocab);
            std::vector<float> y(static_cast<size_t>(n * width)), y_ref(y.size());
            b.embedding({table, ids.data(), n, y.data()});
            ref::embedding({table, ids.data(), n, y_ref.data()});
            return rel(y, y_ref);
          }};
}

// In-place element-wise ops on x with an optional second operand y.
template <typename Params>
OpCase elementwise_case(std::string name, int64_t n, double max_error,
                        std::function<Params(float* x, const float* y)> make,
                        void (Backend::*op)(const Params&), void (*reference)(const Params&)) {
  return {fmt::format("{}_{}", name, n), max_error, [=](Backend& b) {
            auto x = test::random_floats(static_cast<size_t>(n), 7, 2.f);
            auto x_ref = x;
            const auto y = test::random_floats(static_cast<size_t>(n), 8);
            (b.*op)(make(x.data(), y.data()));
            reference(make(x_ref.data(), y.data()));
            return rel(x, x_ref);
          }};
}

OpCase route_case(int64_t n, int experts, int top_k, bool renormalize) {
  return {fmt::format("route_{}x{}_top{}{}", n, experts, top_k, renormalize ? "_norm" : ""), 1e-6,
          [=](Backend& b) {
            auto logits = test::random_floats(static_cast<size_t>(n * experts), 9, 2.f);
            // Exact ties (two experts with the same logit) must go to the lower id.
            for (int64_t t = 0; t < n; t += 3)
              logits[static_cast<size_t>(t * experts + 1)] =
                  logits[static_cast<size_t>(t * experts)];
            const auto K = static_cast<size_t>(n * top_k);
            std::vector<int32_t> e(K), e_ref(K);
            std::vector<float> w(K), w_ref(K);
            b.route({logits.data(), n, experts, top_k, renormalize, e.data(), w.data()});
            ref::route({logits.data(), n, experts, top_k, renormalize, e_ref.data(), w_ref.data()});
            return e == e_ref ? rel(w, w_ref) : 1.0;
          }};
}

OpCase scatter_add_case(int64_t n, int64_t width) {
  return {fmt::format("scatter_add_{}x{}", n, width), 1e-6, [=](Backend& b) {
            const int64_t n_out = n + 4;
            auto out = test::random_floats(static_cast<size_t>(n_out * width), 10);
            auto out_ref = out;
            const auto y = test::random_floats(static_cast<size_t>(n * width), 11);
            const auto w = test::random_floats(static_cast<size_t>(n), 12);
            std::vector<int32_t> rows(static_cast<size_t>(n_out));
            std::iota(rows.begin(), rows.end(), 0);
            std::shuffle(rows.begin(), rows.end(), std::mt19937(13));
            b.scatter_add({out.data(), y.data(), rows.data(), w.data(), n, width});
            ref::scatter_add({out_ref.data(), y.data(), rows.data(), w.data(), n, width});
            return rel(out, out_ref);
          }};
}

OpCase gated_add_case(int64_t n, int64_t width) {
  return {fmt::format("gated_add_{}x{}", n, width), 1e-6, [=](Backend& b) {
            auto out = test::random_floats(static_cast<size_t>(n * width), 14);
            auto out_ref = out;
            const auto y = test::random_floats(static_cast<size_t>(n * width), 15);
            const auto g = test::random_floats(static_cast<size_t>(n), 16, 3.f);
            b.gated_add({out.data(), y.data(), g.data(), n, width});
            ref::gated_add({out_ref.data(), y.data(), g.data(), n, width});
            return rel(out, out_ref);
          }};
}

// A batch of sequences with ragged caches (some empty), each chunked differently.
OpCase attention_case(std::vector<int64_t> lengths, std::vector<int64_t> queries, int64_t heads,
                      int64_t kv_heads, int64_t dim, int64_t window, DType kv_dtype = DType::kF32,
                      bool with_scores = false) {
  std::string shape;
  for (size_t i = 0; i < lengths.size(); ++i)
    shape += fmt::format("{}{}q{}", i ? "_" : "", lengths[i], queries[i]);
  // bf16 K/V: the backend and the reference read the same stored values, so the
  // tolerance is f32 accumulation, as for f32 K/V.
  // With scores, some queries also add their probabilities to the entries' score
  // slots; both the outputs and the scores are compared.
  return {
      fmt::format("attention_{}_h{}kv{}d{}w{}_{}{}", shape, heads, kv_heads, dim, window,
                  dtype_name(kv_dtype), with_scores ? "_scores" : ""),
      with_scores ? 1e-5 : 2e-6, [=](Backend& b) {
        const auto S = static_cast<int64_t>(lengths.size());
        std::vector<std::vector<float>> k, v;
        std::vector<std::vector<uint16_t>> k16, v16;
        std::vector<std::vector<int32_t>> pos(static_cast<size_t>(S));
        std::vector<std::vector<KvChunk>> chunks(static_cast<size_t>(S * kv_heads));
        std::vector<int32_t> q_pos, q_seq;
        for (int64_t s = 0; s < S; ++s) {
          const int64_t n = lengths[static_cast<size_t>(s)];
          auto& p = pos[static_cast<size_t>(s)];
          p.resize(static_cast<size_t>(n));
          std::iota(p.begin(), p.end(), 0);
          std::shuffle(p.begin(), p.end(), std::mt19937(static_cast<uint32_t>(17 + s)));
          for (int64_t h = 0; h < kv_heads; ++h) {
            k.push_back(test::random_floats(static_cast<size_t>(std::max<int64_t>(n, 1) * dim),
                                            100 + static_cast<uint64_t>(s * kv_heads + h)));
            v.push_back(test::random_floats(static_cast<size_t>(std::max<int64_t>(n, 1) * dim),
                                            200 + static_cast<uint64_t>(s * kv_heads + h)));
            k16.emplace_back(k.back().size());
            v16.emplace_back(v.back().size());
            for (size_t i = 0; i < k.back().size(); ++i) {
              k16.back()[i] = f32_to_bf16(k.back()[i]);
              v16.back()[i] = f32_to_bf16(v.back()[i]);
            }
            const bool bf16 = kv_dtype == DType::kBF16;
            const int64_t pieces = 1 + (s + h) % 4;  // chunks per (sequence, kv-head)
            for (int64_t i = 0; i < pieces && n > 0; ++i) {
              const int64_t b0 = n * i / pieces, b1 = n * (i + 1) / pieces;
              const auto off = static_cast<size_t>(b0 * dim);
              if (b1 > b0)
                chunks[static_cast<size_t>(s * kv_heads + h)].push_back(
                    {bf16 ? static_cast<const void*>(&k16.back()[off]) : &k.back()[off],
                     bf16 ? static_cast<const void*>(&v16.back()[off]) : &v.back()[off],
                     &p[static_cast<size_t>(b0)], b1 - b0, kv_dtype});
            }
          }
          const int64_t nq = queries[static_cast<size_t>(s)];
          for (int64_t t = 0; t < nq; ++t) {
            q_pos.push_back(static_cast<int32_t>(std::max<int64_t>(n - nq + t, 0)));
            q_seq.push_back(static_cast<int32_t>(s));
          }
        }
        const auto T = static_cast<int64_t>(q_pos.size());
        const auto q = test::random_floats(static_cast<size_t>(T * heads * dim), 5);
        std::vector<float> out(q.size(), NAN), out_ref(q.size(), NAN);
        AttentionParams p{
            T,      heads,    kv_heads,     dim,        1.f / std::sqrt(static_cast<float>(dim)),
            window, q.data(), q_pos.data(), out.data(), q_seq.data(),
            S};
        // Score slots: one buffer per chunk and side, starting from the same
        // non-zero values (scores accumulate); every other query is scored.
        std::vector<std::vector<float>> slots, slots_ref;
        std::vector<uint8_t> q_scored(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t) q_scored[static_cast<size_t>(t)] = t % 2 == 0;
        const auto point_scores = [&](std::vector<std::vector<float>>& buffers) {
          size_t i = 0;
          for (auto& list : chunks)
            for (KvChunk& ch : list) ch.scores = buffers[i++].data();
        };
        if (with_scores) {
          for (const auto& list : chunks)
            for (const KvChunk& ch : list)
              slots.push_back(test::random_floats(static_cast<size_t>(ch.n), 31, 0.1f));
          slots_ref = slots;
          p.q_scored = q_scored.data();
          point_scores(slots);
        }
        b.attention(p, chunks);
        p.out = out_ref.data();
        if (with_scores) point_scores(slots_ref);
        ref::attention(p, chunks);
        double err = rel(out, out_ref);
        for (size_t i = 0; i < slots.size(); ++i) err = std::max(err, rel(slots[i], slots_ref[i]));
        return err;
      }};
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  for (const DType dt : {DType::kBF16, DType::kF32}) {
    cases.push_back(matmul_case(1, 97, 1023, dt, false));
    cases.push_back(matmul_case(5, 1023, 17, dt, true));
    cases.push_back(matmul_case(17, 33, 129, dt, false));
    cases.push_back(matmul_case(64, 130, 96, dt, true));
    cases.push_back(embedding_case(13, 97, 33, dt));
  }
  cases.push_back(rmsnorm_case(1, 17));
  cases.push_back(rmsnorm_case(97, 1023));
  cases.push_back(rmsnorm_case(33, 4096));
  cases.push_back(rope_case(1, 8, 64));
  cases.push_back(rope_case(97, 3, 18));
  cases.push_back(rope_case(300, 8, 128));
  for (const int64_t n : {int64_t{1}, int64_t{1023}, int64_t{100003}}) {
    cases.push_back(elementwise_case<AddParams>(
        "add", n, 0,
        [=](float* x, const float* y) {
          return AddParams{x, y, n};
        },
        &Backend::add, ref::add));
    cases.push_back(elementwise_case<SiluMulParams>(
        "silu_mul", n, 1e-6,
        [=](float* x, const float* y) {
          return SiluMulParams{x, y, n};
        },
        &Backend::silu_mul, ref::silu_mul));
    cases.push_back(elementwise_case<ClampParams>(
        "clamp", n, 0,
        [=](float* x, const float*) {
          return ClampParams{x, n, 0.7f};
        },
        &Backend::clamp, ref::clamp));
    cases.push_back(elementwise_case<AddBiasParams>(
        "add_bias", n, 0,
        [=](float* x, const float* y) {
          return AddBiasParams{x, y, 1, n};
        },
        &Backend::add_bias, ref::add_bias));
  }
  cases.push_back(elementwise_case<AddBiasParams>(
      "add_bias_rows17", 17 * 33, 0,
      [](float* x, const float* y) {
        return AddBiasParams{x, y, 17, 33};
      },
      &Backend::add_bias, ref::add_bias));
  cases.push_back(route_case(1, 8, 2, false));
  cases.push_back(route_case(97, 60, 4, true));
  cases.push_back(route_case(33, 64, 8, false));
  cases.push_back(scatter_add_case(1, 17));
  cases.push_back(scatter_add_case(97, 256));
  cases.push_back(gated_add_case(1, 17));
  cases.push_back(gated_add_case(33, 1023));
  cases.push_back(attention_case({1}, {1}, 8, 2, 64, 0));
  cases.push_back(attention_case({3000}, {1}, 8, 2, 64, 0));  // decode, split-K
  cases.push_back(
      attention_case({2049, 0, 97, 5}, {1, 1, 1, 1}, 28, 4, 80, 0));  // ragged batch, G = 7
  cases.push_back(attention_case({997, 31}, {13, 1}, 4, 4, 17, 0));   // prefill + decode, odd dim
  cases.push_back(attention_case({4097, 700, 1}, {1, 17, 1}, 32, 8, 128, 512));  // window
  cases.push_back(attention_case({3000, 0, 5}, {1, 1, 3}, 8, 2, 64, 0, DType::kBF16));
  cases.push_back(attention_case({2049, 97}, {1, 13}, 28, 4, 80, 0, DType::kBF16));
  cases.push_back(attention_case({997, 31, 4097}, {1, 1, 1}, 32, 8, 128, 512, DType::kBF16));
  cases.push_back(
      attention_case({300}, {7}, 4, 4, 17, 0, DType::kBF16));  // odd dim: the scalar tails
  // Entry scores from the same pass: decode split-K, ragged batches, prefill windows.
  cases.push_back(attention_case({3000}, {1}, 8, 2, 64, 0, DType::kBF16, true));
  cases.push_back(attention_case({2049, 0, 97, 5}, {1, 1, 1, 1}, 28, 4, 80, 0, DType::kF32, true));
  cases.push_back(attention_case({997, 31}, {13, 1}, 4, 4, 17, 0, DType::kBF16, true));
  cases.push_back(attention_case({4097, 700, 1}, {1, 17, 1}, 32, 8, 128, 512, DType::kBF16, true));
  return cases;
}

class BackendOps : public ::testing::TestWithParam<std::tuple<size_t, size_t>> {};

TEST_P(BackendOps, MatchesReference) {
  const auto [backend_index, case_index] = GetParam();
  const BackendEntry entry = backends()[backend_index];
  const OpCase c = op_cases()[case_index];
  const auto backend = entry.make();
  const double err = c.run(*backend);
  EXPECT_LE(err, c.max_error) << c.name << " on " << entry.name;
}

INSTANTIATE_TEST_SUITE_P(Table, BackendOps,
                         ::testing::Combine(::testing::Range<size_t>(0, backends().size()),
                                            ::testing::Range<size_t>(0, op_cases().size())),
                         [](const auto& row) {
                           return backends()[std::get<0>(row.param)].name + "_" +
                                  op_cases()[std::get<1>(row.param)].name;
                         });

}  // namespace
}  // namespace ekva
