// Policies: choose which entries of a segment survive within its budget. One file
// per policy in src/kv/policies/. A policy ranks the evictable entries of a (layer,
// kv-head) from their metadata (positions, K, the scores the compressed cache
// accumulated for it); each segment keeps its highest-ranked entries (select_top)
// and the store commits them through one keep() call.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "kv/paged_store.h"

namespace ekva {

// What the compressed cache accumulates into EntryRun::scores for a policy.
enum class ScoreSource {
  kNone,
  // Attention probability each entry receives, summed over the query heads of its
  // GQA group and over every query since the entry was written (H2O).
  kAccumulatedAttention,
  // The same, but only from the last `observation_window` queries of each prefill
  // call and from every decode query (SnapKV). Summed, these would favour old
  // entries (seen by more queries) over new ones, so a policy that reads them ranks
  // by their mean per query seen (RankInput::queries_seen).
  kObservationWindow,
};

// The evictable entries of one (layer, kv-head), all its segments' lists together:
// what a policy ranks at once, so that a ranking that looks at neighbours (SnapKV's
// pooling) sees the same neighbours whatever the segment granularity.
struct RankInput {
  std::span<const EntryRun> runs;  // each list's runs in position order, lists one after another
  // [entries, in the order of `runs`]: scored queries that saw each entry (those at or
  // after its position, within the sliding window), for mean scores.
  std::span<const float> queries_seen;
  int64_t head_dim = 0;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string_view name() const = 0;
  virtual ScoreSource score_source() const { return ScoreSource::kNone; }
  // Whether rank() reads the entries' K rows (EntryRun::k_at) on the host: such a
  // policy cannot rank a store whose K/V are in a GPU's memory.
  virtual bool reads_keys() const { return false; }
  // Fills `rank` with one value per entry of input.runs (concatenated): a segment
  // keeps its entries of highest rank (select_top), and Ada-KV allocates from the
  // same values, so budgets and selection agree.
  virtual void rank(const RankInput& input, std::mt19937_64& rng,
                    std::vector<float>& rank) const = 0;
};

// "full", "streamingllm", "h2o", "snapkv", "knorm", "random"; throws ekva::Error
// naming the choices for anything else.
std::unique_ptr<Policy> make_policy(std::string_view name);

// keep = the indices of the min(budget, n) highest ranks, ascending. Ties go to the
// later entry (more recent within a kv-head's list).
void select_top(std::span<const float> ranks, int64_t budget, std::vector<int32_t>& keep);

// Entries in all runs.
int64_t count_entries(std::span<const EntryRun> runs);

}  // namespace ekva
