// StreamingLLM (Xiao et al. 2023): attention sinks plus a recent window. The sinks
// and the protected window are kept by the store; within a segment's budget this
// policy keeps the most recent entries, i.e. it widens the window.
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class StreamingLlmPolicy final : public Policy {
 public:
  std::string_view name() const override { return "streamingllm"; }
  void select(std::span<const EntryRun> runs, int64_t budget, int64_t, std::mt19937_64&,
              std::vector<int32_t>& keep) const override {
    std::vector<float> recency;
    recency.reserve(static_cast<size_t>(count_entries(runs)));
    for (const EntryRun& r : runs)
      for (int64_t i = 0; i < r.n; ++i) recency.push_back(static_cast<float>(r.positions[i]));
    select_top(recency, budget, keep);
  }
};

}  // namespace

std::unique_ptr<Policy> make_streaming_llm_policy() { return std::make_unique<StreamingLlmPolicy>(); }

}  // namespace ekva
