// Policies: choose which entries of a segment survive within its budget. One file
// per policy in src/kv/policies/. A policy reads the entries' metadata (positions,
// K, scores the compressed cache accumulated for it) and returns the indices to
// keep; the store commits them through one keep() call.
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
  // The same, but only from the last `observation_window` queries of the prompt and
  // the queries of decode steps since the last compression (SnapKV).
  kObservationWindow,
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string_view name() const = 0;
  virtual ScoreSource score_source() const { return ScoreSource::kNone; }
  // Fills `keep` with min(budget, entries) strictly increasing indices into the
  // segment's entry order (the concatenation of `runs`).
  virtual void select(std::span<const EntryRun> runs, int64_t budget, int64_t head_dim,
                      std::mt19937_64& rng, std::vector<int32_t>& keep) const = 0;
};

// "full", "streamingllm", "h2o", "snapkv", "knorm", "random"; throws ekva::Error
// naming the choices for anything else.
std::unique_ptr<Policy> make_policy(std::string_view name);

}  // namespace ekva
