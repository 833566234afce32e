// Calibration statistics: how a model's attention and its router behave, per
// (layer, expert tag) and per (layer, kv-head), folded into the CalibrationProfile
// that the budget allocators read (kv/profile.h; the definitions are also written
// into every profile under "notes"). This is the pure statistics half; running the
// model over sample text is runtime/calibration_run.h, which feeds this one.
//
// For each sequence and layer the caller hands over the layer's post-RoPE q and k
// and (MoE layers) its routing; layer_done then recomputes the causal attention
// probabilities of every query over every visible key from them in blocks
// (softmax(q.k / sqrt(head_dim)), GQA: query head h reads kv-head h / (n_heads /
// n_kv_heads)) and folds them into the statistics. Only evictable keys count
// towards mass, coverage and entries: for a query at position p, keys at positions
// < sink_tokens or > p - recent_window are protected (never evicted, so their mass
// says nothing about how to split a budget).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kv/model_shape.h"
#include "kv/profile.h"

namespace ekva {

class ThreadPool;

struct CalibrationOptions {
  int64_t sink_tokens = 4;     // the first positions, protected
  int64_t recent_window = 32;  // the last entries before a query (itself included), protected
  std::string data;            // where the text came from, recorded in the profile
};

// Throws ekva::Error unless sequences of these lengths can be calibrated on a
// model of this shape: at least one sequence, each longer than sink_tokens +
// recent_window (so it has an evictable key), options not negative, and a sliding
// window (if any) longer than recent_window.
void check_calibration_input(const KvModelShape& model, std::span<const int64_t> lengths,
                             const CalibrationOptions& options);

// Accumulates the statistics of many sequences, one layer at a time. Per sequence
// and layer, in this order: queries, keys, routing (MoE layers only), layer_done.
class CalibrationStats {
 public:
  CalibrationStats(const KvModelShape& model, const CalibrationOptions& options, ThreadPool& pool);
  ~CalibrationStats();
  CalibrationStats(const CalibrationStats&) = delete;
  CalibrationStats& operator=(const CalibrationStats&) = delete;

  // q: [n_tokens, n_heads * head_dim] post-RoPE; starts the layer of a sequence.
  void queries(int layer, const float* q, int64_t n_tokens);
  // k: [n_tokens, n_kv_heads * head_dim] post-RoPE, the same tokens.
  void keys(int layer, const float* k, int64_t n_tokens);
  // Router decisions: expert ids [n_tokens, top_k] (rank order) and their weights.
  void routing(int layer, const int32_t* experts, const float* weights, int64_t n_tokens,
               int top_k);
  // Recomputes the layer's attention and folds it into the statistics.
  void layer_done(int layer);
  // Counts a finished sequence of `tokens` tokens (tokens, sequences, context).
  void sequence_done(int64_t tokens);

  // The profile of everything seen. Throws ekva::Error when a layer never gave an
  // evictable key any attention.
  CalibrationProfile profile() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace ekva
