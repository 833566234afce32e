// The shipped model (models/ekva-moe-tiny) against transformers' MixtralForCausalLM:
// float32 logits of the bf16 checkpoint computed on the GPU machine
// (tests/data/ekva_moe_tiny_reference.safetensors), and the router's top-1 expert
// of every layer for every token. Also the tokenizer and the Engine on real text.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "core/thread_pool.h"
#include "ekva/ekva.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "test_util.h"

namespace ekva {
namespace {

const std::filesystem::path kModel = std::filesystem::path(EKVA_SOURCE_DIR) / "models/ekva-moe-tiny";
const std::filesystem::path kReference =
    std::filesystem::path(EKVA_SOURCE_DIR) / "tests/data/ekva_moe_tiny_reference.safetensors";

template <typename T>
std::vector<T> tensor(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo& t = f.get(name);
  std::vector<T> out(static_cast<size_t>(t.numel()));
  std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}

class ShippedModel : public ::testing::TestWithParam<int> {};

TEST_P(ShippedModel, LogitsAndRoutingMatchTransformers) {
  const int i = GetParam();
  const auto model = Model::load(kModel);
  const auto ref = SafetensorsFile::open(kReference);
  const auto tokens = tensor<int32_t>(*ref, fmt::format("tokens_{}", i));
  const auto logits_ref = tensor<float>(*ref, fmt::format("logits_{}", i));
  const auto top1_ref = tensor<int32_t>(*ref, fmt::format("top1_{}", i));
  const int64_t start = std::stoll(ref->metadata().at(fmt::format("logits_start_{}", i)));
  const ModelConfig& c = model->config();
  const auto V = static_cast<size_t>(c.vocab_size);
  const auto N = static_cast<int64_t>(tokens.size());

  std::vector<int32_t> top1(static_cast<size_t>(N * c.n_layers), -1);  // [N, layers]
  int64_t routed_so_far[64] = {};
  ForwardObserver observer;
  observer.routing = [&](int layer, const int32_t* experts, const float*, int64_t n, int k) {
    for (int64_t t = 0; t < n; ++t)
      top1[static_cast<size_t>((routed_so_far[layer] + t) * c.n_layers + layer)] = experts[t * k];
    routed_so_far[layer] += n;
  };

  // Prefill up to `start`, then decode the 16 positions whose logits are stored:
  // both paths are checked against the reference.
  FullKvCache cache({c.n_layers, c.n_kv_heads, c.head_dim}, N);
  std::vector<float> logits;
  model->forward(std::span(tokens).first(static_cast<size_t>(start + 1)), cache, logits, false,
                 test::cpu(), &observer);
  for (int64_t t = start; t < N; ++t) {
    if (t > start)
      model->forward(std::span(tokens).subspan(static_cast<size_t>(t), 1), cache, logits, false,
                     test::cpu(), &observer);
    const float* want = &logits_ref[static_cast<size_t>(t - start) * V];
    // Same bf16 weights, f32 arithmetic on both sides (GPU vs CPU summation order).
    EXPECT_LT(test::rel_error(logits.data(), want, V), 2e-4) << "position " << t;
    const auto argmax = [&](const float* p) { return std::max_element(p, p + V) - p; };
    EXPECT_EQ(argmax(logits.data()), argmax(want)) << "position " << t;
  }
  size_t mismatches = 0;
  for (size_t j = 0; j < top1.size(); ++j) mismatches += top1[j] != top1_ref[j];
  // Near-ties in router logits may flip between GPU and CPU summation orders.
  EXPECT_LE(mismatches, top1.size() / 500) << mismatches << " of " << top1.size() << " top-1 choices differ";
}

INSTANTIATE_TEST_SUITE_P(Sequences, ShippedModel, ::testing::Values(0, 1, 2));

TEST(ShippedModelEngine, GeneratesDeterministicTextWithStats) {
  auto engine = Engine::open(kModel, {.threads = 0, .context = 4096});
  EXPECT_EQ(engine->architecture(), "MixtralForCausalLM");
  const auto ids = engine->encode("The kernel");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);  // <s>
  std::string streamed;
  GenerateOptions opts;
  opts.max_new_tokens = 12;
  const auto a = engine->generate("The kernel", opts, [&](std::string_view s) { streamed += s; });
  const auto b = engine->generate("The kernel", opts, nullptr);
  EXPECT_EQ(a.tokens, b.tokens);  // greedy is deterministic
  EXPECT_EQ(streamed, engine->decode(a.tokens));
  EXPECT_EQ(a.prompt_tokens, static_cast<int64_t>(ids.size()));
  EXPECT_GT(a.kv_bytes, 0u);
  EXPECT_GT(a.prefill_tokens_per_second(), 0.0);
}

TEST(ShippedModelEngine, OverlongPromptIsAClearError) {
  auto engine = Engine::open(kModel, {.threads = 0, .context = 32});
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "word ";
  try {
    engine->generate(prompt, {}, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit the context of 32 tokens"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ekva
