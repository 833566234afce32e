// Calibration runs: where model and kv meet for `ekva calibrate`. Sample text is
// tokenized into sequences, each is prefilled in one forward call on a full cache,
// and an observer hands each layer's post-RoPE q and k and its routing to the
// statistics of kv/calibration.h, which turn them into the CalibrationProfile.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <vector>

#include "kv/calibration.h"
#include "kv/profile.h"

namespace ekva {

class Model;
class ThreadPool;
class Tokenizer;

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

// A needle-in-a-haystack prompt: its tokens, the answer's tokens, and the positions
// of the answer's tokens in the needle.
struct NeedlePrompt {
  std::vector<int32_t> tokens;
  std::vector<int32_t> answer;
  std::vector<int32_t> needle;
};

// The positions of `answer` in the needle sentence that starts at `needle_start` of
// `tokens` (searched over the 96 tokens from there), or empty when it is not there.
std::vector<int32_t> needle_answer_positions(std::span<const int32_t> tokens, int64_t needle_start,
                                             std::span<const int32_t> answer);

// Which kv-heads retrieve: [layer][kv_head] the attention mass that the queries
// predicting the answer's tokens (the prompt and the answer teacher-forced) put on the
// needle's copy of them, mean over those queries, the GQA group's query heads and the
// prompts. Each prompt is prefilled on a full cache whose attention scores those
// queries (the same attention op as decoding, no second pass). `progress`, if set, is
// called after each prompt.
std::vector<std::vector<double>> retrieval_head_mass(
    const Model& model, std::span<const NeedlePrompt> prompts, ThreadPool& pool,
    const std::function<void(int64_t done, int64_t total)>& progress);

}  // namespace ekva
