// The scheduler (continuous batching) on the shipped model: sequences that join
// and leave a running batch, with chunked prompts sharing steps with decode tokens,
// generate exactly what each generates alone (greedy); cancellation; bad input
// that leaves the other sequences untouched; the forward's batch limits.
#include <gtest/gtest.h>

#include <map>

#include "ekva/ekva.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "test_util.h"

namespace ekva {
namespace {

using test::expect_error;

const std::filesystem::path kModel =
    std::filesystem::path(EKVA_SOURCE_DIR) / "models/ekva-moe-tiny";

const std::vector<std::string> kPrompts = {
    "The kernel",
    "Debian is a free operating system that",
    "In the beginning the Universe was created. This has made a lot of people very angry and been "
    "widely "
    "regarded as a bad move. The package manager",
    "#include <stdio.h>\nint main(void) {",
    "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans:",
};

GenerateOptions options(int n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = false;
  return o;
}

// Runs the scheduler until idle, collecting every sequence's tokens and text.
struct Outcome {
  std::vector<int32_t> tokens;
  std::string text;
  std::string stop_reason;
  bool finished = false;
};
void drain(Scheduler& s, std::map<int64_t, Outcome>& out, int max_steps = 10000) {
  for (int i = 0; i < max_steps && !s.idle(); ++i) {
    for (const SequenceUpdate& u : s.step()) {
      Outcome& o = out[u.id];
      EXPECT_FALSE(o.finished) << "update after the end of sequence " << u.id;
      o.tokens.insert(o.tokens.end(), u.tokens.begin(), u.tokens.end());
      o.text += u.text;
      if (u.finished) {
        o.finished = true;
        o.stop_reason = u.stats.stop_reason;
        EXPECT_EQ(u.stats.tokens, o.tokens);
      }
    }
  }
  EXPECT_TRUE(s.idle());
}

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EngineOptions eo;
    eo.max_step_tokens = 16;  // long prompts take several steps
    engine_ = Engine::open(kModel, eo).release();
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      const GenerateStats st =
          engine_->generate(kPrompts[i], options(static_cast<int>(6 + 3 * i)), nullptr);
      alone_.push_back(st.tokens);
    }
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  static Engine* engine_;
  static std::vector<std::vector<int32_t>> alone_;
};
Engine* SchedulerTest::engine_ = nullptr;
std::vector<std::vector<int32_t>> SchedulerTest::alone_;

TEST_F(SchedulerTest, SequencesJoiningAndLeavingMatchTheirSoloRuns) {
  // At most 3 at once, 24 tokens a step: later prompts wait, join as others
  // finish, and prefill in chunks beside the others' decode tokens.
  auto s = engine_->new_scheduler({.max_sequences = 3, .max_step_tokens = 24});
  std::map<int64_t, Outcome> out;
  std::vector<int64_t> ids;
  for (size_t i = 0; i < 3; ++i)
    ids.push_back(s->add(kPrompts[i], options(static_cast<int>(6 + 3 * i))));
  for (int i = 0; i < 3; ++i) {
    for (const SequenceUpdate& u : s->step()) {
      out[u.id].tokens.insert(out[u.id].tokens.end(), u.tokens.begin(), u.tokens.end());
      ASSERT_FALSE(u.finished);
    }
  }
  EXPECT_EQ(s->n_running(), 3);
  for (size_t i = 3; i < kPrompts.size(); ++i)
    ids.push_back(s->add(kPrompts[i], options(static_cast<int>(6 + 3 * i))));
  EXPECT_EQ(s->n_waiting(), 2);
  drain(*s, out);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    EXPECT_EQ(out[ids[i]].tokens, alone_[i]) << "prompt " << i;
    EXPECT_EQ(out[ids[i]].stop_reason, "length");
  }
  EXPECT_EQ(s->stats().max_batch, 3);
  EXPECT_EQ(s->stats().generated_tokens, static_cast<int64_t>(6 + 9 + 12 + 15 + 18));
}

TEST_F(SchedulerTest, CancelFreesASequenceAndTheOthersGoOn) {
  auto s = engine_->new_scheduler({.max_sequences = 4, .max_step_tokens = 64});
  std::map<int64_t, Outcome> out;
  const int64_t a = s->add(kPrompts[0], options(6));
  const int64_t b = s->add(kPrompts[1], options(40));
  const int64_t c = s->add(kPrompts[2], options(12));
  for (int i = 0; i < 4; ++i) s->step();
  s->cancel(b);
  EXPECT_EQ(s->n_running(), 2);
  const auto updates = s->step();
  const auto it =
      std::find_if(updates.begin(), updates.end(), [&](const auto& u) { return u.id == b; });
  ASSERT_NE(it, updates.end());
  EXPECT_TRUE(it->finished);
  EXPECT_EQ(it->stats.stop_reason, "cancelled");
  EXPECT_GT(it->stats.kv_bytes, 0u);
  expect_error([&] { s->cancel(b); }, {"no waiting or running sequence has id"});
  s = engine_->new_scheduler({.max_sequences = 4, .max_step_tokens = 64});
  const int64_t a2 = s->add(kPrompts[0], options(6));
  const int64_t c2 = s->add(kPrompts[2], options(12));
  s->cancel(s->add(kPrompts[3], options(5)));  // cancelled while waiting
  drain(*s, out);
  EXPECT_EQ(out[a2].tokens, alone_[0]);
  EXPECT_EQ(out[c2].tokens, alone_[2]);
  (void)a, (void)c;
}

TEST_F(SchedulerTest, BadInputIsRefusedAndTheOthersAreKept) {
  auto s = engine_->new_scheduler({.max_sequences = 2, .max_step_tokens = 32});
  std::map<int64_t, Outcome> out;
  const int64_t a = s->add(kPrompts[0], options(6));
  for (const SequenceUpdate& u : s->step()) out[u.id].tokens = u.tokens;
  expect_error([&] { s->add("", options(4)); }, {"empty prompt"});
  expect_error([&] { s->add_tokens(std::vector<int32_t>{}, options(4)); },
               {"encodes to no tokens"});
  expect_error(
      [&] {
        s->add_tokens(std::vector<int32_t>{1, engine_->vocab_size()}, options(4));
      },
      {"outside the vocabulary"});
  const std::vector<int32_t> overlong(static_cast<size_t>(engine_->context()), 5);
  expect_error([&] { s->add_tokens(overlong, options(4)); }, {"does not fit the context"});
  expect_error([&] { s->add(kPrompts[1], options(-1)); }, {"max_new_tokens must be >= 0"});
  GenerateOptions hot = options(3);
  hot.sampling.top_p = 0.f;
  expect_error([&] { s->add(kPrompts[1], hot); }, {"top-p"});
  EXPECT_EQ(s->n_running() + s->n_waiting(), 1);
  drain(*s, out);
  EXPECT_EQ(out[a].tokens, alone_[0]);

  expect_error([&] { engine_->new_scheduler({.max_sequences = 0}); },
               {"max_sequences must be >= 1"});
  expect_error([&] { engine_->new_scheduler({.max_sequences = 8, .max_step_tokens = 4}); },
               {"max_step_tokens (4) must be at least max_sequences (8)"});
}

TEST_F(SchedulerTest, FinishedSequencesFreeTheirCompressedKvAtOnce) {
  EngineOptions eo;
  eo.kv.policy = "snapkv";
  eo.kv.budget = "50%";
  const auto compressed = Engine::open(kModel, eo);
  auto s = compressed->new_scheduler({.max_sequences = 4, .max_step_tokens = 256});
  const int64_t short_id = s->add(kPrompts[2], options(2));
  s->add(kPrompts[3], options(30));
  std::map<int64_t, Outcome> out;
  size_t before = 0;
  bool short_done = false;
  while (!short_done) {
    before = s->stats().kv_bytes;
    for (const SequenceUpdate& u : s->step()) {
      out[u.id].tokens.insert(out[u.id].tokens.end(), u.tokens.begin(), u.tokens.end());
      short_done = short_done || (u.id == short_id && u.finished);
    }
  }
  // The step that retired the short sequence also dropped its bytes; the other one
  // grew by at most one token.
  EXPECT_GT(before, 0u);
  EXPECT_LT(s->stats().kv_bytes, before);
  EXPECT_EQ(s->n_running(), 1);
  drain(*s, out);
  EXPECT_EQ(s->stats().kv_bytes, 0u);
}

TEST_F(SchedulerTest, StopsAtTheContext) {
  EngineOptions eo;
  eo.context = 24;
  const auto small = Engine::open(kModel, eo);
  auto s = small->new_scheduler();
  std::map<int64_t, Outcome> out;
  const int64_t id = s->add(kPrompts[1], options(100));
  drain(*s, out);
  EXPECT_EQ(out[id].stop_reason, "context");
  // The last token is sampled from the logits of the context's last position.
  EXPECT_EQ(static_cast<int64_t>(small->encode(kPrompts[1]).size() + out[id].tokens.size()),
            24 + 1);
}

TEST(ForwardLimits, BatchesBeyondTheLimitsAreErrors) {
  const auto model = Model::load(kModel);
  const ModelConfig& c = model->config();
  Activations act(c, test::cpu(), {.max_sequences = 2, .max_tokens = 8});
  std::vector<std::unique_ptr<FullKvCache>> caches;
  for (int i = 0; i < 3; ++i)
    caches.push_back(std::make_unique<FullKvCache>(kv_cache_shape(c), 64));
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5};
  std::vector<SequenceStep> batch;
  for (int i = 0; i < 3; ++i)
    batch.push_back({caches[static_cast<size_t>(i)].get(), std::span(tokens).first(1)});
  expect_error([&] { model->forward(batch, act, test::cpu()); },
               {"batch of 3 sequences exceeds the maximum of 2"});
  batch = {{caches[0].get(), tokens}, {caches[1].get(), tokens}};
  expect_error([&] { model->forward(batch, act, test::cpu()); },
               {"10 tokens in one call exceed the maximum of 8"});
  batch = {{caches[0].get(), {}}};
  expect_error([&] { model->forward(batch, act, test::cpu()); }, {"batch entry 0 has no tokens"});
  expect_error([&] { model->forward(std::span<const SequenceStep>{}, act, test::cpu()); },
               {"empty batch"});
  batch = {{caches[0].get(), tokens, /*all_logits=*/true}};
  expect_error([&] { model->forward(batch, act, test::cpu()); },
               {"rows of logits in one call exceed"});
  expect_error([&] { Activations bad(c, test::cpu(), {.max_sequences = 0}); },
               {"max_sequences must be >= 1"});
}

}  // namespace
}  // namespace ekva
