#include "kv/compressed_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/backend.h"

namespace ekva {

namespace {
// Query rows scored per pass: bounds the [rows, entries] logits buffer.
constexpr int64_t kScoreRowBlock = 256;

// Merges runs that continue each other in memory (view_runs splits a block where
// the segment changes, into runs of a few entries when expert tags interleave), so
// scoring multiplies by whole blocks.
void coalesce(std::vector<EntryRun>& runs, int64_t head_dim) {
  size_t out = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (out > 0) {
      EntryRun& last = runs[out - 1];
      const size_t k_bytes = static_cast<size_t>(last.n * head_dim) * dtype_size(last.dtype);
      if (static_cast<const std::byte*>(last.k) + k_bytes == runs[i].k &&
          last.positions + last.n == runs[i].positions) {
        last.n += runs[i].n;
        continue;
      }
    }
    runs[out++] = runs[i];
  }
  runs.resize(out);
}
}  // namespace

StoreConfig store_config_for(const KvModelShape& model, const CompressionConfig& config,
                             int64_t max_context) {
  StoreConfig s;
  s.shape = kv_cache_shape(model);
  s.n_experts = model.n_experts;
  s.block_size = config.block_size;
  s.granularity = make_allocator(config.allocator)->granularity();
  s.sink_tokens = config.sink_tokens;
  s.recent_window = config.recent_window;
  s.max_context = max_context;
  s.kv_dtype = config.kv_dtype;
  s.memory = config.memory;
  return s;
}

CompressedKvCache::CompressedKvCache(PagedKvStore& store, const KvModelShape& model,
                                     CompressionConfig config, Backend& backend)
    : store_(&store), config_(std::move(config)), backend_(backend) {
  init(model, store.config().max_context);
  if (store.config().granularity != allocator_->granularity())
    fail("compressed cache: allocator '{}' needs a store of another granularity",
         allocator_->name());
  if (store.config().kv_dtype != config_.kv_dtype)
    fail("compressed cache: K/V in {} but the store keeps {}", dtype_name(config_.kv_dtype),
         dtype_name(store.config().kv_dtype));
  check_memory();
  seq_ = store_->add_sequence();
}

CompressedKvCache::CompressedKvCache(const KvModelShape& model, CompressionConfig config,
                                     int64_t max_context, Backend& backend)
    : config_(std::move(config)), backend_(backend) {
  owned_store_ = std::make_unique<PagedKvStore>(store_config_for(model, config_, max_context));
  store_ = owned_store_.get();
  init(model, max_context);
  check_memory();
  seq_ = store_->add_sequence();
}

void CompressedKvCache::check_memory() const {
  const int domain = store_->arena().memory_domain();
  if (domain != backend_.memory_domain())
    fail(
        "compressed cache: the store's K/V are in memory domain {} but the backend ({}) runs in {}",
        domain, backend_.name(), backend_.memory_domain());
  if (domain != 0 && policy_->reads_keys())
    fail(
        "compressed cache: policy '{}' ranks entries by their K rows on the host, which a store "
        "in GPU memory does not have; use snapkv, h2o, streamingllm, random or full there",
        policy_->name());
}

CompressedKvCache::~CompressedKvCache() {
  if (store_ != nullptr && seq_ >= 0) store_->remove_sequence(seq_);
}

void CompressedKvCache::init(const KvModelShape& model, int64_t max_context) {
  policy_ = make_policy(config_.policy);
  allocator_ = make_allocator(config_.allocator);
  n_layers_ = model.n_layers;
  n_heads_ = model.n_heads;
  n_kv_heads_ = model.n_kv_heads;
  head_dim_ = model.head_dim;
  n_experts_ = model.n_experts;
  sliding_window_ = model.sliding_window;
  rng_.seed(config_.seed);
  // A byte budget counts whole blocks: each entry takes a slot of block_bytes /
  // block_size (K, V, position, tag, score), and each (layer, kv-head) list may end
  // in a partly filled block, up to block_size - 1 slots more.
  const int block_size = store_->config().block_size;
  slot_bytes_ = static_cast<double>(store_->block_bytes()) / block_size;
  block_slack_entries_ = int64_t{block_size - 1} * n_layers_ * n_kv_heads_;
  if (allocator_->needs_profile() && config_.profile == nullptr)
    fail(
        "allocator '{}' needs a calibration profile (make one with `ekva calibrate`, pass it with "
        "--profile)",
        allocator_->name());
  score_source_ = policy_->score_source();
  if (allocator_->needs_live_scores() && score_source_ == ScoreSource::kNone)
    score_source_ = ScoreSource::kObservationWindow;  // Ada-KV needs attention scores
  // Validate the budget once: fractions must lie in [0, 100%], and every budget must
  // hold the protected entries (sinks plus the recent window of every layer and
  // kv-head) of a sequence that needs compressing. Tokens and bytes are fixed
  // amounts; a fraction grows with the sequence, so it is checked at the longest
  // one the cache takes (below that, shorter sequences keep their protected entries).
  // The full policy ignores the budget.
  BudgetShape shape;
  shape.n_layers = n_layers_;
  shape.n_kv_heads = n_kv_heads_;
  shape.entry_bytes = static_cast<int64_t>(std::ceil(slot_bytes_));
  shape.block_slack_entries = block_slack_entries_;
  shape.sequence_tokens = config_.budget.unit == BudgetSpec::Unit::kFraction
                              ? max_context
                              : std::numeric_limits<int32_t>::max();
  shape.protected_entries =
      std::min<int64_t>(config_.sink_tokens + config_.recent_window, shape.sequence_tokens) *
      n_layers_ * n_kv_heads_;
  if (policy_->name() == "full") shape.protected_entries = 0;
  if (config_.budget.unit == BudgetSpec::Unit::kFraction && config_.budget.value <= 1.0) {
    const auto entries = static_cast<int64_t>(
        config_.budget.value * static_cast<double>(max_context) * n_layers_ * n_kv_heads_);
    if (entries < shape.protected_entries)
      fail(
          "budget {}: {} entries of the full cache at the context of {} tokens is below the {} "
          "protected entries (sinks + recent window: {} per (layer, kv-head)); raise the budget "
          "or the context, or give tokens",
          config_.budget.to_string(), entries, max_context, shape.protected_entries,
          shape.protected_entries / (int64_t{n_layers_} * n_kv_heads_));
  }
  budget_entries(config_.budget, shape);  // throws for impossible budgets
  budgets_.assign(static_cast<size_t>(n_layers_), {});
  scored_positions_.assign(static_cast<size_t>(n_layers_), {});
  scored_by_attention_.assign(static_cast<size_t>(n_layers_), 0);
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
  next_layer_ = 0;
  layer_target_ = -1;
  budgets_.assign(static_cast<size_t>(n_layers_), {});
  scored_positions_.assign(static_cast<size_t>(n_layers_), {});
  scored_by_attention_.assign(static_cast<size_t>(n_layers_), 0);
  allocated_target_ = -1;
  allocated_length_ = 0;
  stats_ = {};
}

int64_t CompressedKvCache::total_target(int64_t length) const {
  const int64_t full = length * n_layers_ * n_kv_heads_;
  const BudgetSpec& b = config_.budget;
  double total = 0;
  switch (b.unit) {
    case BudgetSpec::Unit::kFraction:
      total = b.value * static_cast<double>(full);
      break;
    case BudgetSpec::Unit::kTokens:
      total = b.value * n_layers_ * n_kv_heads_;
      break;
    case BudgetSpec::Unit::kBytes:  // the bytes held: slots of whole blocks
      total = std::floor(b.value / slot_bytes_) - static_cast<double>(block_slack_entries_);
      break;
  }
  return std::min(full, static_cast<int64_t>(std::floor(total)));
}

int64_t CompressedKvCache::protected_total() const {
  int64_t n = 0;
  for (int l = 0; l < n_layers_; ++l) n += layer_protected(l);
  return n;
}

int64_t CompressedKvCache::layer_protected(int layer) const {
  int64_t n = 0;
  for (int h = 0; h < n_kv_heads_; ++h) n += store_->protected_entries(seq_, layer, h);
  return n;
}

int64_t CompressedKvCache::layer_entries(int layer) const {
  int64_t n = 0;
  for (int h = 0; h < n_kv_heads_; ++h)
    for (const ViewRun& r : store_->view_list(seq_, layer, h)) n += r.chunk.n;
  return n;
}

int64_t CompressedKvCache::scored_queries(int layer, std::span<const int32_t> positions) {
  if (score_source_ == ScoreSource::kNone) return 0;
  const auto T = static_cast<int64_t>(positions.size());
  const int64_t first = score_source_ == ScoreSource::kObservationWindow
                            ? std::max<int64_t>(0, T - config_.observation_window)
                            : 0;
  auto& scored = scored_positions_[static_cast<size_t>(layer)];
  scored.insert(scored.end(), positions.begin() + first, positions.end());
  scored_by_attention_[static_cast<size_t>(layer)] = 1;
  return T - first;
}

void CompressedKvCache::observe_queries(int layer, std::span<const int32_t> positions,
                                        const float* q) {
  if (score_source_ == ScoreSource::kNone) return;
  // The attention op of this forward call scores these queries itself (asked by
  // scored_queries); only a caller that shows queries without running attention
  // (a replayed recording) gets the scoring pass below.
  if (std::exchange(scored_by_attention_[static_cast<size_t>(layer)], 0) != 0) return;
  const auto T = static_cast<int64_t>(positions.size());
  const int64_t first = score_source_ == ScoreSource::kObservationWindow
                            ? std::max<int64_t>(0, T - config_.observation_window)
                            : 0;
  score(layer, positions, q, first);
  auto& scored = scored_positions_[static_cast<size_t>(layer)];
  scored.insert(scored.end(), positions.begin() + first, positions.end());
}

bool CompressedKvCache::observe_all_query_scores(int layer, std::span<const int32_t> positions,
                                                 const float* scores) {
  if (score_source_ != ScoreSource::kAccumulatedAttention || positions.empty()) return false;
  const auto n = static_cast<int64_t>(positions.size());
  const int32_t first = positions.front();
  if (positions.back() - first + 1 != n)
    fail("compressed cache: observe_all_query_scores needs consecutive positions");
  if (store_->arena().memory_domain() != 0)
    fail("compressed cache: recorded scores are added on the host, not to a store in GPU memory");
  for (int h = 0; h < n_kv_heads_; ++h) {
    runs_.clear();
    store_->view_runs(seq_, layer, h, runs_);
    const float* head = scores + static_cast<int64_t>(h) * n;
    for (const EntryRun& run : runs_)
      for (int64_t i = 0; i < run.n; ++i) {
        const int64_t at = int64_t{run.positions[i]} - first;
        if (at >= 0 && at < n) run.scores[i] += head[at];
      }
  }
  auto& scored = scored_positions_[static_cast<size_t>(layer)];
  scored.insert(scored.end(), positions.begin(), positions.end());
  return true;
}

int64_t CompressedKvCache::queries_seen(int layer, int32_t position) const {
  // Queries see the keys at or before them (within the sliding window, if any).
  const auto& scored = scored_positions_[static_cast<size_t>(layer)];
  const auto first = std::lower_bound(scored.begin(), scored.end(), position);
  const auto last = sliding_window_ > 0
                        ? std::lower_bound(first, scored.end(), int64_t{position} + sliding_window_)
                        : scored.end();
  return last - first;
}

void CompressedKvCache::score(int layer, std::span<const int32_t> positions, const float* q,
                              int64_t first_row) {
  if (store_->arena().memory_domain() != 0)
    fail(
        "compressed cache: scoring without attention (a replayed recording) reads the queries "
        "and K rows on the host; a store in GPU memory is scored by the attention op only");
  const int64_t G = n_heads_ / n_kv_heads_;
  const int64_t D = head_dim_;
  const auto T = static_cast<int64_t>(positions.size());
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (int h = 0; h < n_kv_heads_; ++h) {
    runs_.clear();
    store_->view_runs(seq_, layer, h, runs_);
    coalesce(runs_, D);
    int64_t N = 0;
    for (const EntryRun& r : runs_) N += r.n;
    if (N == 0) continue;
    column_sums_.assign(static_cast<size_t>(N), 0.f);
    for (int64_t t0 = first_row; t0 < T; t0 += kScoreRowBlock / G) {
      const int64_t t1 = std::min(T, t0 + kScoreRowBlock / G);
      const int64_t R = (t1 - t0) * G;  // rows: the group's query heads of each token
      rows_.resize(static_cast<size_t>(R * D));
      for (int64_t t = t0; t < t1; ++t)
        std::copy_n(q + (t * n_heads_ + h * G) * D, G * D,
                    &rows_[static_cast<size_t>((t - t0) * G * D)]);
      logits_.resize(static_cast<size_t>(R * N));
      int64_t offset = 0;
      for (const EntryRun& run : runs_) {  // logits[:, offset:offset+n] = rows · kᵀ
        const WeightMatrix k{run.dtype, run.n, D, run.k};  // the stored dtype (bf16 by default)
        backend_.at({"kv_scores", layer})
            .matmul({rows_.data(), R, nullptr, k, logits_.data() + offset, N});
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
            const bool visible =
                k_pos <= q_pos && (sliding_window_ == 0 || q_pos - k_pos < sliding_window_);
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

void CompressedKvCache::end_layer(int layer) {
  if (layer != next_layer_)
    fail("compressed cache: end_layer({}) where layer {} was due (once per layer, in order)", layer,
         next_layer_);
  ++next_layer_;
  if (!config_.per_layer || policy_->name() == "full" || allocated_target_ >= 0) return;
  if (layer == 0) {
    // Nothing was evicted before the first allocation, and every layer gets the same
    // tokens: at the end of this call each later layer holds what layer 0 holds now.
    // So the decision end_forward would take after the last layer is taken here.
    const int64_t live = layer_entries(0) * n_layers_;
    const int64_t protect = layer_protected(0) * n_layers_;
    const int64_t evictable_target = std::max<int64_t>(0, total_target(length()) - protect);
    if (live - protect <= evictable_target) return;
    layer_target_ = evictable_target;
    allocated_segments_.assign(static_cast<size_t>(n_layers_), {});
    committed_.assign(static_cast<size_t>(n_layers_), 0);
  }
  if (layer_target_ >= 0) allocate_layer(layer);
}

void CompressedKvCache::allocate_layer(int layer) {
  const auto l = static_cast<size_t>(layer);
  std::vector<SegmentInfo>& segments = allocated_segments_[l];
  segments.clear();
  store_->segments(seq_, layer, segments, /*count_blocks=*/false);
  AllocationInput input = allocation_input(layer_target_);
  input.segments = allocated_segments_;  // the later layers still empty
  // As in reallocate(): Ada-KV reads the policy's ranks, or the mean attention per query.
  const bool live = allocator_->needs_live_scores();
  const bool policy_scores = policy_->score_source() != ScoreSource::kNone;
  if (live) {
    input.live_scores.resize(static_cast<size_t>(n_layers_));
    segment_ranks(layer, segments, policy_scores, input.live_scores[l]);
  }
  const std::vector<int64_t> allocation = allocator_->allocate_layer(input, layer, committed_);
  committed_[l] = std::accumulate(allocation.begin(), allocation.end(), int64_t{0});
  enforce(layer, segments, allocation, live && policy_scores ? &input.live_scores[l] : nullptr);
}

void CompressedKvCache::enforce(int layer, std::span<const SegmentInfo> segments,
                                std::span<const int64_t> allocation,
                                const std::vector<std::vector<float>>* live_scores) {
  auto& b = budgets_[static_cast<size_t>(layer)];
  b.assign(static_cast<size_t>(store_->n_segments()), -1);
  bool any = false;
  for (size_t i = 0; i < segments.size(); ++i) {
    b[static_cast<size_t>(segments[i].id)] = allocation[i];
    any = any || segments[i].n_entries > allocation[i];
  }
  if (!any) return;
  // Ranked together before any is cut: a rank may look at the neighbours of other segments.
  const std::vector<std::vector<float>>* ranks = live_scores;
  if (ranks == nullptr) {
    segment_ranks(layer, segments, /*by_policy=*/true, layer_ranks_);
    ranks = &layer_ranks_;
  }
  for (size_t i = 0; i < segments.size(); ++i)
    if (segments[i].n_entries > allocation[i])
      evict(layer, segments[i].id, allocation[i], (*ranks)[i]);
}

void CompressedKvCache::end_forward() {
  if (layer_target_ >= 0) {
    // The first allocation ran layer by layer; a caller that ended fewer layers than
    // the model has gets the rest allocated the same way now.
    for (; next_layer_ < n_layers_; ++next_layer_) allocate_layer(next_layer_);
    allocated_target_ = std::exchange(layer_target_, -1);
    allocated_length_ = length();
    stats_.target_entries = total_target(length());
    ++stats_.compressions;
    next_layer_ = 0;
    return;
  }
  next_layer_ = 0;
  if (policy_->name() == "full") return;  // keeps everything whatever the budget
  const int64_t length = this->length();
  const int64_t target = total_target(length);
  const int64_t protect = protected_total();
  const int64_t live = static_cast<int64_t>(store_->bytes(seq_).kv / store_entry_bytes());
  const int64_t evictable_target = std::max<int64_t>(0, target - protect);
  stats_.target_entries = target;
  if (allocated_target_ < 0) {
    if (live - protect > evictable_target) reallocate(evictable_target);
    return;
  }
  // Re-allocate across all segments when the total budget moved by more than an
  // eighth (fraction budgets grow with the sequence) or the sequence grew by an
  // eighth (fixed budgets: the segments' shares follow their live entries)...
  const auto moved = [](int64_t now, int64_t then) {
    return now * 8 > then * 9 || now * 8 < then * 7;
  };
  bool reallocating =
      moved(evictable_target, allocated_target_) || length * 8 > allocated_length_ * 9;
  // ... or when a segment that was empty at the last allocation, and so has no
  // budget, has filled past the slack (an expert first routed to now).
  for (int layer = 0; layer < n_layers_ && !reallocating; ++layer) {
    segments_.clear();
    store_->segments(seq_, layer, segments_, /*count_blocks=*/false);
    const auto& b = budgets_[static_cast<size_t>(layer)];
    for (const SegmentInfo& s : segments_)
      if (b[static_cast<size_t>(s.id)] < 0 && s.n_entries > slack(0)) reallocating = true;
  }
  if (reallocating) {
    reallocate(evictable_target);
    return;
  }
  std::vector<SegmentInfo> over;
  for (int layer = 0; layer < n_layers_; ++layer) {
    segments_.clear();
    store_->segments(seq_, layer, segments_, /*count_blocks=*/false);
    const auto& b = budgets_[static_cast<size_t>(layer)];
    over.clear();
    for (const SegmentInfo& s : segments_) {
      const int64_t budget = std::max<int64_t>(0, b[static_cast<size_t>(s.id)]);
      if (s.n_entries > budget + slack(budget)) over.push_back(s);
    }
    if (over.empty()) continue;
    // Ranked together before any is cut: a rank may look at the neighbours of other segments.
    segment_ranks(layer, over, /*by_policy=*/true, layer_ranks_);
    for (size_t i = 0; i < over.size(); ++i) {
      evict(layer, over[i].id, std::max<int64_t>(0, b[static_cast<size_t>(over[i].id)]),
            layer_ranks_[i]);
      ++stats_.segment_evictions;
    }
  }
}

AllocationInput CompressedKvCache::allocation_input(int64_t evictable_budget) const {
  AllocationInput input;
  input.n_layers = n_layers_;
  input.n_kv_heads = n_kv_heads_;
  input.n_experts = n_experts_;
  input.evictable_budget = evictable_budget;
  input.profile = config_.profile;
  return input;
}

void CompressedKvCache::reallocate(int64_t evictable_target) {
  AllocationInput input = allocation_input(evictable_target);
  input.segments.resize(static_cast<size_t>(n_layers_));
  for (int layer = 0; layer < n_layers_; ++layer)
    store_->segments(seq_, layer, input.segments[static_cast<size_t>(layer)],
                     /*count_blocks=*/false);
  // Ada-KV allocates from the ranks the policy selects on; a policy that reads no
  // attention (StreamingLLM, K-norm, random) gives it no scores to compare across
  // heads, so there it reads the mean attention per query seen.
  const bool live = allocator_->needs_live_scores();
  const bool policy_scores = policy_->score_source() != ScoreSource::kNone;
  if (live) {
    input.live_scores.resize(static_cast<size_t>(n_layers_));
    for (int layer = 0; layer < n_layers_; ++layer)
      segment_ranks(layer, input.segments[static_cast<size_t>(layer)], policy_scores,
                    input.live_scores[static_cast<size_t>(layer)]);
  }
  const Allocation allocation = allocator_->allocate(input);
  for (int layer = 0; layer < n_layers_; ++layer) {
    const auto l = static_cast<size_t>(layer);
    enforce(layer, input.segments[l], allocation[l],
            live && policy_scores ? &input.live_scores[l] : nullptr);
  }
  allocated_target_ = evictable_target;
  allocated_length_ = length();
  ++stats_.compressions;
}

void CompressedKvCache::segment_ranks(int layer, std::span<const SegmentInfo> segments,
                                      bool by_policy, std::vector<std::vector<float>>& ranks) {
  // Rank each kv-head's evictable entries at once, then read each segment's out in
  // its entry order (positions are unique within a (layer, kv-head)).
  const auto length = static_cast<size_t>(this->length());
  // Scores that a GPU's attention added are in its memory until pulled.
  if (score_source_ != ScoreSource::kNone) store_->pull_scores(seq_, layer);
  rank_by_position_.resize(static_cast<size_t>(n_kv_heads_));
  for (int h = 0; h < n_kv_heads_; ++h) {
    runs_.clear();
    store_->view_runs(seq_, layer, h, runs_);
    std::erase_if(runs_, [](const EntryRun& r) { return r.segment == kProtectedSegment; });
    seen_.clear();
    for (const EntryRun& r : runs_)
      for (int64_t i = 0; i < r.n; ++i)
        seen_.push_back(static_cast<float>(queries_seen(layer, r.positions[i])));
    if (by_policy) {
      policy_->rank({runs_, seen_, head_dim_}, rng_, head_rank_);
    } else {
      head_rank_.clear();
      size_t c = 0;
      for (const EntryRun& r : runs_)
        for (int64_t i = 0; i < r.n; ++i, ++c)
          head_rank_.push_back(seen_[c] > 0 ? r.scores[i] / seen_[c] : 0.f);
    }
    auto& by_position = rank_by_position_[static_cast<size_t>(h)];
    by_position.resize(length);
    size_t c = 0;
    for (const EntryRun& r : runs_)
      for (int64_t i = 0; i < r.n; ++i)
        by_position[static_cast<size_t>(r.positions[i])] = head_rank_[c++];
  }
  ranks.resize(segments.size());
  for (size_t s = 0; s < segments.size(); ++s) {
    runs_.clear();
    store_->segment_runs(seq_, layer, segments[s].id, runs_);
    ranks[s].clear();
    for (const EntryRun& r : runs_)
      for (int64_t i = 0; i < r.n; ++i)
        ranks[s].push_back(
            rank_by_position_[static_cast<size_t>(r.kv_head)][static_cast<size_t>(r.positions[i])]);
  }
}

void CompressedKvCache::evict(int layer, int segment, int64_t budget,
                              std::span<const float> ranks) {
  select_top(ranks, budget, keep_);
  store_->keep(seq_, layer, segment, keep_);
  stats_.evicted_entries += static_cast<int64_t>(ranks.size() - keep_.size());
}

CompressionStats CompressedKvCache::stats() const {
  CompressionStats s = stats_;
  s.bytes = store_->bytes(seq_);
  s.live_entries = static_cast<int64_t>(s.bytes.kv / store_entry_bytes());
  s.protected_entries = protected_total();
  s.full_entries = length() * n_layers_ * n_kv_heads_;
  return s;
}

}  // namespace ekva
