// Continuous batching. A step:
//   1. admits waiting sequences while fewer than max_sequences run;
//   2. gives every decoding sequence one token, then fills the rest of the step's
//      token budget with prefill chunks of the running prompts, oldest first;
//   3. runs one forward pass over that batch;
//   4. samples the sequences whose logits are ready (decoders, and prompts whose
//      last chunk ran), streams their text, and retires the finished ones at once,
//      which returns their KV blocks to the shared store.
#include "runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <deque>

#include "core/error.h"
#include "model/sampler.h"

namespace ekva {

namespace {

using Clock = std::chrono::steady_clock;

struct Sequence {
  Sequence(const Runtime& rt, int64_t id_, std::vector<int32_t> prompt_, const GenerateOptions& o)
      : id(id_), prompt(std::move(prompt_)), options(o), sampler(o.sampling), text(*rt.tokenizer) {}

  int64_t id;
  std::vector<int32_t> prompt;
  GenerateOptions options;
  Sampler sampler;
  StreamDecoder text;
  std::unique_ptr<KvCache> cache;  // once admitted
  int64_t prefilled = 0;           // prompt tokens run so far
  int32_t next = -1;               // the sampled token the next step feeds back
  GenerateStats stats;

  bool decoding() const { return prefilled == static_cast<int64_t>(prompt.size()); }
};

class SchedulerImpl final : public Scheduler {
 public:
  SchedulerImpl(const Runtime& rt, const SchedulerOptions& o)
      : rt_(rt), options_(o), eos_(rt.tokenizer->eos_ids()) {
    if (o.max_sequences < 1) fail("scheduler: max_sequences must be >= 1, got {}", o.max_sequences);
    if (o.max_step_tokens < o.max_sequences)
      fail(
          "scheduler: max_step_tokens ({}) must be at least max_sequences ({}): every decoding "
          "sequence "
          "needs a token per step",
          o.max_step_tokens, o.max_sequences);
    act_ = std::make_unique<Activations>(
        rt.model->config(), rt.backend(),
        ForwardLimits{.max_sequences = o.max_sequences, .max_tokens = o.max_step_tokens});
    if (rt.compression) store_ = std::make_unique<PagedKvStore>(rt.store_config());
  }

  int64_t add(std::string_view prompt, const GenerateOptions& options) override {
    if (prompt.empty()) fail("empty prompt: there is nothing to continue");
    const std::vector<int32_t> ids = rt_.tokenizer->encode(prompt, /*add_special_tokens=*/true);
    return add_tokens(ids, options);
  }

  int64_t add_tokens(std::span<const int32_t> prompt, const GenerateOptions& options) override {
    if (options.max_new_tokens < 0)
      fail("generate: max_new_tokens must be >= 0, got {}", options.max_new_tokens);
    rt_.check_prompt(prompt);
    auto s = std::make_unique<Sequence>(rt_, next_id_,
                                        std::vector<int32_t>(prompt.begin(), prompt.end()),
                                        options);  // validates the sampling options
    s->stats.prompt_tokens = static_cast<int64_t>(prompt.size());
    waiting_.push_back(std::move(s));
    return next_id_++;
  }

  void cancel(int64_t id) override {
    for (auto* list : {&waiting_, &running_}) {
      const auto it =
          std::find_if(list->begin(), list->end(), [&](const auto& s) { return s->id == id; });
      if (it == list->end()) continue;
      (*it)->stats.stop_reason = "cancelled";
      cancelled_.push_back(finish(**it));
      list->erase(it);  // frees its KV blocks now
      update_kv_bytes();
      return;
    }
    fail("scheduler: no waiting or running sequence has id {}", id);
  }

  std::vector<SequenceUpdate> step() override {
    std::vector<SequenceUpdate> updates = std::move(cancelled_);
    cancelled_.clear();
    admit();
    if (running_.empty()) return updates;

    // The batch: decoders first (a token each), then prefill chunks in the room left.
    batch_.clear();
    members_.clear();
    int64_t room = options_.max_step_tokens;
    for (auto& s : running_) {
      if (!s->decoding()) continue;
      batch_.push_back({s.get()->cache.get(), {&s->next, 1}, false, false});
      members_.push_back(s.get());
      --room;
    }
    for (auto& s : running_) {
      if (s->decoding() || room == 0) continue;
      const int64_t left = static_cast<int64_t>(s->prompt.size()) - s->prefilled;
      const int64_t n = std::min(left, room);
      batch_.push_back(
          {s->cache.get(),
           std::span(s->prompt).subspan(static_cast<size_t>(s->prefilled), static_cast<size_t>(n)),
           false, /*prompt_continues=*/n < left});
      members_.push_back(s.get());
      room -= n;
    }

    const auto t0 = Clock::now();
    const auto n_decoding = static_cast<size_t>(std::count_if(
        members_.begin(), members_.end(), [](const Sequence* s) { return s->decoding(); }));
    rt_.begin_profile_step(n_decoding == members_.size() ? "decode"
                           : n_decoding == 0             ? "prefill"
                                                         : "mixed",
                           batch_);
    const ForwardCounters counters = rt_.model->forward(batch_, *act_, rt_.backend());
    rt_.end_profile_step();
    const int64_t vocab = rt_.model->config().vocab_size;
    std::vector<Sequence*> done;
    for (size_t i = 0; i < members_.size(); ++i) {
      Sequence& s = *members_[i];
      const bool was_decoding = s.decoding();
      if (!was_decoding) {
        s.prefilled += static_cast<int64_t>(batch_[i].tokens.size());
        stats_.prompt_tokens += static_cast<int64_t>(batch_[i].tokens.size());
        if (!s.decoding()) continue;  // more of the prompt to come
      } else {
        ++s.stats.decode_steps;
        s.stats.decode_bytes_read += counters.weight_bytes + counters.kv_bytes;
      }
      const std::span<const float> logits(act_->host_logits() + act_->logit_begin[i] * vocab,
                                          static_cast<size_t>(vocab));
      SequenceUpdate u{.id = s.id};
      if (sample(s, logits, u)) done.push_back(&s);
      if (!u.tokens.empty() || u.finished) updates.push_back(std::move(u));
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    for (Sequence* s : members_)
      (s->stats.decode_steps > 0 ? s->stats.decode_seconds : s->stats.prefill_seconds) += seconds;
    ++stats_.steps;
    stats_.step_seconds += seconds;
    stats_.max_batch = std::max(stats_.max_batch, static_cast<int>(members_.size()));

    // Retire the finished sequences now: their KV blocks go back to the store.
    for (Sequence* s : done) {
      auto it = std::find_if(updates.begin(), updates.end(),
                             [&](const auto& u) { return u.id == s->id; });
      it->stats = s->stats;
      std::erase_if(running_, [&](const auto& r) { return r.get() == s; });
    }
    update_kv_bytes();
    return updates;
  }

  bool idle() const override { return waiting_.empty() && running_.empty(); }
  int n_running() const override { return static_cast<int>(running_.size()); }
  int n_waiting() const override { return static_cast<int>(waiting_.size()); }
  const SchedulerStats& stats() const override { return stats_; }

 private:
  void update_kv_bytes() {
    stats_.kv_bytes = 0;
    for (const auto& s : running_) stats_.kv_bytes += s->cache->bytes_used();
  }

  void admit() {
    while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_sequences) {
      auto s = std::move(waiting_.front());
      waiting_.pop_front();
      // The full cache reserves exactly what the sequence can reach.
      const int64_t capacity = std::min<int64_t>(
          rt_.context, static_cast<int64_t>(s->prompt.size()) + s->options.max_new_tokens + 1);
      s->cache = rt_.make_cache(capacity, store_.get());
      running_.push_back(std::move(s));
    }
  }

  // Samples the next token of a sequence whose logits are ready; fills the update;
  // true when the sequence has finished.
  bool sample(Sequence& s, std::span<const float> logits, SequenceUpdate& u) {
    GenerateStats& st = s.stats;
    if (st.generated_tokens == s.options.max_new_tokens) return finished(s, u, "length");
    const int32_t token = s.sampler.sample(logits);
    if (s.options.stop_at_eos && std::find(eos_.begin(), eos_.end(), token) != eos_.end())
      return finished(s, u, "eos");
    st.tokens.push_back(token);
    ++st.generated_tokens;
    ++stats_.generated_tokens;
    u.tokens.push_back(token);
    u.text = s.text.push(token);
    s.next = token;
    if (st.generated_tokens == s.options.max_new_tokens) return finished(s, u, "length");
    if (s.cache->length() >= rt_.context) return finished(s, u, "context");
    return false;
  }

  bool finished(Sequence& s, SequenceUpdate& u, const char* reason) {
    s.stats.stop_reason = reason;
    u.text += s.text.flush();
    u.finished = true;
    s.stats.kv_bytes = s.cache->bytes_used();
    s.stats.kv_full_bytes = rt_.full_kv_bytes(s.cache->length());
    return true;
  }

  SequenceUpdate finish(Sequence& s) {
    SequenceUpdate u{.id = s.id, .finished = true};
    u.text = s.text.flush();
    if (s.cache) {
      s.stats.kv_bytes = s.cache->bytes_used();
      s.stats.kv_full_bytes = rt_.full_kv_bytes(s.cache->length());
    }
    u.stats = s.stats;
    return u;
  }

  const Runtime& rt_;
  SchedulerOptions options_;
  std::vector<int32_t> eos_;
  std::unique_ptr<Activations> act_;
  std::unique_ptr<PagedKvStore> store_;  // compressed caches of all sequences; declared
                                         // before the sequences so it outlives them
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::deque<std::unique_ptr<Sequence>> running_;
  std::vector<SequenceUpdate> cancelled_;
  std::vector<SequenceStep> batch_;
  std::vector<Sequence*> members_;
  SchedulerStats stats_;
  int64_t next_id_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_scheduler(const Runtime& runtime, const SchedulerOptions& options) {
  return std::make_unique<SchedulerImpl>(runtime, options);
}

}  // namespace ekva
