#include "kv/calibration.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "core/thread_pool.h"

namespace ekva {

namespace {

// Fractions of a group's entries kept at which coverage curves are sampled: 0, then
// 1/256, 1/128, 1/64 (peaked attention puts much of its mass on very few entries, so
// curves bend most there), then every 1/32 up to 1: 36 points.
std::vector<double> coverage_fractions() {
  std::vector<double> f = {0.0, 1.0 / 256, 1.0 / 128, 1.0 / 64};
  for (int i = 1; i <= 32; ++i) f.push_back(i / 32.0);
  return f;
}

// Queries per block of attention rows. Work items pair block b with block
// n_blocks - 1 - b so that each does about the same causal work (the pool gives
// each thread an equal contiguous share of items first).
constexpr int64_t kQueryBlock = 16;
// Keys per tile of the score computation: one tile of K^T [head_dim, kKeyTile]
// (128 KiB at head_dim 64) stays in L2 while the group's query heads read it, and
// their score rows [group_size, kKeyTile] stay in L1.
constexpr int64_t kKeyTile = 512;
// Attention rows are normalised in f32; their sums must be 1 to about f32 rounding.
constexpr double kRowSumTolerance = 1e-5;

// Statistics of one group of entries (and of the queries of its tag), summed over
// sequences and turned into shares at the end.
struct GroupSums {
  int64_t entries = 0;           // evictable entries (key x kv-head)
  double mass = 0;               // attention mass they received
  double entropy = 0;            // sum of the entropies (nats) of the group's query rows
  int64_t rows = 0;              // query rows (query x query head) in `entropy`
  std::vector<double> coverage;  // [n_fractions] sum over sequences of mass x covered share
};

struct LayerSums {
  std::vector<GroupSums> experts;    // [n_experts] (MoE layers only)
  std::vector<GroupSums> heads;      // [n_kv_heads]
  GroupSums all;                     // the whole layer
  std::vector<int64_t> top1_tokens;  // [n_experts] tokens whose top-1 expert it is
  std::vector<double> topk_weight;   // [n_experts] router weight summed over tokens
  int64_t routed_tokens = 0;
};

// The first attention row found whose probabilities do not sum to 1.
struct BadRow {
  int64_t position = -1;  // -1: none
  int64_t head = 0;
  double sum = 0;
};

// Turns scores s[0, n) into probabilities in place; returns the row's entropy in
// nats, H = log Z - sum_j e_j (s_j - max) / Z with e_j = exp(s_j - max), Z = sum e_j,
// and the sum of the probabilities as stored (for the numerics check).
double softmax_entropy(float* s, int64_t n, double& sum) {
  const float m = *std::max_element(s, s + n);
  double z = 0, weighted = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float x = s[j] - m;
    const float e = std::exp(x);
    s[j] = e;
    z += e;
    weighted += static_cast<double>(e) * x;
  }
  const auto inv = static_cast<float>(1.0 / z);
  sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    s[j] *= inv;
    sum += s[j];
  }
  return std::log(z) - weighted / z;
}

}  // namespace

struct CalibrationStats::State {
  State(const KvModelShape& config, const CalibrationOptions& options, ThreadPool& pool)
      : c_(config),
        options_(options),
        pool_(pool),
        fractions_(coverage_fractions()),
        layers_(static_cast<size_t>(config.n_layers)),
        rows_(static_cast<size_t>(pool.size())),
        received_(static_cast<size_t>(pool.size())),
        bad_rows_(static_cast<size_t>(pool.size())) {
    const auto E = static_cast<size_t>(c_.n_experts);
    const auto group = [&] {
      GroupSums g;
      g.coverage.assign(fractions_.size(), 0.0);
      return g;
    };
    for (int l = 0; l < c_.n_layers; ++l) {
      LayerSums& L = layers_[static_cast<size_t>(l)];
      if (c_.is_moe_layer(l)) {
        L.experts.assign(E, group());
        L.top1_tokens.assign(E, 0);
        L.topk_weight.assign(E, 0.0);
      }
      L.heads.assign(static_cast<size_t>(c_.n_kv_heads), group());
      L.all = group();
    }
  }

  CalibrationProfile profile() const;

  void queries(const float* q, int64_t n_tokens);
  void keys(const float* k, int64_t n_tokens);
  void routing(int layer, const int32_t* experts, const float* weights, int64_t n_tokens,
               int top_k);
  void layer_done(int layer);
  void attend(int64_t kv_head, int64_t q_begin, int64_t q_end, int thread);
  void fold(int layer);
  void add_group(GroupSums& g, std::vector<double>& masses) const;

  const KvModelShape c_;
  const CalibrationOptions options_;
  ThreadPool& pool_;
  const std::vector<double> fractions_;  // [n_fractions] where curves are sampled
  std::vector<LayerSums> layers_;        // [n_layers]

  // The layer being processed; T = tokens of the current sequence.
  int64_t T_ = 0;
  int routed_layer_ = -1;  // the layer tags_ belong to
  std::vector<float> q_;   // [T, n_heads * head_dim] post-RoPE
  // [n_kv_heads, head_dim, T] post-RoPE K transposed, so that the scores of one query
  // over a run of keys are axpy passes over contiguous rows (they vectorise).
  std::vector<float> kt_;
  std::vector<int32_t> tags_;    // [T] top-1 expert (MoE layers)
  std::vector<double> entropy_;  // [T, n_heads] attention row entropies
  // Per pool thread, so that work items never write the same memory:
  std::vector<std::vector<float>> rows_;       // [group_size, T] one query's rows
  std::vector<std::vector<double>> received_;  // [n_kv_heads, T] mass each key received
  std::vector<BadRow> bad_rows_;
  std::vector<double> masses_;  // [entries of one group] sort buffer for coverage
  // The sequences seen.
  int64_t tokens_ = 0, sequences_ = 0, longest_ = 0;
};

void CalibrationStats::State::queries(const float* q, int64_t n_tokens) {
  T_ = n_tokens;
  q_.assign(q, q + n_tokens * c_.q_dim());
}

void CalibrationStats::State::keys(const float* k, int64_t n_tokens) {
  EKVA_CHECK(n_tokens == T_, "k has {} rows, q has {}", n_tokens, T_);
  const int64_t D = c_.head_dim, width = c_.kv_dim();
  kt_.resize(static_cast<size_t>(c_.n_kv_heads * D * n_tokens));
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t i = 0; i < width; ++i)  // i = kv_head * D + d
      kt_[static_cast<size_t>(i * n_tokens + t)] = k[t * width + i];
}

// Recomputes the layer's attention rows from q_ and kt_ (in parallel: work items of
// paired query blocks per kv-head) and folds them into the statistics.
void CalibrationStats::State::layer_done(int layer) {
  if (c_.is_moe_layer(layer))
    EKVA_CHECK(routed_layer_ == layer, "layer {}: no routing before its output", layer);
  const auto G = static_cast<size_t>(c_.n_kv_heads);
  for (int t = 0; t < pool_.size(); ++t) {
    rows_[static_cast<size_t>(t)].resize(static_cast<size_t>(c_.group_size() * T_));
    received_[static_cast<size_t>(t)].assign(G * static_cast<size_t>(T_), 0.0);
  }
  entropy_.resize(static_cast<size_t>(T_ * c_.n_heads));
  const int64_t n_blocks = (T_ + kQueryBlock - 1) / kQueryBlock;
  const int64_t n_pairs = (n_blocks + 1) / 2;
  pool_.parallel_for(c_.n_kv_heads * n_pairs, [&](int64_t begin, int64_t end, int thread) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / n_pairs, b = item % n_pairs;
      attend(g, b * kQueryBlock, std::min(T_, (b + 1) * kQueryBlock), thread);
      const int64_t mirror = n_blocks - 1 - b;
      if (mirror != b)
        attend(g, mirror * kQueryBlock, std::min(T_, (mirror + 1) * kQueryBlock), thread);
    }
  });
  for (const BadRow& bad : bad_rows_) {
    EKVA_CHECK(bad.position < 0,
               "layer {}, query head {}, position {}: attention probabilities sum to {}, not 1",
               layer, bad.head, bad.position, bad.sum);
  }
  fold(layer);
}

void CalibrationStats::State::routing(int layer, const int32_t* experts, const float* weights,
                                      int64_t n_tokens, int top_k) {
  LayerSums& L = layers_[static_cast<size_t>(layer)];
  EKVA_CHECK(n_tokens == T_ && !L.experts.empty(), "layer {}: unexpected routing", layer);
  tags_.resize(static_cast<size_t>(n_tokens));
  for (int64_t t = 0; t < n_tokens; ++t) {
    tags_[static_cast<size_t>(t)] = experts[t * top_k];
    ++L.top1_tokens[static_cast<size_t>(experts[t * top_k])];
    for (int k = 0; k < top_k; ++k)
      L.topk_weight[static_cast<size_t>(experts[t * top_k + k])] += weights[t * top_k + k];
  }
  L.routed_tokens += n_tokens;
  routed_layer_ = layer;
}

// Attention rows of queries [q_begin, q_end) for the query heads of one kv-head:
// their entropies go to entropy_, the probabilities of evictable keys to this
// thread's received_.
void CalibrationStats::State::attend(int64_t kv_head, int64_t q_begin, int64_t q_end, int thread) {
  const int64_t D = c_.head_dim, T = T_, group = c_.group_size();
  const int64_t window = c_.sliding_window;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* kt = &kt_[static_cast<size_t>(kv_head * D * T)];  // [D, T]
  float* rows = rows_[static_cast<size_t>(thread)].data();       // [group, T]
  double* received = &received_[static_cast<size_t>(thread)][static_cast<size_t>(kv_head * T)];
  BadRow& bad = bad_rows_[static_cast<size_t>(thread)];

  for (int64_t i = q_begin; i < q_end; ++i) {
    // Visible keys [lo, i]; of them, [sink_tokens, i - recent_window] are evictable.
    const int64_t lo = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
    const int64_t n = i + 1 - lo;
    const float* q =
        &q_[static_cast<size_t>((i * c_.n_heads + kv_head * group) * D)];  // [group, D]
    for (int64_t r = 0; r < group; ++r) std::fill(rows + r * T, rows + r * T + n, 0.f);
    for (int64_t j0 = 0; j0 < n; j0 += kKeyTile) {
      const int64_t jn = std::min(kKeyTile, n - j0);
      for (int64_t d = 0; d < D; ++d) {
        const float* k = kt + d * T + lo + j0;
        for (int64_t r = 0; r < group; ++r) {
          const float qd = q[r * D + d] * scale;
          float* s = rows + r * T + j0;
          for (int64_t j = 0; j < jn; ++j) s[j] += qd * k[j];
        }
      }
    }
    const int64_t ev_begin = std::max(lo, options_.sink_tokens);
    const int64_t ev_end = i - options_.recent_window + 1;  // exclusive
    for (int64_t r = 0; r < group; ++r) {
      float* p = rows + r * T;
      double sum = 0;
      entropy_[static_cast<size_t>(i * c_.n_heads + kv_head * group + r)] =
          softmax_entropy(p, n, sum);
      if (!(std::abs(sum - 1.0) <= kRowSumTolerance) && bad.position < 0)
        bad = {i, kv_head * group + r, sum};
      for (int64_t j = ev_begin; j < ev_end; ++j) received[j] += p[j - lo];
    }
  }
}

// Adds one sequence's entries of a group (their received masses, reordered here)
// to its sums; the group's coverage curve of this sequence is weighted by its mass.
void CalibrationStats::State::add_group(GroupSums& g, std::vector<double>& masses) const {
  const auto n = static_cast<int64_t>(masses.size());
  std::sort(masses.begin(), masses.end(), std::greater<>());
  for (int64_t i = 1; i < n; ++i)
    masses[static_cast<size_t>(i)] += masses[static_cast<size_t>(i - 1)];
  const double total = n > 0 ? masses.back() : 0.0;
  g.entries += n;
  g.mass += total;
  if (!(total > 0)) return;  // no mass: nothing to weight a curve with
  // Covered share after keeping k entries: C(k) = masses[k - 1] / total; linear
  // between whole entries.
  const auto covered = [&](int64_t k) {
    return k == 0 ? 0.0 : masses[static_cast<size_t>(std::min(k, n) - 1)] / total;
  };
  for (size_t f = 0; f < fractions_.size(); ++f) {
    const double x = fractions_[f] * static_cast<double>(n);
    const auto k = static_cast<int64_t>(x);
    const double c = covered(k) + (x - static_cast<double>(k)) * (covered(k + 1) - covered(k));
    g.coverage[f] += total * c;
  }
}

void CalibrationStats::State::fold(int layer) {
  LayerSums& L = layers_[static_cast<size_t>(layer)];
  const int64_t T = T_, G = c_.n_kv_heads, H = c_.n_heads, group = c_.group_size();
  const bool moe = !L.experts.empty();

  // Mass received by each key of each kv-head: [G, T] in received_[0].
  std::vector<double>& received = received_[0];
  for (size_t t = 1; t < received_.size(); ++t)
    for (size_t i = 0; i < received.size(); ++i) received[i] += received_[t][i];

  for (int64_t i = 0; i < T; ++i) {
    const double* e = &entropy_[static_cast<size_t>(i * H)];  // [H]
    double row_sum = 0;
    for (int64_t h = 0; h < H; ++h) {
      row_sum += e[h];
      L.heads[static_cast<size_t>(h / group)].entropy += e[h];
    }
    L.all.entropy += row_sum;
    L.all.rows += H;
    if (moe) {
      GroupSums& x = L.experts[static_cast<size_t>(tags_[static_cast<size_t>(i)])];
      x.entropy += row_sum;
      x.rows += H;
    }
  }
  for (GroupSums& h : L.heads) h.rows += T * group;

  // Keys that are evictable for some query: [sink_tokens, T - recent_window).
  const int64_t ev_begin = options_.sink_tokens, ev_end = T - options_.recent_window;
  const auto mass = [&](int64_t g, int64_t j) { return received[static_cast<size_t>(g * T + j)]; };
  for (int64_t g = 0; g < G; ++g) {
    masses_.clear();
    for (int64_t j = ev_begin; j < ev_end; ++j) masses_.push_back(mass(g, j));
    add_group(L.heads[static_cast<size_t>(g)], masses_);
  }
  if (moe) {
    for (size_t x = 0; x < L.experts.size(); ++x) {
      masses_.clear();
      for (int64_t j = ev_begin; j < ev_end; ++j)
        if (tags_[static_cast<size_t>(j)] == static_cast<int32_t>(x))
          for (int64_t g = 0; g < G; ++g) masses_.push_back(mass(g, j));
      add_group(L.experts[x], masses_);
    }
  }
  masses_.clear();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = ev_begin; j < ev_end; ++j) masses_.push_back(mass(g, j));
  add_group(L.all, masses_);
}

CalibrationProfile CalibrationStats::State::profile() const {
  CalibrationProfile p;
  p.architecture = c_.architecture;
  p.n_layers = c_.n_layers;
  p.n_kv_heads = c_.n_kv_heads;
  p.n_experts = c_.n_experts;
  p.head_dim = c_.head_dim;
  p.data = options_.data;
  p.layers.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerSums& L = layers_[l];
    if (!(L.all.mass > 0))
      fail("calibration: no attention reached an evictable key in layer {}", l);
    const auto stats = [&](const GroupSums& g, GroupStats& s) {
      s.entries_fraction = static_cast<double>(g.entries) / static_cast<double>(L.all.entries);
      s.mass_received = g.mass / L.all.mass;
      s.query_entropy = g.rows > 0 ? g.entropy / static_cast<double>(g.rows) : 0.0;
      s.coverage.fraction_kept.assign(fractions_.begin(), fractions_.end());
      s.coverage.mass_covered.resize(fractions_.size());
      // A group that never received mass has no ranking: the diagonal says so.
      float running = 0.f;
      for (size_t f = 0; f < fractions_.size(); ++f) {
        const double y = g.mass > 0 ? g.coverage[f] / g.mass : fractions_[f];
        running = std::max(running, static_cast<float>(y));  // never down by rounding
        s.coverage.mass_covered[f] = running;
      }
      s.coverage.mass_covered.front() = 0.f;
      s.coverage.mass_covered.back() = 1.f;
    };
    LayerStats& out = p.layers[l];
    out.moe = !L.experts.empty();
    out.experts.resize(L.experts.size());
    for (size_t x = 0; x < L.experts.size(); ++x) {
      ExpertStats& s = out.experts[x];
      stats(L.experts[x], s);
      const auto tokens = static_cast<double>(L.routed_tokens);
      s.routing_top1_frequency = static_cast<double>(L.top1_tokens[x]) / tokens;
      s.routing_topk_weight = L.topk_weight[x] / tokens;
    }
    out.heads.resize(L.heads.size());
    for (size_t g = 0; g < L.heads.size(); ++g) stats(L.heads[g], out.heads[g]);
    stats(L.all, out.all);
  }
  return p;
}

void check_calibration_input(const KvModelShape& c, std::span<const int64_t> lengths,
                             const CalibrationOptions& options) {
  if (lengths.empty()) fail("calibration: no sequences");
  if (options.sink_tokens < 0 || options.recent_window < 0)
    fail("calibration: sink_tokens ({}) and recent_window ({}) must not be negative",
         options.sink_tokens, options.recent_window);
  if (c.sliding_window > 0 && c.sliding_window <= options.recent_window)
    fail(
        "calibration: the model's sliding window ({}) is not longer than recent_window ({}), "
        "so attention never reaches an evictable key",
        c.sliding_window, options.recent_window);
  for (size_t s = 0; s < lengths.size(); ++s) {
    if (lengths[s] <= options.sink_tokens + options.recent_window)
      fail(
          "calibration: sequence {} has {} tokens; it needs more than sink_tokens + "
          "recent_window = {} to have an evictable key",
          s, lengths[s], options.sink_tokens + options.recent_window);
  }
}

CalibrationStats::CalibrationStats(const KvModelShape& model, const CalibrationOptions& options,
                                   ThreadPool& pool)
    : s_(std::make_unique<State>(model, options, pool)) {}

CalibrationStats::~CalibrationStats() = default;

void CalibrationStats::queries(int layer, const float* q, int64_t n_tokens) {
  EKVA_CHECK(layer >= 0 && layer < s_->c_.n_layers, "layer {}", layer);
  s_->queries(q, n_tokens);
}

void CalibrationStats::keys(int layer, const float* k, int64_t n_tokens) {
  EKVA_CHECK(layer >= 0 && layer < s_->c_.n_layers, "layer {}", layer);
  s_->keys(k, n_tokens);
}

void CalibrationStats::routing(int layer, const int32_t* experts, const float* weights,
                               int64_t n_tokens, int top_k) {
  EKVA_CHECK(layer >= 0 && layer < s_->c_.n_layers, "layer {}", layer);
  s_->routing(layer, experts, weights, n_tokens, top_k);
}

void CalibrationStats::layer_done(int layer) {
  EKVA_CHECK(layer >= 0 && layer < s_->c_.n_layers, "layer {}", layer);
  s_->layer_done(layer);
}

void CalibrationStats::sequence_done(int64_t tokens) {
  s_->tokens_ += tokens;
  ++s_->sequences_;
  s_->longest_ = std::max(s_->longest_, tokens);
}

CalibrationProfile CalibrationStats::profile() const {
  CalibrationProfile profile = s_->profile();
  profile.tokens = s_->tokens_;
  profile.sequences = s_->sequences_;
  profile.context = s_->longest_;
  return profile;
}

}  // namespace ekva
