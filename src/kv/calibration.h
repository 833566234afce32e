// Calibration: run sample text through a model and record how its attention and its
// router behave, per (layer, expert tag) and per (layer, kv-head), as the
// CalibrationProfile that the budget allocators read (kv/profile.h; the definitions
// are also written into every profile under "notes").
//
// Each sequence is prefilled in one forward call on a full cache. An observer keeps
// one layer's post-RoPE q and k and its routing at a time; when the layer is done,
// the causal attention probabilities of every query over every visible key are
// recomputed from them in blocks (softmax(q.k / sqrt(head_dim)), GQA: query head h
// reads kv-head h / (n_heads / n_kv_heads)) and folded into the statistics. Only
// evictable keys count towards mass, coverage and entries: for a query at position
// p, keys at positions < sink_tokens or > p - recent_window are protected (never
// evicted, so their mass says nothing about how to split a budget).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kv/profile.h"

namespace ekva {

class Model;
class ThreadPool;
class Tokenizer;

struct CalibrationOptions {
  int64_t sink_tokens = 4;     // the first positions, protected
  int64_t recent_window = 32;  // the last entries before a query (itself included), protected
  std::string data;            // where the text came from, recorded in the profile
};

// Statistics over `sequences` (token ids, each prefilled from position 0; lengths
// may differ). `progress`, if set, is called after each sequence with the tokens
// done so far and in all. Throws ekva::Error for a sequence too short to have an
// evictable key (length <= sink_tokens + recent_window) or too long for the model,
// and for a sliding window that never reaches an evictable key.
CalibrationProfile calibrate(
    const Model& model, std::span<const std::vector<int32_t>> sequences,
    const CalibrationOptions& options, ThreadPool& pool,
    const std::function<void(int64_t done_tokens, int64_t total_tokens)>& progress);

// Calibration sequences from a file: plain text, or (for a .jsonl name) one JSON
// object per line with a "text" string or a "tokens" array of ids. Every document
// is tokenized without special tokens (a leading BOS of a "tokens" document is
// dropped) and the documents are concatenated; the stream is cut into sequences of
// `context` tokens that each start with the tokenizer's BOS (if it has one), as
// many as fit in `max_tokens`. Throws ekva::Error naming the file (and line) for
// unreadable or malformed data, or text too short for one sequence.
std::vector<std::vector<int32_t>> calibration_sequences(const std::filesystem::path& data,
                                                        const Tokenizer& tokenizer, int64_t context,
                                                        int64_t max_tokens);

}  // namespace ekva
