// The public Engine and Session over the Runtime (model, tokenizer, backend, KV
// cache configuration); generation runs through the scheduler.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "ekva/ekva.h"
#include "runtime/runtime.h"
#include "runtime/scheduler.h"

namespace ekva {

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}
double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

namespace {

// One sequence, driven by hand: prefill (in chunks of max_step_tokens) and decode.
class SessionImpl final : public Session {
 public:
  explicit SessionImpl(const Runtime& rt)
      : rt_(rt),
        cache_(rt.make_cache(rt.context, nullptr)),
        act_(rt.model->config(), rt.backend(),
             {.max_sequences = 1, .max_tokens = rt.max_step_tokens}) {}

  std::span<const float> prefill(std::span<const int32_t> tokens) override {
    if (tokens.empty()) fail("prefill: empty prompt");
    check_room(static_cast<int64_t>(tokens.size()));
    last_ = {};
    for (size_t t0 = 0; t0 < tokens.size(); t0 += static_cast<size_t>(rt_.max_step_tokens)) {
      const size_t n = std::min(tokens.size() - t0, static_cast<size_t>(rt_.max_step_tokens));
      run("prefill", {cache_.get(), tokens.subspan(t0, n), false,
                      /*prompt_continues=*/t0 + n < tokens.size()});
    }
    return logits();
  }

  std::span<const float> decode(int32_t token) override {
    check_room(1);
    last_ = {};
    run("decode", {cache_.get(), {&token, 1}, false, false});
    return logits();
  }

  int64_t length() const override { return cache_->length(); }
  int64_t context() const override { return rt_.context; }
  size_t kv_bytes() const override { return cache_->bytes_used(); }
  size_t kv_full_bytes() const override { return rt_.full_kv_bytes(cache_->length()); }
  size_t last_bytes_read() const override { return last_.weight_bytes + last_.kv_bytes; }

 private:
  void check_room(int64_t n) const {
    if (cache_->length() + n > rt_.context)
      fail("sequence of {} tokens exceeds the context of {} tokens", cache_->length() + n,
           rt_.context);
  }
  void run(std::string_view phase, const SequenceStep& step) {
    rt_.begin_profile_step(phase, {&step, 1});
    const ForwardCounters c = rt_.model->forward({&step, 1}, act_, rt_.backend());
    rt_.end_profile_step();
    last_.weight_bytes += c.weight_bytes;
    last_.kv_bytes += c.kv_bytes;
  }
  std::span<const float> logits() const {
    return {act_.host_logits(), static_cast<size_t>(rt_.model->config().vocab_size)};
  }

  const Runtime& rt_;
  std::unique_ptr<KvCache> cache_;
  Activations act_;
  ForwardCounters last_;
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(const std::filesystem::path& dir, const EngineOptions& options) {
    if (options.threads < 0) fail("engine: threads must be >= 0, got {}", options.threads);
    if (options.context < 0) fail("engine: context must be >= 0, got {}", options.context);
    if (options.max_step_tokens < 1)
      fail("engine: max_step_tokens must be >= 1, got {}", options.max_step_tokens);
    rt_.model = Model::load(dir);
    rt_.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_model_dir(dir));
    rt_.cpu = std::make_unique<CpuBackend>(options.threads);
    rt_.device = DeviceSpec::parse(options.device);
    if (!rt_.device.is_cpu()) {
      rt_.gpu = open_device_backend(rt_.device);
      rt_.model->place(*rt_.gpu);
    }
    // On a GPU the profile times each op with CUDA events on the backend's stream.
    if (options.profile_ops)
      rt_.profiler = rt_.gpu ? std::make_unique<ProfilingBackend>(
                                   *rt_.gpu, make_device_op_timer(rt_.device, *rt_.gpu))
                             : std::make_unique<ProfilingBackend>(*rt_.cpu);
    const ModelConfig& c = rt_.model->config();
    if (options.context > c.max_position_embeddings)
      fail("engine: context {} exceeds the model's max_position_embeddings ({})", options.context,
           c.max_position_embeddings);
    rt_.context = options.context > 0 ? options.context : c.max_position_embeddings;
    rt_.max_step_tokens = options.max_step_tokens;
    if (rt_.tokenizer->vocab_size() > c.vocab_size)
      fail("{}: tokenizer has {} tokens but config.json vocab_size is {}", dir.string(),
           rt_.tokenizer->vocab_size(), c.vocab_size);

    if (options.kv_dtype == "bf16")
      rt_.kv_dtype = DType::kBF16;
    else if (options.kv_dtype == "f32")
      rt_.kv_dtype = DType::kF32;
    else
      fail("engine: kv_dtype must be \"bf16\" or \"f32\", got \"{}\"", options.kv_dtype);

    const KvCompressionOptions& kv = options.kv;
    const BudgetSpec budget = BudgetSpec::parse(kv.budget);
    const bool everything = budget.unit == BudgetSpec::Unit::kFraction && budget.value == 1.0;
    if (kv.policy != "full" || !everything) {
      if (!kv.profile.empty()) rt_.profile = CalibrationProfile::load(kv.profile, c);
      rt_.compression = CompressionConfig{};
      rt_.compression->policy = kv.policy;
      rt_.compression->allocator = kv.allocator;
      rt_.compression->budget = budget;
      rt_.compression->profile = kv.profile.empty() ? nullptr : &*rt_.profile;
      rt_.compression->kv_dtype = rt_.kv_dtype;
      rt_.compression->per_layer = kv.compress_per_layer;
      if (rt_.gpu) {
        rt_.gpu_kv_memory = make_device_arena_memory(rt_.device, *rt_.gpu);
        rt_.compression->memory = rt_.gpu_kv_memory.get();
      }
      // Validates the combination now (unknown names, missing profile, impossible
      // budgets) rather than at the first prompt.
      rt_.make_cache(rt_.context, nullptr);
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    return rt_.tokenizer->encode(text, add_special_tokens);
  }
  std::string decode(std::span<const int32_t> ids) const override {
    return rt_.tokenizer->decode(ids);
  }

  std::unique_ptr<Session> new_session() const override {
    return std::make_unique<SessionImpl>(rt_);
  }
  std::unique_ptr<Scheduler> new_scheduler(const SchedulerOptions& options) const override {
    return make_scheduler(rt_, options);
  }

  GenerateStats generate(std::string_view prompt, const GenerateOptions& options,
                         const std::function<void(std::string_view)>& on_text) const override {
    auto scheduler =
        make_scheduler(rt_, {.max_sequences = 1, .max_step_tokens = rt_.max_step_tokens});
    scheduler->add(prompt, options);
    while (true) {
      for (SequenceUpdate& u : scheduler->step()) {
        if (on_text && !u.text.empty()) on_text(u.text);
        if (u.finished) return std::move(u.stats);
      }
    }
  }

  std::string op_profile_json() const override {
    if (!rt_.profiler) return "";
    return rt_.profiler->profile().to_json().dump(1);
  }

  std::string architecture() const override { return rt_.model->config().arch_name; }
  int vocab_size() const override { return rt_.model->config().vocab_size; }
  int64_t context() const override { return rt_.context; }
  size_t weight_bytes() const override { return rt_.model->tensors().total_bytes(); }

 private:
  Runtime rt_;
};

}  // namespace

std::unique_ptr<Engine> Engine::open(const std::filesystem::path& model_dir,
                                     const EngineOptions& options) {
  return std::make_unique<EngineImpl>(model_dir, options);
}

}  // namespace ekva
