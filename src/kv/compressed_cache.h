// The compressed KV cache of one sequence: entries live in a PagedKvStore (shared
// with the batch's other sequences, or owned), scored for the policy from the
// queries the forward pass shows it, and cut to budgets that the allocator derives
// from the sequence's total budget. The first allocation (after the prompt) runs
// layer by layer (end_layer) when per_layer is on: each layer is cut to its budget as
// soon as its attention and router have run, before the next layer appends, so a
// long prefill peaks at one uncompressed layer plus the compressed rest; the
// allocator predicts the layers not yet seen (Allocator::allocate_layer). Otherwise,
// and for everything after it, compression runs at the end of a forward call:
// after the prompt, and during decode whenever a segment outgrows its budget by
// more than a slack (evicting in chunks, not at every step), with a full
// re-allocation when the sequence's total budget or its length has moved by an
// eighth since the last one, or when a segment that was empty then (so it got no
// budget: an expert first routed to during decode) has filled past the slack.
//
// Selection and allocation read one ranking: the policy ranks the evictable entries
// of each (layer, kv-head) at once (Policy::rank), each segment keeps its
// highest-ranked entries and Ada-KV allocates from the same ranks.
#pragma once

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kv/allocator.h"
#include "kv/budget.h"
#include "kv/kv_cache.h"
#include "kv/model_shape.h"
#include "kv/paged_store.h"
#include "kv/policy.h"
#include "kv/profile.h"

namespace ekva {

class Backend;

struct CompressionConfig {
  std::string policy = "snapkv";
  std::string allocator = "uniform";
  BudgetSpec budget;                            // default: 100% (nothing evicted)
  const CalibrationProfile* profile = nullptr;  // required by the EKVA allocators
  int observation_window = 32;                  // SnapKV: prompt queries that score entries
  int sink_tokens = 4;
  int recent_window = 32;
  int block_size = 32;
  uint64_t seed = 0;              // the random policy
  DType kv_dtype = DType::kBF16;  // stored K/V (StoreConfig::kv_dtype): kBF16 or kF32
  // Where the store keeps its K/V (StoreConfig::memory): nullptr for host memory, or a
  // GPU's (the backend's domain) for a cache the forward pass runs on there.
  KvArenaMemory* memory = nullptr;
  // Compress the prompt layer by layer (end_layer) rather than after the last layer.
  // A prompt fed in chunks (SequenceStep::prompt_continues) is compressed in its last
  // chunk, layer by layer there.
  bool per_layer = true;
};

struct CompressionStats {
  int64_t live_entries = 0;  // summed over layers and kv-heads
  int64_t protected_entries = 0;
  int64_t target_entries = 0;     // the budget at the last compression
  int64_t full_entries = 0;       // what the full cache would hold now
  int64_t compressions = 0;       // allocations (after the prompt, and re-allocations)
  int64_t segment_evictions = 0;  // per-segment evictions during decode
  int64_t evicted_entries = 0;
  StoreBytes bytes;
};

// The store layout a compression config needs (granularity from the allocator).
StoreConfig store_config_for(const KvModelShape& model, const CompressionConfig& config,
                             int64_t max_context);

class CompressedKvCache final : public KvCache {
 public:
  // A sequence in an existing store (batch > 1: each sequence has its own budget).
  // The store's granularity must be the allocator's, its kv_dtype the config's.
  CompressedKvCache(PagedKvStore& store, const KvModelShape& model, CompressionConfig config,
                    Backend& backend);
  // A sequence with a store of its own.
  CompressedKvCache(const KvModelShape& model, CompressionConfig config, int64_t max_context,
                    Backend& backend);
  ~CompressedKvCache() override;

  void append(int layer, std::span<const int32_t> positions, const float* k,
              const float* v) override;
  void tag(int layer, std::span<const int32_t> positions, const int32_t* top1_experts) override;
  int64_t scored_queries(int layer, std::span<const int32_t> positions) override;
  void observe_queries(int layer, std::span<const int32_t> positions, const float* q) override;
  bool observe_all_query_scores(int layer, std::span<const int32_t> positions,
                                const float* scores) override;
  void end_layer(int layer) override;
  void end_forward() override;
  void view(int layer, int kv_head, std::vector<KvChunk>& out) const override;
  int64_t length() const override;
  size_t bytes_used() const override;
  void clear() override;
  int memory_domain() const override { return store_->arena().memory_domain(); }

  CompressionStats stats() const;
  // Budget of each segment at the last allocation: [layer][segment id]; -1: the
  // segment was empty then (or nothing was allocated yet).
  const std::vector<std::vector<int64_t>>& budgets() const { return budgets_; }
  int sequence() const { return seq_; }
  PagedKvStore& store() { return *store_; }
  // K/V bytes of one entry in the store's dtype.
  size_t store_entry_bytes() const {
    return (store_->arena().keys_only() ? 1 : 2) * store_->arena().row_bytes();
  }
  // Slack a segment may exceed its budget by before it is cut back (amortisation).
  static int64_t slack(int64_t budget) { return std::max<int64_t>(4, budget / 8); }

 private:
  void init(const KvModelShape& model, int64_t max_context);
  // The store's memory is the backend's, and the policy can rank there.
  void check_memory() const;
  int64_t total_target(int64_t length) const;
  int64_t protected_total() const;
  // The allocator's input with this cache's shape, profile and budget (no segments).
  AllocationInput allocation_input(int64_t evictable_budget) const;
  void reallocate(int64_t evictable_target);
  // The first allocation of one layer, during the forward call (end_layer).
  void allocate_layer(int layer);
  // Cuts the segments of `layer` to their `allocation` ([i] for segments[i]); ranks
  // are the allocator's live scores when it read the policy's, else the policy's.
  void enforce(int layer, std::span<const SegmentInfo> segments,
               std::span<const int64_t> allocation,
               const std::vector<std::vector<float>>* live_scores);
  // Live (and protected) entries of one layer, over its kv-heads.
  int64_t layer_entries(int layer) const;
  int64_t layer_protected(int layer) const;
  // ranks[i]: the rank of each entry of segments[i] (of `layer`), in its entry order;
  // the policy's ranks, or (by_policy false) the mean attention per query seen.
  void segment_ranks(int layer, std::span<const SegmentInfo> segments, bool by_policy,
                     std::vector<std::vector<float>>& ranks);
  // Scored queries of `layer` that saw an entry at `position`.
  int64_t queries_seen(int layer, int32_t position) const;
  // Cuts a segment to its `budget` highest-ranked entries (ranks in its entry order).
  void evict(int layer, int segment, int64_t budget, std::span<const float> ranks);
  // Adds the attention probabilities of the given query rows to the entries' scores.
  void score(int layer, std::span<const int32_t> positions, const float* q, int64_t first_row);

  std::unique_ptr<PagedKvStore> owned_store_;
  PagedKvStore* store_ = nullptr;
  int seq_ = -1;
  CompressionConfig config_;
  Backend& backend_;  // runs the scoring matmuls
  std::unique_ptr<Policy> policy_;
  std::unique_ptr<Allocator> allocator_;
  ScoreSource score_source_ = ScoreSource::kNone;
  int n_layers_ = 0, n_heads_ = 0, n_kv_heads_ = 0, head_dim_ = 0, n_experts_ = 0;
  int64_t sliding_window_ = 0;
  double slot_bytes_ = 0;            // bytes one entry holds in a block (K, V, metadata)
  int64_t block_slack_entries_ = 0;  // entries' worth of partly filled blocks, at most
  int64_t allocated_target_ = -1;    // evictable target of the last allocation
  int64_t allocated_length_ = 0;     // sequence length at the last allocation
  std::vector<std::vector<int64_t>> budgets_;
  // The forward call under way: end_layer has been called for layers [0, next_layer_).
  int next_layer_ = 0;
  // Evictable target of the allocation under way layer by layer; -1: none this call.
  int64_t layer_target_ = -1;
  // [layer]: the segments of the layers allocated so far in this call as they were
  // before their eviction, and the budgets they got in all (allocate_layer's input).
  std::vector<std::vector<SegmentInfo>> allocated_segments_;
  std::vector<int64_t> committed_;
  std::mt19937_64 rng_;
  CompressionStats stats_;
  // Scratch reused across calls.
  std::vector<EntryRun> runs_;
  std::vector<SegmentInfo> segments_;
  // [layer]: positions of the queries that scored entries, ascending.
  std::vector<std::vector<int32_t>> scored_positions_;
  std::vector<uint8_t> scored_by_attention_;  // [layer] 1: this call's attention scores its queries
  std::vector<int32_t> keep_;
  std::vector<float> rows_, logits_, column_sums_;
  std::vector<float> seen_, head_rank_;
  std::vector<std::vector<float>> rank_by_position_;  // [kv-head][position] of one layer
  std::vector<std::vector<float>> layer_ranks_;       // [segment of one layer][entry]
};

}  // namespace ekva
