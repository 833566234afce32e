// EKVA's public C++ API: open a model directory, run sequences, generate text.
//
//   auto engine = ekva::Engine::open("models/ekva-moe-tiny");
//   auto stats = engine->generate("The capital of France is", {.max_new_tokens = 32},
//                                 [](std::string_view piece) { std::cout << piece; });
//
//   auto scheduler = engine->new_scheduler({.max_sequences = 32});
//   scheduler->add("First prompt", {.max_new_tokens = 64});
//   scheduler->add("Second prompt", {.max_new_tokens = 16});
//   while (!scheduler->idle())
//     for (const auto& u : scheduler->step()) std::cout << u.id << ": " << u.text << "\n";
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
  std::string budget =
      "100%";  // tokens per sequence ("2048"), bytes ("64MiB"), or a fraction ("10%")
  std::filesystem::path profile;  // calibration profile from `ekva calibrate` (EKVA allocators)
  // Compress the prompt layer by layer as the prefill runs (its peak is then one
  // layer uncompressed plus the compressed rest), or all layers after the last one.
  bool compress_per_layer = true;
};

struct EngineOptions {
  int threads = 0;      // 0: EKVA_THREADS or one per core
  int64_t context = 0;  // tokens per sequence; 0: the model's max_position_embeddings
  // Tokens one forward call runs at most: longer prompts are prefilled in chunks
  // of this size (the activations are allocated for it once).
  int64_t max_step_tokens = 512;
  // Element type of the stored K/V, for the full and the compressed cache alike:
  // "bf16" (half the bytes; attention and scoring widen to f32) or "f32".
  std::string kv_dtype = "bf16";
  KvCompressionOptions kv;
  // Time every op of the forward pass, with its bytes and FLOPs, per op, layer and
  // expert (Engine::op_profile_json; `ekva generate --op-profile`). Off: no cost.
  bool profile_ops = false;
  // Where the forward pass runs: "cpu", or "cuda" / "cuda:N" (the weights and the KV
  // cache in that GPU's memory; the full cache only, for now).
  std::string device = "cpu";
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
  int64_t decode_steps = 0;  // forward passes of one token
  double prefill_seconds = 0;
  double decode_seconds = 0;
  size_t kv_bytes = 0;           // KV storage of the sequence at the end
  size_t kv_full_bytes = 0;      // what the full cache would hold for the same tokens
  size_t decode_bytes_read = 0;  // weights + KV read by all decode steps
  std::string stop_reason;       // "eos", "length" or "context"
  std::vector<int32_t> tokens;   // generated ids

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

struct SchedulerOptions {
  int max_sequences = 16;  // sequences in one step (the batch); more wait their turn
  int64_t max_step_tokens =
      512;  // tokens in one step: one per decoding sequence, plus prefill chunks
};

// What one step did to one sequence.
struct SequenceUpdate {
  int64_t id = 0;
  std::vector<int32_t> tokens;  // generated in this step (none while prefilling)
  std::string text;             // their text, complete UTF-8 only
  bool finished = false;
  GenerateStats stats;  // the whole sequence's, once finished
};

struct SchedulerStats {
  int64_t steps = 0;
  int64_t prompt_tokens = 0;  // prefilled
  int64_t generated_tokens = 0;
  double step_seconds = 0;  // in forward passes and sampling
  int max_batch = 0;        // most sequences in one step
  size_t kv_bytes = 0;      // K/V held by the running sequences after the last step
  double generated_tokens_per_second() const {
    return step_seconds > 0 ? static_cast<double>(generated_tokens) / step_seconds : 0.0;
  }
};

// Continuous batching: sequences join between steps and leave as soon as they
// finish (end of text, max_new_tokens, the context, or cancel), and a finished
// sequence's KV memory is free at once for the others. Each step is one forward
// pass over every running sequence: one token for each decoding sequence and
// prefill chunks of the prompts that are still being read. Not thread-safe.
class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Queues a sequence and returns its id. An empty prompt, a prompt that does not
  // fit the context or bad options throw ekva::Error; queued and running
  // sequences are unaffected.
  virtual int64_t add(std::string_view prompt, const GenerateOptions& options) = 0;
  virtual int64_t add_tokens(std::span<const int32_t> prompt, const GenerateOptions& options) = 0;
  // Ends a waiting or running sequence now and frees its KV memory; the next step
  // reports it finished with stop_reason "cancelled". An unknown id throws.
  virtual void cancel(int64_t id) = 0;
  // Runs one step; returns an update for every sequence that produced a token or
  // finished. With nothing to run it returns only pending cancellations.
  virtual std::vector<SequenceUpdate> step() = 0;
  virtual bool idle() const = 0;  // nothing waiting or running
  virtual int n_running() const = 0;
  virtual int n_waiting() const = 0;
  virtual const SchedulerStats& stats() const = 0;
};

class Engine {
 public:
  static std::unique_ptr<Engine> open(const std::filesystem::path& model_dir,
                                      const EngineOptions& options = {});
  virtual ~Engine() = default;

  virtual std::vector<int32_t> encode(std::string_view text,
                                      bool add_special_tokens = true) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual std::unique_ptr<Session> new_session() const = 0;
  // A scheduler of its own (its own KV store and activations) over this engine's
  // model; the engine must outlive it.
  virtual std::unique_ptr<Scheduler> new_scheduler(const SchedulerOptions& options = {}) const = 0;
  // Encodes the prompt, prefills, samples up to max_new_tokens and streams the text
  // of each step to on_text as soon as it is complete UTF-8.
  virtual GenerateStats generate(std::string_view prompt, const GenerateOptions& options,
                                 const std::function<void(std::string_view)>& on_text) const = 0;

  // With EngineOptions::profile_ops, the op profile of every forward pass run so far,
  // as JSON ("ekva-op-profile": per phase, op site, layer and expert the calls, token
  // rows, seconds, bytes and FLOPs; `ekva roofline report` reads it); else "".
  virtual std::string op_profile_json() const = 0;

  virtual std::string architecture() const = 0;
  virtual int vocab_size() const = 0;
  virtual int64_t context() const = 0;
  virtual size_t weight_bytes() const = 0;
};

}  // namespace ekva
