#include "kv/compressed_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/ops.h"

namespace ekva {

namespace {
// Query rows scored per pass: bounds the [rows, entries] logits buffer.
constexpr int64_t kScoreRowBlock = 256;
}  // namespace

StoreConfig store_config_for(const KvModelShape& model, const CompressionConfig& config,
                             int64_t max_context) {
  StoreConfig s;
  s.shape = {model.n_layers, model.n_kv_heads, model.head_dim};
  s.n_experts = model.n_experts;
  s.block_size = config.block_size;
  s.granularity = make_allocator(config.allocator)->granularity();
  s.sink_tokens = config.sink_tokens;
  s.recent_window = config.recent_window;
  s.max_context = max_context;
  return s;
}

CompressedKvCache::CompressedKvCache(PagedKvStore& store, const KvModelShape& model,
                                     CompressionConfig config, ThreadPool& pool)
    : store_(&store), config_(std::move(config)), pool_(pool) {
  init(model);
  if (store.config().granularity != allocator_->granularity())
    fail("compressed cache: allocator '{}' needs a store of another granularity",
         allocator_->name());
  seq_ = store_->add_sequence();
}

CompressedKvCache::CompressedKvCache(const KvModelShape& model, CompressionConfig config,
                                     int64_t max_context, ThreadPool& pool)
    : config_(std::move(config)), pool_(pool) {
  init(model);
  owned_store_ = std::make_unique<PagedKvStore>(store_config_for(model, config_, max_context));
  store_ = owned_store_.get();
  seq_ = store_->add_sequence();
}

CompressedKvCache::~CompressedKvCache() {
  if (store_ != nullptr && seq_ >= 0) store_->remove_sequence(seq_);
}

void CompressedKvCache::init(const KvModelShape& model) {
  policy_ = make_policy(config_.policy);
  allocator_ = make_allocator(config_.allocator);
  n_layers_ = model.n_layers;
  n_heads_ = model.n_heads;
  n_kv_heads_ = model.n_kv_heads;
  head_dim_ = model.head_dim;
  n_experts_ = model.n_experts;
  sliding_window_ = model.sliding_window;
  rng_.seed(config_.seed);
  if (allocator_->needs_profile() && config_.profile == nullptr)
    fail("allocator '{}' needs a calibration profile (make one with `ekva calibrate`, pass it with "
         "--profile)", allocator_->name());
  score_source_ = policy_->score_source();
  if (allocator_->needs_live_scores() && score_source_ == ScoreSource::kNone)
    score_source_ = ScoreSource::kObservationWindow;  // Ada-KV needs attention scores
  // Validate the budget once, against the longest sequence: fractions must lie in
  // [0, 100%]; tokens and bytes are fixed amounts that must at least hold the
  // protected entries (sinks plus the recent window of every layer and kv-head).
  BudgetShape shape;
  shape.n_layers = n_layers_;
  shape.n_kv_heads = n_kv_heads_;
  shape.entry_bytes = int64_t{2} * head_dim_ * static_cast<int64_t>(sizeof(float));
  shape.sequence_tokens = std::numeric_limits<int32_t>::max();
  shape.protected_entries =
      int64_t{config_.sink_tokens + config_.recent_window} * n_layers_ * n_kv_heads_;
  if (config_.budget.unit == BudgetSpec::Unit::kFraction) shape.protected_entries = 0;
  budget_entries(config_.budget, shape);  // throws for impossible budgets
  budgets_.assign(static_cast<size_t>(n_layers_), {});
}

void CompressedKvCache::append(int layer, std::span<const int32_t> positions, const float* k,
                               const float* v) {
  store_->cache(seq_).append(layer, positions, k, v);
}

void CompressedKvCache::tag(int layer, std::span<const int32_t> positions, const int32_t* top1) {
  store_->cache(seq_).tag(layer, positions, top1);
}

void CompressedKvCache::view(int layer, int kv_head, std::vector<KvChunk>& out) const {
  store_->cache(seq_).view(layer, kv_head, out);
}

int64_t CompressedKvCache::length() const { return store_->cache(seq_).length(); }
size_t CompressedKvCache::bytes_used() const { return store_->cache(seq_).bytes_used(); }

void CompressedKvCache::clear() {
  store_->cache(seq_).clear();
  budgets_.assign(static_cast<size_t>(n_layers_), {});
  allocated_target_ = -1;
  stats_ = {};
}

int64_t CompressedKvCache::total_target(int64_t length) const {
  const int64_t full = length * n_layers_ * n_kv_heads_;
  const BudgetSpec& b = config_.budget;
  double total = 0;
  switch (b.unit) {
    case BudgetSpec::Unit::kFraction: total = b.value * static_cast<double>(full); break;
    case BudgetSpec::Unit::kTokens: total = b.value * n_layers_ * n_kv_heads_; break;
    case BudgetSpec::Unit::kBytes: total = b.value / (2.0 * head_dim_ * sizeof(float)); break;
  }
  return std::min(full, static_cast<int64_t>(std::floor(total)));
}

int64_t CompressedKvCache::protected_total() const {
  int64_t n = 0;
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_heads_; ++h) n += store_->protected_entries(seq_, l, h);
  return n;
}

void CompressedKvCache::observe_queries(int layer, std::span<const int32_t> positions,
                                        const float* q) {
  if (score_source_ == ScoreSource::kNone) return;
  const auto T = static_cast<int64_t>(positions.size());
  const int64_t first =
      score_source_ == ScoreSource::kObservationWindow ? std::max<int64_t>(0, T - config_.observation_window) : 0;
  score(layer, positions, q, first);
}

void CompressedKvCache::score(int layer, std::span<const int32_t> positions, const float* q,
                              int64_t first_row) {
  const int64_t G = n_heads_ / n_kv_heads_;
  const int64_t D = head_dim_;
  const auto T = static_cast<int64_t>(positions.size());
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (int h = 0; h < n_kv_heads_; ++h) {
    runs_.clear();
    store_->view_runs(seq_, layer, h, runs_);
    int64_t N = 0;
    for (const EntryRun& r : runs_) N += r.n;
    if (N == 0) continue;
    column_sums_.assign(static_cast<size_t>(N), 0.f);
    for (int64_t t0 = first_row; t0 < T; t0 += kScoreRowBlock / G) {
      const int64_t t1 = std::min(T, t0 + kScoreRowBlock / G);
      const int64_t R = (t1 - t0) * G;  // rows: the group's query heads of each token
      rows_.resize(static_cast<size_t>(R * D));
      for (int64_t t = t0; t < t1; ++t)
        std::copy_n(q + (t * n_heads_ + h * G) * D, G * D, &rows_[static_cast<size_t>((t - t0) * G * D)]);
      logits_.resize(static_cast<size_t>(R * N));
      int64_t offset = 0;
      for (const EntryRun& run : runs_) {  // logits[:, offset:offset+n] = rows · kᵀ
        const WeightMatrix k{DType::kF32, run.n, D, run.k};
        matmul(rows_.data(), R, k, logits_.data() + offset, N, pool_);
        offset += run.n;
      }
      for (int64_t r = 0; r < R; ++r) {
        const int32_t q_pos = positions[static_cast<size_t>(t0 + r / G)];
        float* row = &logits_[static_cast<size_t>(r * N)];
        float max_logit = -std::numeric_limits<float>::infinity();
        int64_t c = 0;
        for (const EntryRun& run : runs_) {
          for (int64_t i = 0; i < run.n; ++i, ++c) {
            const int32_t k_pos = run.positions[i];
            const bool visible = k_pos <= q_pos && (sliding_window_ == 0 || q_pos - k_pos < sliding_window_);
            row[c] = visible ? row[c] * scale : -std::numeric_limits<float>::infinity();
            max_logit = std::max(max_logit, row[c]);
          }
        }
        if (max_logit == -std::numeric_limits<float>::infinity()) continue;
        double sum = 0;
        for (c = 0; c < N; ++c) sum += row[c] = std::exp(row[c] - max_logit);
        const auto inv = static_cast<float>(1.0 / sum);
        for (c = 0; c < N; ++c) column_sums_[static_cast<size_t>(c)] += row[c] * inv;
      }
    }
    int64_t c = 0;
    for (const EntryRun& run : runs_)
      for (int64_t i = 0; i < run.n; ++i) run.scores[i] += column_sums_[static_cast<size_t>(c++)];
  }
}

void CompressedKvCache::end_forward() {
  if (policy_->name() == "full") return;  // keeps everything whatever the budget
  const int64_t target = total_target(length());
  const int64_t protect = protected_total();
  const int64_t live = static_cast<int64_t>(store_->bytes(seq_).kv / (2 * static_cast<size_t>(head_dim_) * sizeof(float)));
  const int64_t evictable_target = std::max<int64_t>(0, target - protect);
  stats_.target_entries = target;
  if (allocated_target_ < 0) {
    if (live - protect > evictable_target) reallocate(evictable_target);
    return;
  }
  // The total budget moved by more than an eighth (fraction budgets grow with the
  // sequence): re-allocate across all segments.
  if (evictable_target * 8 > allocated_target_ * 9 || evictable_target * 8 < allocated_target_ * 7) {
    reallocate(evictable_target);
    return;
  }
  for (int layer = 0; layer < n_layers_; ++layer) {
    segments_.clear();
    store_->segments(seq_, layer, segments_);
    auto& b = budgets_[static_cast<size_t>(layer)];
    for (const SegmentInfo& s : segments_) {
      const int64_t budget = std::max<int64_t>(0, b[static_cast<size_t>(s.id)]);
      if (s.n_entries > budget + slack(budget)) {
        evict(layer, s.id, budget);
        ++stats_.segment_evictions;
      }
    }
  }
}

void CompressedKvCache::reallocate(int64_t evictable_target) {
  AllocationInput input;
  input.n_layers = n_layers_;
  input.n_kv_heads = n_kv_heads_;
  input.n_experts = n_experts_;
  input.evictable_budget = evictable_target;
  input.profile = config_.profile;
  input.segments.resize(static_cast<size_t>(n_layers_));
  for (int layer = 0; layer < n_layers_; ++layer)
    store_->segments(seq_, layer, input.segments[static_cast<size_t>(layer)]);
  if (allocator_->needs_live_scores()) {
    input.live_scores.resize(static_cast<size_t>(n_layers_));
    for (int layer = 0; layer < n_layers_; ++layer) {
      for (const SegmentInfo& s : input.segments[static_cast<size_t>(layer)]) {
        runs_.clear();
        store_->segment_runs(seq_, layer, s.id, runs_);
        auto& scores = input.live_scores[static_cast<size_t>(layer)].emplace_back();
        for (const EntryRun& r : runs_) scores.insert(scores.end(), r.scores, r.scores + r.n);
      }
    }
  }
  const Allocation allocation = allocator_->allocate(input);
  for (int layer = 0; layer < n_layers_; ++layer) {
    auto& b = budgets_[static_cast<size_t>(layer)];
    b.assign(static_cast<size_t>(store_->n_segments()), 0);
    const auto& segs = input.segments[static_cast<size_t>(layer)];
    for (size_t i = 0; i < segs.size(); ++i) {
      const int64_t budget = allocation[static_cast<size_t>(layer)][i];
      b[static_cast<size_t>(segs[i].id)] = budget;
      if (segs[i].n_entries > budget) evict(layer, segs[i].id, budget);
    }
  }
  allocated_target_ = evictable_target;
  ++stats_.compressions;
}

void CompressedKvCache::evict(int layer, int segment, int64_t budget) {
  runs_.clear();
  store_->segment_runs(seq_, layer, segment, runs_);
  int64_t n = 0;
  for (const EntryRun& r : runs_) n += r.n;
  policy_->select(runs_, budget, head_dim_, rng_, keep_);
  store_->keep(seq_, layer, segment, keep_);
  stats_.evicted_entries += n - static_cast<int64_t>(keep_.size());
}

CompressionStats CompressedKvCache::stats() const {
  CompressionStats s = stats_;
  s.bytes = store_->bytes(seq_);
  s.live_entries = static_cast<int64_t>(s.bytes.kv / (2 * static_cast<size_t>(head_dim_) * sizeof(float)));
  s.protected_entries = protected_total();
  s.full_entries = length() * n_layers_ * n_kv_heads_;
  return s;
}

}  // namespace ekva
