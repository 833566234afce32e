// The cost model of every op (ops/ops.h cost()): bytes and FLOPs against figures
// worked out by hand on small shapes, including attention over ragged runs (several
// chunks per list, bf16 and f32, positions out of order as a compressed store keeps
// them), causal prefill, a sliding window and scored queries.
#include <gtest/gtest.h>

#include <vector>

#include "ops/ops.h"

namespace ekva {
namespace {

constexpr double kF32 = 4, kI32 = 4, kBF16 = 2;

void expect_cost(const OpCost& c, double bytes, double flops) {
  EXPECT_DOUBLE_EQ(c.bytes, bytes);
  EXPECT_DOUBLE_EQ(c.flops, flops);
}

TEST(OpCost, ElementwiseOps) {
  // Embedding: 3 rows of a bf16 [10, 4] table read, widened to f32 and written; the ids.
  expect_cost(EmbeddingParams{{DType::kBF16, 10, 4, nullptr}, nullptr, 3}.cost(),
              3 * 4 * (kBF16 + kF32) + 3 * kI32, 0);
  // RMSNorm [2, 8]: x in, out out, the weight; x^2, sum, x * r * w: 4 FLOPs an element.
  expect_cost(RmsNormParams{nullptr, nullptr, 2, 8}.cost(), 2 * 8 * 2 * kF32 + 8 * kF32, 4 * 16);
  // RoPE on [2 tokens, 3 heads, 4]: read and write 24 floats; 6 FLOPs per rotated pair.
  expect_cost(RopeParams{nullptr, nullptr, 2, 3, 4}.cost(), 24 * 2 * kF32, 24 * 3);
  expect_cost(AddBiasParams{nullptr, nullptr, 3, 5}.cost(), 15 * 2 * kF32, 15);
  expect_cost(ClampParams{nullptr, 7}.cost(), 7 * 2 * kF32, 14);
  expect_cost(AddParams{nullptr, nullptr, 9}.cost(), 9 * 3 * kF32, 9);
  expect_cost(SiluMulParams{nullptr, nullptr, 6}.cost(), 6 * 3 * kF32, 30);
  // Route 5 tokens over 8 experts, top 2: the logits in, ids and weights out.
  expect_cost(RouteParams{nullptr, 5, 8, 2}.cost(), 5 * 8 * kF32 + 5 * 2 * (kI32 + kF32), 4 * 40);
  // Scatter 4 rows of 6: y in, out read and written; each row's id and weight.
  expect_cost(ScatterAddParams{nullptr, nullptr, nullptr, nullptr, 4, 6}.cost(),
              24 * 3 * kF32 + 4 * (kI32 + kF32), 48);
  expect_cost(GatedAddParams{nullptr, nullptr, nullptr, 3, 4}.cost(), 12 * 3 * kF32 + 3 * kF32, 24);
}

TEST(OpCost, MatmulAtTheTokensRoutedToAnExpert) {
  // y [5, 7] = x [5, 3] . w[7, 3]^T, bf16 weights read once however many rows.
  const WeightMatrix w{DType::kBF16, 7, 3, nullptr};
  expect_cost(MatmulParams{nullptr, 5, nullptr, w, nullptr, 7}.cost(),
              7 * 3 * kBF16 + 5 * (3 + 7) * kF32, 2 * 5 * 7 * 3);
  // An expert that gets 2 of the batch's tokens reads them in place by row id.
  const int32_t rows[2] = {4, 1};
  expect_cost(MatmulParams{nullptr, 2, rows, w, nullptr, 7}.cost(),
              7 * 3 * kBF16 + 2 * (3 + 7) * kF32 + 2 * kI32, 2 * 2 * 7 * 3);
  // Intensity grows with the tokens: 1 token ~ 1 FLOP/byte for bf16, 64 tokens far more.
  const WeightMatrix big{DType::kBF16, 256, 256, nullptr};
  const OpCost one = MatmulParams{nullptr, 1, rows, big, nullptr, 256}.cost();
  const OpCost many = MatmulParams{nullptr, 64, rows, big, nullptr, 256}.cost();
  EXPECT_NEAR(one.flops / one.bytes, 1.0, 0.05);
  EXPECT_GT(many.flops / many.bytes, 20.0);
  // f32 weights: twice the bytes.
  const WeightMatrix wf{DType::kF32, 7, 3, nullptr};
  const MatmulParams f32{nullptr, 1, nullptr, wf, nullptr, 7};
  EXPECT_DOUBLE_EQ(f32.cost().bytes, 7 * 3 * kF32 + 10 * kF32);
}

// K/V rows need no data for the cost; positions do.
KvChunk chunk(const std::vector<int32_t>& positions, DType dtype) {
  KvChunk c;
  c.positions = positions.data();
  c.n = static_cast<int64_t>(positions.size());
  c.dtype = dtype;
  return c;
}

AttentionParams params(int64_t n_queries, int64_t n_seqs, const int32_t* q_pos,
                       const int32_t* q_seq) {
  AttentionParams p;
  p.n_queries = n_queries;
  p.n_heads = 4;
  p.n_kv_heads = 2;  // GQA groups of 2
  p.head_dim = 8;
  p.q_positions = q_pos;
  p.q_seq = q_seq;
  p.n_seqs = n_seqs;
  return p;
}

TEST(OpCost, AttentionOverRaggedRunsAtDecode) {
  // Two sequences, each one decode query past every entry. Sequence 0 is bf16 with its
  // kv-head 0 in two runs (3 + 5 entries) and kv-head 1 in one (4); sequence 1 is f32,
  // 2 and 6 entries. Positions out of order, as segments of different experts keep them.
  const std::vector<int32_t> a = {7, 2, 0}, b = {1, 6, 3, 5, 4}, c = {9, 3, 0, 5};
  const std::vector<int32_t> d = {1, 0}, e = {5, 3, 4, 0, 1, 2};
  const std::vector<std::vector<KvChunk>> lists = {{chunk(a, DType::kBF16), chunk(b, DType::kBF16)},
                                                   {chunk(c, DType::kBF16)},
                                                   {chunk(d, DType::kF32)},
                                                   {chunk(e, DType::kF32)}};
  const int32_t q_pos[2] = {10, 6}, q_seq[2] = {0, 1};
  const AttentionParams p = params(2, 2, q_pos, q_seq);
  const double bf16_entry = 2 * 8 * kBF16 + kI32, f32_entry = 2 * 8 * kF32 + kI32;
  const double seen = (8 + 4) + (2 + 6);
  const double q_and_out = 2 * 4 * 8 * 2 * kF32;
  expect_cost(p.cost(lists), 12 * bf16_entry + 8 * f32_entry + q_and_out,
              seen * 2 /*group*/ * 8 * 4);
  // The totals form agrees.
  expect_cost(attention_cost(p, seen, 12 * bf16_entry + 8 * f32_entry),
              12 * bf16_entry + 8 * f32_entry + q_and_out, seen * 2 * 8 * 4);
  // So does the form from sizes alone (what a GPU's chunks allow): each query is its
  // sequence's newest entry.
  expect_cost(p.cost_from_sizes(lists), 12 * bf16_entry + 8 * f32_entry + q_and_out,
              seen * 2 * 8 * 4);
}

TEST(OpCost, AttentionCausalPrefillWindowAndScores) {
  // One sequence: a prefill chunk of 4 queries at positions 4..7 over entries 0..7 (its
  // own entries included), in runs [0..2] and [3..7], one kv-head list each.
  const std::vector<int32_t> r0 = {0, 1, 2}, r1 = {3, 4, 5, 6, 7};
  const std::vector<std::vector<KvChunk>> lists = {
      {chunk(r0, DType::kBF16), chunk(r1, DType::kBF16)},
      {chunk(r0, DType::kBF16), chunk(r1, DType::kBF16)}};
  const int32_t q_pos[4] = {4, 5, 6, 7};
  AttentionParams p = params(4, 1, q_pos, nullptr);
  const double entry = 2 * 8 * kBF16 + kI32, q_and_out = 4 * 4 * 8 * 2 * kF32;
  // Query at p sees p + 1 entries: 5 + 6 + 7 + 8 = 26 per kv-head; all 8 read once.
  expect_cost(p.cost(lists), 2 * 8 * entry + q_and_out, 2 * 26 * 2 * 8 * 4);
  // From sizes alone: the 4 queries are the newest 4 of 8 entries, the same count.
  expect_cost(p.cost_from_sizes(lists), 2 * 8 * entry + q_and_out, 2 * 26 * 2 * 8 * 4);
  // A window of 3: each query sees 3 entries; entries 2..7 are read.
  p.sliding_window = 3;
  expect_cost(p.cost(lists), 2 * 6 * entry + q_and_out, 2 * 4 * 3 * 2 * 8 * 4);
  // Scored queries: every entry read has its score slot read and written.
  p.sliding_window = 0;
  const uint8_t scored[4] = {0, 0, 0, 1};
  p.q_scored = scored;
  expect_cost(p.cost(lists), 2 * 8 * (entry + 2 * kF32) + q_and_out, 2 * 26 * 2 * 8 * 4);
  expect_cost(p.cost_from_sizes(lists), 2 * 8 * (entry + 2 * kF32) + q_and_out, 2 * 26 * 2 * 8 * 4);
}

}  // namespace
}  // namespace ekva
