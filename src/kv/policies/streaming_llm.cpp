// StreamingLLM (Xiao et al. 2023): attention sinks plus a recent window. The sinks
// and the protected window are kept by the store; within a segment's budget this
// policy keeps the most recent entries, i.e. it widens the window.
#include "kv/policies/policies.h"

namespace ekva {
namespace {

class StreamingLlmPolicy final : public Policy {
 public:
  std::string_view name() const override { return "streamingllm"; }
  void rank(const RankInput& input, std::mt19937_64&, std::vector<float>& rank) const override {
    rank.clear();
    for (const EntryRun& r : input.runs)
      for (int64_t i = 0; i < r.n; ++i) rank.push_back(static_cast<float>(r.positions[i]));
  }
};

}  // namespace

std::unique_ptr<Policy> make_streaming_llm_policy() {
  return std::make_unique<StreamingLlmPolicy>();
}

}  // namespace ekva
