// Calibration statistics against a brute-force double-precision recomputation of
// attention from the engine's own q, k and routing (one query, head and key at a
// time), their invariants (shares sum to one, curves rise from (0,0) to (1,1)),
// the profile's JSON round trip and load errors, and reading calibration text.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/thread_pool.h"
#include "core/xz_file.h"
#include "kv/kv_cache.h"
#include "kv/profile.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "runtime/calibration_run.h"
#include "test_util.h"

namespace ekva {
namespace {

using ::testing::HasSubstr;

struct Case {
  std::string name;              // reference checkpoint (tools/make_reference.py)
  std::vector<int64_t> lengths;  // calibration sequences
  int64_t sink_tokens = 3;
  int64_t recent_window = 8;
};

// Odd lengths (blocks of queries that pair with themselves, partial key tiles); 600
// spans two key tiles.
const Case kCases[] = {
    {"mixtral", {600, 97}},           // MoE, GQA 2:1, top-2 renormalised
    {"mixtral_sharded", {97, 61}},    // GQA 4:1, head_dim 32
    {"qwen2_moe", {97, 61}},          // dense layers 0 and 2, top-4 not renormalised
    {"qwen3_moe_sharded", {61}},      // top-8 of 32 experts, per-head q/k norm
    {"olmoe_clip", {61}},             // MHA (group of one)
    {"mistral_swa", {97, 61}, 2, 4},  // dense model, sliding window 8
};

std::vector<std::vector<int32_t>> random_sequences(const ModelConfig& c,
                                                   const std::vector<int64_t>& lengths) {
  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
  std::vector<std::vector<int32_t>> out;
  for (int64_t n : lengths) {
    std::vector<int32_t>& s = out.emplace_back(static_cast<size_t>(n));
    for (auto& t : s) t = token(rng);
  }
  return out;
}

// The engine's post-RoPE q, k and routing of one sequence, every layer.
struct Captured {
  std::vector<std::vector<float>> q;          // [layer][T, n_heads * head_dim]
  std::vector<std::vector<float>> k;          // [layer][T, n_kv_heads * head_dim]
  std::vector<std::vector<int32_t>> experts;  // [layer][T, top_k] (MoE layers)
  std::vector<std::vector<float>> weights;    // [layer][T, top_k]
};

Captured capture(const Model& model, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = model.config();
  const auto L = static_cast<size_t>(c.n_layers);
  Captured cap{std::vector<std::vector<float>>(L), std::vector<std::vector<float>>(L),
               std::vector<std::vector<int32_t>>(L), std::vector<std::vector<float>>(L)};
  ForwardObserver o;
  o.tensor = [&](std::string_view name, int layer, const float* d, int64_t n, int64_t w) {
    if (name == "q") cap.q[static_cast<size_t>(layer)].assign(d, d + n * w);
    if (name == "k") cap.k[static_cast<size_t>(layer)].assign(d, d + n * w);
  };
  o.routing = [&](int layer, const int32_t* e, const float* w, int64_t n, int k) {
    cap.experts[static_cast<size_t>(layer)].assign(e, e + n * k);
    cap.weights[static_cast<size_t>(layer)].assign(w, w + n * k);
  };
  FullKvCache cache(kv_cache_shape(c), static_cast<int64_t>(tokens.size()));
  std::vector<float> logits;
  CpuBackend backend(1);
  model.forward(tokens, cache, logits, false, backend, &o);
  return cap;
}

// y at x on the polyline through points (xs[i], ys[i]), xs ascending.
double interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double x) {
  for (size_t i = 1; i < xs.size(); ++i)
    if (x <= xs[i]) return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1]);
  return ys.back();
}

struct BruteGroup {
  int64_t entries = 0;
  double mass = 0, entropy = 0;
  int64_t rows = 0;
  std::vector<double> curve;  // [fractions] sum over sequences of mass x covered share
};

// The statistics by their definitions (see the profile's "notes"), in double.
CalibrationProfile brute_force(const Model& model, const std::vector<std::vector<int32_t>>& seqs,
                               int64_t sink, int64_t recent, const std::vector<float>& fractions) {
  const ModelConfig& c = model.config();
  const int64_t H = c.n_heads, G = c.n_kv_heads, D = c.head_dim, gs = c.group_size();
  const int E = c.router.n_experts, K = c.router.top_k;
  const size_t F = fractions.size();
  std::vector<Captured> caps;
  for (const auto& s : seqs) caps.push_back(capture(model, s));

  CalibrationProfile p;
  p.layers.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const bool moe = c.is_moe_layer(l);
    // Groups: experts 0..E-1 (MoE layers), then kv-heads, then the layer.
    const int n_exp = moe ? E : 0;
    std::vector<BruteGroup> groups(static_cast<size_t>(n_exp + G + 1));
    for (auto& g : groups) g.curve.assign(F, 0.0);
    std::vector<int64_t> top1(static_cast<size_t>(std::max(E, 1)), 0);
    std::vector<double> topk(static_cast<size_t>(std::max(E, 1)), 0.0);
    int64_t tokens = 0;

    for (size_t s = 0; s < seqs.size(); ++s) {
      const Captured& cap = caps[s];
      const auto T = static_cast<int64_t>(seqs[s].size());
      const auto& q = cap.q[static_cast<size_t>(l)];
      const auto& k = cap.k[static_cast<size_t>(l)];
      const auto tag = [&](int64_t t) {
        return cap.experts[static_cast<size_t>(l)][static_cast<size_t>(t * K)];
      };
      // Group gi holds entry (kv-head g, key j): experts by the key's tag, kv-heads by g.
      const auto member = [&](int64_t gi, int64_t g, int64_t j) {
        if (gi < n_exp) return tag(j) == gi;
        if (gi < n_exp + G) return g == gi - n_exp;
        return true;  // the layer
      };
      std::vector<double> received(static_cast<size_t>(G * T), 0.0);  // [G, T]
      std::vector<double> prob;                                       // [i + 1] one attention row
      for (int64_t i = 0; i < T; ++i) {
        for (int64_t h = 0; h < H; ++h) {
          const int64_t g = h / gs;
          prob.assign(static_cast<size_t>(i + 1), 0.0);
          double mx = -1e300;
          for (int64_t j = 0; j <= i; ++j) {
            if (c.sliding_window > 0 && i - j >= c.sliding_window) continue;
            double dot = 0;
            for (int64_t d = 0; d < D; ++d)
              dot += double{q[static_cast<size_t>((i * H + h) * D + d)]} *
                     k[static_cast<size_t>((j * G + g) * D + d)];
            prob[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(D));
            mx = std::max(mx, prob[static_cast<size_t>(j)]);
          }
          double z = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const bool visible = c.sliding_window == 0 || i - j < c.sliding_window;
            prob[static_cast<size_t>(j)] =
                visible ? std::exp(prob[static_cast<size_t>(j)] - mx) : 0.0;
            z += prob[static_cast<size_t>(j)];
          }
          double entropy = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const double pj = prob[static_cast<size_t>(j)] / z;
            if (pj > 0) entropy -= pj * std::log(pj);
            if (j >= sink && j <= i - recent) received[static_cast<size_t>(g * T + j)] += pj;
          }
          if (moe) {
            groups[static_cast<size_t>(tag(i))].entropy += entropy;
            ++groups[static_cast<size_t>(tag(i))].rows;
          }
          groups[static_cast<size_t>(n_exp + g)].entropy += entropy;
          ++groups[static_cast<size_t>(n_exp + g)].rows;
          groups.back().entropy += entropy;
          ++groups.back().rows;
        }
      }
      // Entries of each group: (kv-head, key) with the key evictable for some query.
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        std::vector<double> masses;
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t j = sink; j < T - recent; ++j) {
            if (member(static_cast<int64_t>(gi), g, j))
              masses.push_back(received[static_cast<size_t>(g * T + j)]);
          }
        }
        std::sort(masses.rbegin(), masses.rend());
        double total = 0;
        for (double m : masses) total += m;
        BruteGroup& bg = groups[gi];
        bg.entries += static_cast<int64_t>(masses.size());
        bg.mass += total;
        if (total == 0) continue;
        std::vector<double> xs = {0.0}, ys = {0.0};
        double run = 0;
        for (size_t i = 0; i < masses.size(); ++i) {
          run += masses[i];
          xs.push_back(static_cast<double>(i + 1) / static_cast<double>(masses.size()));
          ys.push_back(run / total);
        }
        for (size_t f = 0; f < F; ++f) bg.curve[f] += total * interpolate(xs, ys, fractions[f]);
      }
      if (moe) {
        for (int64_t t = 0; t < T; ++t) {
          ++top1[static_cast<size_t>(tag(t))];
          for (int r = 0; r < K; ++r)
            topk[static_cast<size_t>(
                cap.experts[static_cast<size_t>(l)][static_cast<size_t>(t * K + r)])] +=
                cap.weights[static_cast<size_t>(l)][static_cast<size_t>(t * K + r)];
        }
      }
      tokens += T;
    }

    const BruteGroup& all = groups.back();
    const auto stats = [&](const BruteGroup& g, GroupStats& out) {
      out.entries_fraction = static_cast<double>(g.entries) / static_cast<double>(all.entries);
      out.mass_received = g.mass / all.mass;
      out.query_entropy = g.rows ? g.entropy / static_cast<double>(g.rows) : 0.0;
      out.coverage.fraction_kept = fractions;
      for (size_t f = 0; f < F; ++f)
        out.coverage.mass_covered.push_back(
            static_cast<float>(g.mass > 0 ? g.curve[f] / g.mass : fractions[f]));
    };
    LayerStats& L = p.layers[static_cast<size_t>(l)];
    L.moe = moe;
    for (int e = 0; e < n_exp; ++e) {
      ExpertStats& x = L.experts.emplace_back();
      stats(groups[static_cast<size_t>(e)], x);
      x.routing_top1_frequency =
          static_cast<double>(top1[static_cast<size_t>(e)]) / static_cast<double>(tokens);
      x.routing_topk_weight = topk[static_cast<size_t>(e)] / static_cast<double>(tokens);
    }
    for (int64_t g = 0; g < G; ++g)
      stats(groups[static_cast<size_t>(n_exp + g)], L.heads.emplace_back());
    stats(all, L.all);
  }
  return p;
}

void expect_group_near(const GroupStats& got, const GroupStats& want, const std::string& where) {
  SCOPED_TRACE(where);
  EXPECT_NEAR(got.entries_fraction, want.entries_fraction, 1e-12);
  EXPECT_NEAR(got.mass_received, want.mass_received, 1e-5);
  EXPECT_NEAR(got.query_entropy, want.query_entropy, 1e-5 * std::max(1.0, want.query_entropy));
  ASSERT_EQ(got.coverage.mass_covered.size(), want.coverage.mass_covered.size());
  for (size_t f = 0; f < want.coverage.mass_covered.size(); ++f)
    EXPECT_NEAR(got.coverage.mass_covered[f], want.coverage.mass_covered[f], 1e-5) << "point " << f;
}

std::unique_ptr<Model> load_case(const std::string& name) {
  const auto dir = test::reference_dir() / name;
  if (!std::filesystem::exists(dir))
    ADD_FAILURE() << dir << " missing: run the make_reference test fixture";
  return Model::load(dir);
}

CalibrationProfile run_calibration(const Model& model, const Case& k, ThreadPool& pool) {
  CalibrationOptions o;
  o.sink_tokens = k.sink_tokens;
  o.recent_window = k.recent_window;
  o.data = "random tokens";
  const auto seqs = random_sequences(model.config(), k.lengths);
  return calibrate(model, seqs, o, pool, nullptr);
}

class Calibration : public ::testing::TestWithParam<Case> {};

TEST_P(Calibration, MatchesBruteForce) {
  const Case& k = GetParam();
  const auto model = load_case(k.name);
  ThreadPool pool(3);
  const CalibrationProfile got = run_calibration(*model, k, pool);
  const CalibrationProfile want =
      brute_force(*model, random_sequences(model->config(), k.lengths), k.sink_tokens,
                  k.recent_window, got.layers[0].all.coverage.fraction_kept);
  ASSERT_EQ(got.layers.size(), want.layers.size());
  for (size_t l = 0; l < got.layers.size(); ++l) {
    const LayerStats& g = got.layers[l];
    const LayerStats& w = want.layers[l];
    EXPECT_EQ(g.moe, w.moe) << "layer " << l;
    ASSERT_EQ(g.experts.size(), w.experts.size());
    ASSERT_EQ(g.heads.size(), w.heads.size());
    for (size_t e = 0; e < g.experts.size(); ++e) {
      const std::string where = fmt::format("layer {} expert {}", l, e);
      expect_group_near(g.experts[e], w.experts[e], where);
      EXPECT_DOUBLE_EQ(g.experts[e].routing_top1_frequency, w.experts[e].routing_top1_frequency)
          << where;
      EXPECT_NEAR(g.experts[e].routing_topk_weight, w.experts[e].routing_topk_weight, 1e-6)
          << where;
    }
    for (size_t h = 0; h < g.heads.size(); ++h)
      expect_group_near(g.heads[h], w.heads[h], fmt::format("layer {} kv-head {}", l, h));
    expect_group_near(g.all, w.all, fmt::format("layer {} all", l));
  }
}

TEST_P(Calibration, SharesAndCurvesAreConsistent) {
  const Case& k = GetParam();
  const auto model = load_case(k.name);
  const ModelConfig& c = model->config();
  ThreadPool pool(2);
  const CalibrationProfile p = run_calibration(*model, k, pool);

  EXPECT_EQ(p.architecture, c.arch_name);
  EXPECT_EQ(p.n_layers, c.n_layers);
  EXPECT_EQ(p.n_kv_heads, c.n_kv_heads);
  EXPECT_EQ(p.n_experts, c.router.n_experts);
  EXPECT_EQ(p.head_dim, c.head_dim);
  EXPECT_EQ(p.sequences, static_cast<int64_t>(k.lengths.size()));
  EXPECT_EQ(p.context, *std::max_element(k.lengths.begin(), k.lengths.end()));
  int64_t tokens = 0;
  for (int64_t n : k.lengths) tokens += n;
  EXPECT_EQ(p.tokens, tokens);

  const auto check_curve = [](const CoverageCurve& curve, const std::string& where) {
    SCOPED_TRACE(where);
    ASSERT_GE(curve.fraction_kept.size(), 30u);
    ASSERT_EQ(curve.fraction_kept.size(), curve.mass_covered.size());
    EXPECT_EQ(curve.fraction_kept.front(), 0.f);
    EXPECT_EQ(curve.mass_covered.front(), 0.f);
    EXPECT_EQ(curve.fraction_kept.back(), 1.f);
    EXPECT_EQ(curve.mass_covered.back(), 1.f);
    for (size_t i = 1; i < curve.fraction_kept.size(); ++i) {
      EXPECT_GT(curve.fraction_kept[i], curve.fraction_kept[i - 1]) << i;
      EXPECT_GE(curve.mass_covered[i], curve.mass_covered[i - 1]) << i;
      // Entries are kept best first, so the curve is concave: slopes never rise.
      if (i + 1 < curve.fraction_kept.size()) {
        const double s0 = (curve.mass_covered[i] - curve.mass_covered[i - 1]) /
                          (curve.fraction_kept[i] - curve.fraction_kept[i - 1]);
        const double s1 = (curve.mass_covered[i + 1] - curve.mass_covered[i]) /
                          (curve.fraction_kept[i + 1] - curve.fraction_kept[i]);
        EXPECT_LE(s1, s0 + 1e-3) << i;
      }
    }
    // Keeping entries by mass always covers at least their share of it.
    for (size_t i = 0; i < curve.fraction_kept.size(); ++i)
      EXPECT_GE(curve.mass_covered[i], curve.fraction_kept[i] - 1e-6) << i;
  };

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerStats& L = p.layers[static_cast<size_t>(l)];
    EXPECT_EQ(L.moe, c.is_moe_layer(l));
    EXPECT_DOUBLE_EQ(L.all.mass_received, 1.0);
    EXPECT_DOUBLE_EQ(L.all.entries_fraction, 1.0);
    check_curve(L.all.coverage, fmt::format("layer {} all", l));
    double mass = 0, entries = 0, entropy = 0;
    for (size_t h = 0; h < L.heads.size(); ++h) {
      mass += L.heads[h].mass_received;
      entries += L.heads[h].entries_fraction;
      entropy += L.heads[h].query_entropy;
      EXPECT_DOUBLE_EQ(L.heads[h].entries_fraction, 1.0 / c.n_kv_heads);
      check_curve(L.heads[h].coverage, fmt::format("layer {} kv-head {}", l, h));
    }
    EXPECT_NEAR(mass, 1.0, 1e-9) << "layer " << l;
    EXPECT_NEAR(entries, 1.0, 1e-9) << "layer " << l;
    // Every kv-head has the same number of query rows.
    EXPECT_NEAR(entropy / c.n_kv_heads, L.all.query_entropy, 1e-9) << "layer " << l;
    if (!L.moe) {
      EXPECT_TRUE(L.experts.empty());
      continue;
    }
    ASSERT_EQ(L.experts.size(), static_cast<size_t>(c.router.n_experts));
    double top1 = 0, topk = 0;
    mass = entries = 0;
    for (size_t e = 0; e < L.experts.size(); ++e) {
      const ExpertStats& x = L.experts[e];
      mass += x.mass_received;
      entries += x.entries_fraction;
      top1 += x.routing_top1_frequency;
      topk += x.routing_topk_weight;
      check_curve(x.coverage, fmt::format("layer {} expert {}", l, e));
    }
    EXPECT_NEAR(mass, 1.0, 1e-9) << "layer " << l;
    EXPECT_NEAR(entries, 1.0, 1e-9) << "layer " << l;
    EXPECT_NEAR(top1, 1.0, 1e-12) << "layer " << l;
    // Each token's top-k weights sum to 1 when the architecture renormalises them.
    if (c.router.renormalize) {
      EXPECT_NEAR(topk, 1.0, 1e-6) << "layer " << l;
    } else {
      EXPECT_LT(topk, 1.0) << "layer " << l;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ReferenceModels, Calibration, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return p.param.name; });

TEST(Calibration, ThreadCountDoesNotChangeTheStatistics) {
  const auto model = load_case("mixtral");
  ThreadPool one(1), four(4);
  const CalibrationProfile a = run_calibration(*model, kCases[0], one);
  const CalibrationProfile b = run_calibration(*model, kCases[0], four);
  for (size_t l = 0; l < a.layers.size(); ++l) {
    for (size_t e = 0; e < a.layers[l].experts.size(); ++e) {
      EXPECT_NEAR(a.layers[l].experts[e].mass_received, b.layers[l].experts[e].mass_received,
                  1e-12);
      EXPECT_NEAR(a.layers[l].experts[e].query_entropy, b.layers[l].experts[e].query_entropy,
                  1e-12);
    }
    EXPECT_EQ(a.layers[l].all.coverage.mass_covered, b.layers[l].all.coverage.mass_covered);
  }
}

TEST(Calibration, ReportsProgressPerSequence) {
  const auto model = load_case("mixtral");
  ThreadPool pool(2);
  const auto seqs = random_sequences(model->config(), {50, 40, 60});
  std::vector<std::pair<int64_t, int64_t>> calls;
  calibrate(*model, seqs, {}, pool,
            [&](int64_t done, int64_t total) { calls.emplace_back(done, total); });
  const std::vector<std::pair<int64_t, int64_t>> want = {{50, 150}, {90, 150}, {150, 150}};
  EXPECT_EQ(calls, want);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Calibration, RejectsUnusableInput) {
  const auto model = load_case("mixtral");
  ThreadPool pool(1);
  CalibrationOptions o;  // sinks 4, recent window 32
  const auto seqs = random_sequences(model->config(), {50, 36});
  EXPECT_THAT(
      error_of([&] { calibrate(*model, seqs, o, pool, nullptr); }),
      HasSubstr("sequence 1 has 36 tokens; it needs more than sink_tokens + recent_window = 36"));
  EXPECT_THAT(error_of([&] { calibrate(*model, {}, o, pool, nullptr); }),
              HasSubstr("no sequences"));
  o.recent_window = -1;
  EXPECT_THAT(error_of([&] { calibrate(*model, seqs, o, pool, nullptr); }),
              HasSubstr("must not be negative"));
  const auto swa = load_case("mistral_swa");
  EXPECT_THAT(error_of([&] { calibrate(*swa, seqs, {}, pool, nullptr); }),
              HasSubstr("sliding window (8) is not longer than recent_window (32)"));
}

// A copy of the f32 reference checkpoint whose layer-0 query projection overflows to
// infinity, so that attention scores are not finite.
std::filesystem::path overflowing_checkpoint(const std::filesystem::path& dir) {
  const auto source = test::reference_dir() / "mixtral_f32";
  for (const auto& e : std::filesystem::directory_iterator(source))
    std::filesystem::copy_file(e.path(), dir / e.path().filename());
  std::string bytes = test::read_file(dir / "model.safetensors");
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  const auto header = nlohmann::json::parse(bytes.substr(8, header_size));
  const auto& offsets = header.at("model.layers.0.self_attn.q_proj.weight").at("data_offsets");
  const float huge = 3e38f;
  for (size_t i = offsets[0].get<size_t>(); i < offsets[1].get<size_t>(); i += sizeof(float))
    std::memcpy(&bytes[8 + header_size + i], &huge, sizeof(float));
  test::write_file(dir / "model.safetensors", bytes);
  return dir;
}

TEST(Calibration, ChecksThatAttentionRowsSumToOne) {
  const auto dir = test::temp_dir("calibration_overflow");
  const auto model = Model::load(overflowing_checkpoint(dir));
  ThreadPool pool(2);
  const auto seqs = random_sequences(model->config(), {50});
  EXPECT_THAT(error_of([&] { calibrate(*model, seqs, {}, pool, nullptr); }),
              ::testing::MatchesRegex(".*layer 0, query head [0-9]+, position [0-9]+: attention "
                                      "probabilities sum to .*, not 1"));
  std::filesystem::remove_all(dir);
}

// The whole path on the shipped model and the committed sample (a short run: the
// full default calibration takes minutes on two cores).
TEST(Calibration, ShippedModelOnTheCommittedSample) {
  const std::filesystem::path source(EKVA_SOURCE_DIR);
  const auto model_dir = source / "models" / "ekva-moe-tiny";
  const auto model = Model::load(model_dir);
  const auto tokenizer = Tokenizer::from_model_dir(model_dir);
  const auto seqs = calibration_sequences(source / "data" / "calibration" / "validation_sample.txt",
                                          tokenizer, 256, 512);
  ASSERT_EQ(seqs.size(), 2u);
  ThreadPool pool(2);
  CalibrationOptions o;
  o.data = "validation_sample.txt";
  CalibrationProfile p = calibrate(*model, seqs, o, pool, nullptr);

  // Retrieval heads on two 1k needle prompts of the shipped set: the model copies the
  // pass key through one kv-head (layer 5, kv-head 0), which puts far more attention on
  // the needle's answer tokens than any other.
  std::vector<NeedlePrompt> needles;
  std::istringstream in(read_text_file(source / "data/evalsets/retrieval.jsonl.xz"));
  for (std::string line; std::getline(in, line) && needles.size() < 2;) {
    const auto r = nlohmann::json::parse(line);
    if (r.at("context").get<int>() != 1024) continue;
    NeedlePrompt n;
    n.tokens = tokenizer.encode(r.at("prompt").get<std::string>());
    n.answer = r.at("answer_tokens").get<std::vector<int32_t>>();
    n.needle = needle_answer_positions(n.tokens, r.at("needle_token_pos").get<int64_t>(), n.answer);
    ASSERT_EQ(n.needle.size(), n.answer.size());
    needles.push_back(std::move(n));
  }
  ASSERT_EQ(needles.size(), 2u);
  const auto mass = retrieval_head_mass(*model, needles, pool, nullptr);
  ASSERT_EQ(mass.size(), 8u);
  double best = 0;
  for (size_t l = 0; l < 8; ++l) {
    ASSERT_EQ(mass[l].size(), 2u);
    for (size_t h = 0; h < 2; ++h) {
      EXPECT_GE(mass[l][h], 0.0);
      EXPECT_LE(mass[l][h], 1.0);
      if (l != 5 || h != 0) best = std::max(best, mass[l][h]);
    }
    p.layers[l].head_retrieval = mass[l];
  }
  EXPECT_GT(mass[5][0], 0.2);
  EXPECT_GT(mass[5][0], 3 * best);

  p.commit = "0123abc";
  p.machine = "test machine (2 threads)";
  p.created = "2026-12-03T12:00:00Z";
  const auto dir = test::temp_dir("calibration_shipped");
  p.save(dir / "profile.json");
  const CalibrationProfile q = CalibrationProfile::load(dir / "profile.json", model->config());
  std::filesystem::remove_all(dir);
  for (size_t l = 0; l < 8; ++l) {
    ASSERT_EQ(q.layers[l].head_retrieval.size(), 2u);
    for (size_t h = 0; h < 2; ++h) EXPECT_NEAR(q.layers[l].head_retrieval[h], mass[l][h], 1e-5);
  }
  EXPECT_EQ(q.commit, p.commit);
  EXPECT_EQ(q.machine, p.machine);
  EXPECT_EQ(q.created, p.created);
  EXPECT_EQ(q.tokens, 512);
  ASSERT_EQ(q.layers.size(), 8u);
  for (const LayerStats& L : q.layers) {
    EXPECT_TRUE(L.moe);
    EXPECT_EQ(L.experts.size(), 8u);
    EXPECT_EQ(L.heads.size(), 2u);
    // Real attention is far from uniform: the best 10% of entries hold more than 10%.
    EXPECT_GT(L.all.coverage.mass_at(0.1), 0.15);
    EXPECT_GT(L.all.query_entropy, 0.5);
    EXPECT_LT(L.all.query_entropy, std::log(256.0));
  }
}

// --- profile JSON ---------------------------------------------------------------

TEST(CoverageCurve, MassAtInterpolatesAndClamps) {
  const CoverageCurve c{{0.f, 0.5f, 1.f}, {0.f, 0.8f, 1.f}};
  EXPECT_DOUBLE_EQ(c.mass_at(0.0), 0.0);
  EXPECT_NEAR(c.mass_at(0.25), 0.4, 1e-7);
  EXPECT_NEAR(c.mass_at(0.5), 0.8, 1e-7);
  EXPECT_NEAR(c.mass_at(0.75), 0.9, 1e-7);
  EXPECT_DOUBLE_EQ(c.mass_at(1.0), 1.0);
  EXPECT_DOUBLE_EQ(c.mass_at(-3.0), 0.0);
  EXPECT_DOUBLE_EQ(c.mass_at(7.0), 1.0);
}

class ProfileFile : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = load_case("mixtral");
    ThreadPool pool(2);
    profile_ = run_calibration(*model_, kCases[0], pool);
    dir_ = test::temp_dir("calibration_profile");
    path_ = dir_ / "profile.json";
    profile_.save(path_);
    json_ = nlohmann::json::parse(test::read_file(path_));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // The error loading `j` (written to a file) for `config`, or "(no error)".
  std::string load_error(const nlohmann::json& j, const ModelConfig& config) const {
    const auto path = dir_ / "edited.json";
    test::write_file(path, j.dump(1));
    return error_of([&] { CalibrationProfile::load(path, config); });
  }
  std::string load_error(const nlohmann::json& j) const { return load_error(j, model_->config()); }

  std::unique_ptr<Model> model_;
  CalibrationProfile profile_;
  std::filesystem::path dir_, path_;
  nlohmann::json json_;
};

void expect_same_group(const GroupStats& a, const GroupStats& b) {
  // Saved with 6 significant digits.
  EXPECT_NEAR(a.entries_fraction, b.entries_fraction, 5e-6 * b.entries_fraction);
  EXPECT_NEAR(a.mass_received, b.mass_received, 5e-6 * b.mass_received);
  EXPECT_NEAR(a.query_entropy, b.query_entropy, 5e-6 * b.query_entropy);
  ASSERT_EQ(a.coverage.fraction_kept.size(), b.coverage.fraction_kept.size());
  for (size_t i = 0; i < a.coverage.fraction_kept.size(); ++i) {
    EXPECT_NEAR(a.coverage.fraction_kept[i], b.coverage.fraction_kept[i],
                5e-6 * b.coverage.fraction_kept[i]);
    EXPECT_NEAR(a.coverage.mass_covered[i], b.coverage.mass_covered[i],
                5e-6 * b.coverage.mass_covered[i]);
  }
}

TEST_F(ProfileFile, SaveLoadRoundTrip) {
  const CalibrationProfile p = CalibrationProfile::load(path_, model_->config());
  EXPECT_EQ(p.version, CalibrationProfile::kVersion);
  EXPECT_EQ(p.architecture, profile_.architecture);
  EXPECT_EQ(p.n_layers, profile_.n_layers);
  EXPECT_EQ(p.n_kv_heads, profile_.n_kv_heads);
  EXPECT_EQ(p.n_experts, profile_.n_experts);
  EXPECT_EQ(p.head_dim, profile_.head_dim);
  EXPECT_EQ(p.tokens, profile_.tokens);
  EXPECT_EQ(p.sequences, profile_.sequences);
  EXPECT_EQ(p.context, profile_.context);
  EXPECT_EQ(p.data, profile_.data);
  ASSERT_EQ(p.layers.size(), profile_.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const LayerStats& a = p.layers[l];
    const LayerStats& b = profile_.layers[l];
    EXPECT_EQ(a.moe, b.moe);
    ASSERT_EQ(a.experts.size(), b.experts.size());
    for (size_t e = 0; e < a.experts.size(); ++e) {
      expect_same_group(a.experts[e], b.experts[e]);
      EXPECT_NEAR(a.experts[e].routing_top1_frequency, b.experts[e].routing_top1_frequency,
                  5e-6 * b.experts[e].routing_top1_frequency);
      EXPECT_NEAR(a.experts[e].routing_topk_weight, b.experts[e].routing_topk_weight,
                  5e-6 * b.experts[e].routing_topk_weight);
    }
    ASSERT_EQ(a.heads.size(), b.heads.size());
    for (size_t h = 0; h < a.heads.size(); ++h) expect_same_group(a.heads[h], b.heads[h]);
    expect_same_group(a.all, b.all);
  }
  // Saving what was loaded gives the same file.
  const auto again = dir_ / "again.json";
  p.save(again);
  EXPECT_EQ(test::read_file(again), test::read_file(path_));
}

TEST_F(ProfileFile, IsReadableJson) {
  const std::string text = test::read_file(path_);
  EXPECT_THAT(text, HasSubstr("\"protected tokens excluded\": "));
  // A curve is one line, not one line per point.
  EXPECT_THAT(text, HasSubstr("\"fraction_kept\": [0, 0.00390625, 0.0078125, 0.015625, 0.03125, "));
  EXPECT_LT(std::count(text.begin(), text.end(), '\n'), 600);
  const auto& expert = json_["layers"][1]["experts"][2];
  EXPECT_EQ(expert["expert"], 2);
  for (const char* key : {"routing_top1_frequency", "routing_topk_weight", "entries_fraction",
                          "mass_received", "query_entropy", "coverage"})
    EXPECT_TRUE(expert.contains(key)) << key;
  EXPECT_EQ(json_["layers"][0]["heads"][1]["kv_head"], 1);
}

TEST_F(ProfileFile, RejectsAnotherVersion) {
  json_["version"] = 2;
  EXPECT_THAT(load_error(json_),
              HasSubstr("edited.json: version 2 is not supported (this build reads version 1)"));
}

TEST_F(ProfileFile, RejectsAnotherModel) {
  EXPECT_EQ(load_error(json_), "(no error)");
  const auto sharded = load_case("mixtral_sharded");  // 3 layers
  EXPECT_THAT(load_error(json_, sharded->config()),
              HasSubstr("edited.json: made for 2 layers, the model has 3"));
  const auto qwen = load_case("qwen2_moe");
  EXPECT_THAT(load_error(json_, qwen->config()),
              HasSubstr("made for MixtralForCausalLM, the model is Qwen2MoeForCausalLM"));
  ModelConfig c = model_->config();
  c.n_kv_heads = 4;
  EXPECT_THAT(load_error(json_, c), HasSubstr("made for 2 kv-heads, the model has 4"));
  c = model_->config();
  c.router.n_experts = 16;
  EXPECT_THAT(load_error(json_, c), HasSubstr("made for 8 experts, the model has 16"));
  c = model_->config();
  c.head_dim = 32;
  EXPECT_THAT(load_error(json_, c), HasSubstr("made for head_dim 16, the model has 32"));
  c = model_->config();
  c.layer_is_moe[1] = 0;
  EXPECT_THAT(load_error(json_, c),
              HasSubstr("made for a MoE layer 1, the model's layer 1 is dense"));
}

TEST_F(ProfileFile, RejectsMissingOrMistypedFields) {
  auto j = json_;
  j["layers"][1]["heads"][0].erase("mass_received");
  EXPECT_THAT(load_error(j),
              HasSubstr("edited.json: missing field 'layers[1].heads[0].mass_received'"));
  j = json_;
  j["layers"][0]["experts"][5]["coverage"].erase("mass_covered");
  EXPECT_THAT(load_error(j),
              HasSubstr("missing field 'layers[0].experts[5].coverage.mass_covered'"));
  j = json_;
  j.erase("tokens");
  EXPECT_THAT(load_error(j), HasSubstr("missing field 'tokens'"));
  j = json_;
  j["n_layers"] = "2";
  EXPECT_THAT(load_error(j), HasSubstr("field 'n_layers' must be an integer"));
  j = json_;
  j["layers"][0]["moe"] = 1;
  EXPECT_THAT(load_error(j), HasSubstr("field 'layers[0].moe' must be true or false"));
  j = json_;
  j["layers"][1]["experts"][0]["query_entropy"] = "high";
  EXPECT_THAT(load_error(j),
              HasSubstr("field 'layers[1].experts[0].query_entropy' must be a number"));
  j = json_;
  j["layers"][1]["heads"].erase(1);
  EXPECT_THAT(load_error(j), HasSubstr("field 'layers[1].heads' has 1 elements, expected 2"));
  test::write_file(dir_ / "edited.json", "{\"version\": 1,");
  EXPECT_THAT(error_of([&] { CalibrationProfile::load(dir_ / "edited.json", model_->config()); }),
              HasSubstr("edited.json: not valid JSON"));
  EXPECT_THAT(error_of([&] { CalibrationProfile::load(dir_ / "absent.json", model_->config()); }),
              HasSubstr("absent.json: cannot open calibration profile"));
}

TEST_F(ProfileFile, RejectsValuesOutOfRange) {
  auto j = json_;
  j["layers"][0]["experts"][0]["mass_received"] = 1.5;
  EXPECT_THAT(load_error(j),
              HasSubstr("field 'layers[0].experts[0].mass_received' = 1.5 is outside [0, 1]"));
  j = json_;
  j["layers"][1]["all"]["query_entropy"] = -0.1;
  EXPECT_THAT(load_error(j), HasSubstr("field 'layers[1].all.query_entropy' = -0.1 is outside"));
  j = json_;
  j["layers"][1]["heads"][0]["coverage"]["fraction_kept"][3] = 2;
  EXPECT_THAT(
      load_error(j),
      HasSubstr("field 'layers[1].heads[0].coverage.fraction_kept[3]' = 2 is outside [0, 1]"));
  j = json_;
  j["sequences"] = 0;
  EXPECT_THAT(load_error(j), HasSubstr("field 'sequences' = 0 is outside"));
  // Shares of a layer's groups must sum to one.
  j = json_;
  const double m = j["layers"][1]["experts"][4]["mass_received"];
  j["layers"][1]["experts"][4]["mass_received"] = m / 2;
  EXPECT_THAT(load_error(j), HasSubstr("'mass_received' of 'layers[1].experts' sums to"));
}

TEST_F(ProfileFile, RejectsBadCurves) {
  auto j = json_;
  auto& mass = j["layers"][0]["experts"][3]["coverage"]["mass_covered"];
  mass[20] = mass[19].get<double>() - 1e-3;
  EXPECT_THAT(
      load_error(j),
      HasSubstr("field 'layers[0].experts[3].coverage.mass_covered' decreases at index 20"));
  j = json_;
  auto& fraction = j["layers"][1]["heads"][1]["coverage"]["fraction_kept"];
  std::swap(fraction[10], fraction[11]);
  EXPECT_THAT(load_error(j),
              HasSubstr("field 'layers[1].heads[1].coverage.fraction_kept' must increase"));
  j = json_;
  j["layers"][1]["all"]["coverage"]["fraction_kept"][0] = 0.001;
  EXPECT_THAT(load_error(j),
              HasSubstr("field 'layers[1].all.coverage.fraction_kept' must run from 0 to 1"));
  j = json_;
  j["layers"][1]["all"]["coverage"]["mass_covered"].erase(3);
  EXPECT_THAT(load_error(j),
              HasSubstr("'layers[1].all.coverage.mass_covered' must be an array of 36 numbers"));
}

// --- calibration text -----------------------------------------------------------

class CalibrationText : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokenizer_ = new Tokenizer(Tokenizer::from_model_dir(std::filesystem::path(EKVA_SOURCE_DIR) /
                                                         "models" / "ekva-moe-tiny"));
  }
  static void TearDownTestSuite() { delete tokenizer_; }
  void SetUp() override { dir_ = test::temp_dir("calibration_text"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static Tokenizer* tokenizer_;
  std::filesystem::path dir_;
};
Tokenizer* CalibrationText::tokenizer_ = nullptr;

const char* kParagraph =
    "The quick brown fox jumps over the lazy dog. int main() { return 0; }\n\n";

TEST_F(CalibrationText, PlainTextIsCutIntoSequencesThatStartWithBos) {
  std::string text;
  for (int i = 0; i < 20; ++i) text += kParagraph;
  test::write_file(dir_ / "sample.txt", text);
  const auto ids = tokenizer_->encode(text, false);
  const auto seqs = calibration_sequences(dir_ / "sample.txt", *tokenizer_, 32, 100);
  ASSERT_EQ(seqs.size(), 3u);  // 100 / 32
  for (size_t s = 0; s < seqs.size(); ++s) {
    ASSERT_EQ(seqs[s].size(), 32u);
    EXPECT_EQ(seqs[s][0], tokenizer_->bos_id());
    EXPECT_TRUE(std::equal(seqs[s].begin() + 1, seqs[s].end(),
                           ids.begin() + static_cast<std::ptrdiff_t>(31 * s)));
  }
  // Less text than max_tokens asks for: as many whole sequences as there are.
  const auto all = calibration_sequences(dir_ / "sample.txt", *tokenizer_, 32, 1 << 20);
  EXPECT_EQ(all.size(), ids.size() / 31);
}

TEST_F(CalibrationText, JsonlTakesTextAndTokens) {
  test::write_file(
      dir_ / "data.jsonl",
      "{\"text\": \"The quick brown fox\"}\n\n{\"id\": 7, \"tokens\": [1, 100, 200, 300]}\n");
  const auto ids = tokenizer_->encode("The quick brown fox", false);
  auto want = std::vector<int32_t>{1};
  want.insert(want.end(), ids.begin(), ids.end());
  for (int32_t t : {100, 200, 300}) want.push_back(t);  // its BOS dropped
  const auto seqs = calibration_sequences(dir_ / "data.jsonl", *tokenizer_,
                                          static_cast<int64_t>(want.size()), 1000);
  ASSERT_EQ(seqs.size(), 1u);
  EXPECT_EQ(seqs[0], want);
}

TEST_F(CalibrationText, ErrorsNameTheFileAndLine) {
  const auto err = [&](const std::string& content, int64_t context = 4, int64_t max_tokens = 100) {
    test::write_file(dir_ / "data.jsonl", content);
    return error_of(
        [&] { calibration_sequences(dir_ / "data.jsonl", *tokenizer_, context, max_tokens); });
  };
  EXPECT_THAT(err("{\"text\": \"a b c d e f\"}\n{\"text\": \n"),
              HasSubstr("data.jsonl:2: not valid JSON"));
  EXPECT_THAT(err("{\"txt\": \"a\"}\n"),
              HasSubstr("data.jsonl:1: needs a \"text\" string or a \"tokens\" array"));
  EXPECT_THAT(err("{\"tokens\": [5, 40000]}\n"),
              HasSubstr("data.jsonl:1: tokens[1] = 40000 is not a token id (0..31999)"));
  EXPECT_THAT(err("{\"tokens\": [5, \"x\"]}\n"), HasSubstr("tokens[1] = \"x\" is not a token id"));
  EXPECT_THAT(
      err("{\"tokens\": [5, 6]}\n"),
      HasSubstr("data.jsonl: 2 tokens of text, too few for one calibration sequence of 4 tokens"));
  EXPECT_THAT(err("{\"tokens\": [5, 6]}\n", 8, 4),
              HasSubstr("max_tokens 4 is less than one sequence of 8 tokens"));
  EXPECT_THAT(error_of([&] { calibration_sequences(dir_ / "none.txt", *tokenizer_, 4, 100); }),
              HasSubstr("none.txt: cannot open calibration data"));
}

}  // namespace
}  // namespace ekva
