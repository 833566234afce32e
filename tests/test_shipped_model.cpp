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

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models/ekva-moe-tiny";
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
  FullKvCache cache(kv_cache_shape(c), N);
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
  EXPECT_LE(mismatches, top1.size() / 500)
      << mismatches << " of " << top1.size() << " top-1 choices differ";
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

// The engine stores K/V in bf16 by default: with the full cache its logits stay
// within bf16 tolerance of an f32 engine's on the same tokens (teacher-forced), but
// are not the f32 ones, in exactly half the KV bytes; a compressed cache holds about
// half the bytes (its logits may differ more: scores from bf16 keys can evict other
// entries); a bad kv_dtype is a clear error.
TEST(ShippedModelEngine, Bf16KvStaysWithinBf16ToleranceOfF32) {
  std::string text;
  for (int i = 0; i < 12; ++i)
    text += fmt::format("Section {}: the scheduler hands the kernel {} pages of the cache. ", i,
                        3 * i + 1);
  for (const std::string policy : {"full", "snapkv"}) {
    SCOPED_TRACE(policy);
    EngineOptions o32{.threads = 0, .context = 1024};
    o32.kv_dtype = "f32";
    o32.kv.policy = policy;
    o32.kv.budget = policy == "full" ? "100%" : "50%";
    EngineOptions o16 = o32;
    o16.kv_dtype = EngineOptions{}.kv_dtype;  // the default
    ASSERT_EQ(o16.kv_dtype, "bf16");
    const auto e32 = Engine::open(kModel, o32);
    const auto e16 = Engine::open(kModel, o16);
    const auto ids = e32->encode(text);
    ASSERT_GT(ids.size(), 200u);
    const auto s32 = e32->new_session();
    const auto s16 = e16->new_session();
    const auto first = s32->prefill(ids);
    std::vector<float> l32(first.begin(), first.end());
    double max_err = 0, min_err = 1;
    for (int step = 0; step <= 24; ++step) {
      std::span<const float> l16;
      if (step == 0) {
        l16 = s16->prefill(ids);
      } else {
        const auto next =
            static_cast<int32_t>(std::max_element(l32.begin(), l32.end()) - l32.begin());
        const auto got = s32->decode(next);
        l32.assign(got.begin(), got.end());
        l16 = s16->decode(next);
      }
      const double err = test::rel_error(l16.data(), l32.data(), l32.size());
      max_err = std::max(max_err, err);
      min_err = std::min(min_err, err);
    }
    std::printf("[ bf16 KV ] %s: logits rel. error vs f32 %.2e..%.2e; KV %zu vs %zu bytes\n",
                policy.c_str(), min_err, max_err, s16->kv_bytes(), s32->kv_bytes());
    if (policy == "full") {
      EXPECT_LT(max_err, 1e-2);
    }
    EXPECT_GT(min_err, 1e-6) << "the bf16 engine computed with f32 K/V";
    EXPECT_EQ(2 * s16->kv_full_bytes(), s32->kv_full_bytes());
    if (policy == "full")
      EXPECT_EQ(2 * s16->kv_bytes(), s32->kv_bytes());
    else  // whole blocks, and the cells (12 bytes an entry) stay the same
      EXPECT_LT(static_cast<double>(s16->kv_bytes()), 0.55 * static_cast<double>(s32->kv_bytes()));
  }
  EngineOptions bad;
  bad.kv_dtype = "fp8";
  try {
    Engine::open(kModel, bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_dtype must be \"bf16\" or \"f32\", got \"fp8\""),
              std::string::npos)
        << e.what();
  }
}

TEST(ShippedModelEngine, OverlongPromptIsAClearError) {
  auto engine = Engine::open(kModel, {.threads = 0, .context = 32});
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "word ";
  try {
    engine->generate(prompt, {}, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit the context of 32 tokens"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace ekva
