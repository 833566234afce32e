// EKVA's public C++ API: open a model directory, run sequences, generate text.
//
//   auto engine = ekva::Engine::open("models/ekva-moe-tiny");
//   auto stats = engine->generate("The capital of France is", {.max_new_tokens = 32},
//                                 [](std::string_view piece) { std::cout << piece; });
//
// Every failure (bad files, bad options, overlong prompts) throws ekva::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ekva/error.h"

namespace ekva {

// How each sequence's KV cache is compressed (ARCHITECTURE.md names the parts).
struct KvCompressionOptions {
  std::string policy = "full";        // full, streamingllm, h2o, snapkv, knorm, random
  std::string allocator = "uniform";  // uniform, pyramidkv, adakv, ekva-entropy, ekva-mass
  std::string budget = "100%";        // tokens per sequence ("2048"), bytes ("64MiB"), or a fraction ("10%")
  std::filesystem::path profile;      // calibration profile from `ekva calibrate` (EKVA allocators)
};

struct EngineOptions {
  int threads = 0;       // 0: EKVA_THREADS or one per core
  int64_t context = 0;   // tokens per sequence; 0: the model's max_position_embeddings
  KvCompressionOptions kv;
};

struct SamplingOptions {
  float temperature = 0.f;  // 0: greedy
  int top_k = 0;            // 0: off
  float top_p = 1.f;        // 1: off
  uint64_t seed = 0;
};

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingOptions sampling;
  bool stop_at_eos = true;
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t decode_steps = 0;          // forward passes of one token
  double prefill_seconds = 0;
  double decode_seconds = 0;
  size_t kv_bytes = 0;               // KV storage of the sequence at the end
  size_t kv_full_bytes = 0;          // what the full cache would hold for the same tokens
  size_t decode_bytes_read = 0;      // weights + KV read by all decode steps
  std::string stop_reason;           // "eos", "length" or "context"
  std::vector<int32_t> tokens;       // generated ids

  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// One sequence and its KV cache.
class Session {
 public:
  virtual ~Session() = default;
  // Runs the tokens through the model; returns the logits of the last one [vocab].
  virtual std::span<const float> prefill(std::span<const int32_t> tokens) = 0;
  virtual std::span<const float> decode(int32_t token) = 0;
  virtual int64_t length() const = 0;
  virtual int64_t context() const = 0;
  virtual size_t kv_bytes() const = 0;
  // K/V bytes of an uncompressed cache holding every token of the sequence.
  virtual size_t kv_full_bytes() const = 0;
  // Bytes (weights + KV) the last prefill/decode call had to read.
  virtual size_t last_bytes_read() const = 0;
};

class Engine {
 public:
  static std::unique_ptr<Engine> open(const std::filesystem::path& model_dir,
                                      const EngineOptions& options = {});
  virtual ~Engine() = default;

  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual std::unique_ptr<Session> new_session() const = 0;
  // Encodes the prompt, prefills, samples up to max_new_tokens and streams the text
  // of each step to on_text as soon as it is complete UTF-8.
  virtual GenerateStats generate(std::string_view prompt, const GenerateOptions& options,
                                 const std::function<void(std::string_view)>& on_text) const = 0;

  virtual std::string architecture() const = 0;
  virtual int vocab_size() const = 0;
  virtual int64_t context() const = 0;
  virtual size_t weight_bytes() const = 0;
};

}  // namespace ekva
