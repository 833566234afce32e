// The forward pass's operations: one params struct per op, holding raw pointers and
// sizes (no model or framework types), and the bytes and FLOPs each call must move
// and compute, so benchmarks report bandwidth and compute rates, not only time.
// Activations are f32; weights are bf16 or f32 matrices used in place from the
// checkpoint map. Backends (ops/backend.h) implement the ops; `ref::` holds the
// scalar references every backend is tested against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/dtype.h"

namespace ekva {

// What one op call must move through memory and compute: the floor a benchmark
// compares its time against.
struct OpCost {
  double bytes = 0;
  double flops = 0;
};

// A weight matrix in the Hugging Face (PyTorch Linear) layout: [rows = out, cols = in],
// row-major. dtype is kBF16 or kF32.
struct WeightMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;

  size_t nbytes() const { return static_cast<size_t>(rows * cols) * dtype_size(dtype); }
  const std::byte* row(int64_t r) const {
    return static_cast<const std::byte*>(data) + static_cast<size_t>(r * cols) * dtype_size(dtype);
  }
};

// A run of KV entries of one (sequence, layer, kv-head) that sits contiguously in
// memory: k and v are [n, head_dim] rows of `dtype` (kBF16 or kF32); positions are
// the tokens' original positions. The plain cache hands out one chunk per (layer,
// kv-head); the compressed store hands out one per segment block.
struct KvChunk {
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* positions = nullptr;
  int64_t n = 0;
  DType dtype = DType::kF32;
  // [n] or nullptr: where attention adds each entry's probability (summed over the
  // GQA group's query heads) for the queries flagged in AttentionParams::q_scored.
  float* scores = nullptr;

  // Element i of K or V (i counts over [n, head_dim]), widened to f32.
  float k_at(int64_t i) const { return load(k, i); }
  float v_at(int64_t i) const { return load(v, i); }
  // Bytes of one entry: its K and V rows, or only K when V is read from K (MLA:
  // v == k, the values are a prefix of each key row).
  size_t entry_bytes(int64_t head_dim) const {
    return static_cast<size_t>((k != nullptr && v == k ? 1 : 2) * head_dim) * dtype_size(dtype);
  }

 private:
  float load(const void* p, int64_t i) const {
    return dtype == DType::kBF16 ? bf16_to_f32(static_cast<const uint16_t*>(p)[i])
                                 : static_cast<const float*>(p)[i];
  }
};

// out[t] = table[tokens[t]] widened to f32: out [n_tokens, table.cols].
struct EmbeddingParams {
  WeightMatrix table;
  const int32_t* tokens = nullptr;  // [n_tokens], each in [0, table.rows)
  int64_t n_tokens = 0;
  float* out = nullptr;

  OpCost cost() const;
};

// y[i, r] = sum_c x[row(i), c] * w[r, c] for i < n_rows, r < w.rows, where row(i) is
// rows[i] when rows is set (a gather: MoE experts read their tokens in place) and i
// otherwise. x rows are w.cols wide and ldx apart (0: w.cols; MLA's per-head products
// read one head's slice of each row); y rows are ldy apart (ldy >= w.rows).
struct MatmulParams {
  const float* x = nullptr;
  int64_t n_rows = 0;
  const int32_t* rows = nullptr;  // [n_rows] or nullptr
  WeightMatrix w;
  float* y = nullptr;
  int64_t ldy = 0;
  int64_t ldx = 0;

  int64_t x_stride() const { return ldx > 0 ? ldx : w.cols; }

  OpCost cost() const;  // the weights once, the activations in and out (and row ids)
};

// out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight, rows of width `width`; out may be x.
struct RmsNormParams {
  const float* x = nullptr;       // [n_rows, width]
  const float* weight = nullptr;  // [width]
  int64_t n_rows = 0;
  int64_t width = 0;
  float eps = 1e-6f;
  float* out = nullptr;  // [n_rows, width]

  OpCost cost() const;
};

// Rotates pairs (i, i + head_dim/2) of every head of x in place by position *
// inv_freq[i] (Hugging Face's rotate_half convention).
struct RopeParams {
  float* x = nullptr;                  // [n_tokens, n_heads, head_dim]
  const int32_t* positions = nullptr;  // [n_tokens]
  int64_t n_tokens = 0;
  int64_t n_heads = 0;
  int64_t head_dim = 0;
  const float* inv_freq = nullptr;  // [head_dim / 2]

  OpCost cost() const;
};

// x[r, i] += bias[i] (projection biases).
struct AddBiasParams {
  float* x = nullptr;           // [n_rows, width]
  const float* bias = nullptr;  // [width]
  int64_t n_rows = 0;
  int64_t width = 0;

  OpCost cost() const;
};

// x[i] = clamp(x[i], -limit, limit) (OLMoE's clip_qkv).
struct ClampParams {
  float* x = nullptr;  // [n]
  int64_t n = 0;
  float limit = 0;

  OpCost cost() const;
};

// x[i] += y[i] (the residual stream).
struct AddParams {
  float* x = nullptr;        // [n]
  const float* y = nullptr;  // [n]
  int64_t n = 0;

  OpCost cost() const;
};

// gate[i] = silu(gate[i]) * up[i] (SwiGLU).
struct SiluMulParams {
  float* gate = nullptr;      // [n]
  const float* up = nullptr;  // [n]
  int64_t n = 0;

  OpCost cost() const;
};

// The most experts a router may choose from (the CPU and CUDA route ops' limit).
constexpr int kMaxRoutedExperts = 512;

// How a router turns logits into scores: softmax over the experts, or each expert's
// sigmoid (DeepSeek-V3).
enum class RouterScoring { kSoftmax, kSigmoid };
// How a group of experts is ranked for group-limited routing: by its best expert's
// score (DeepSeek-V2 group_limited_greedy) or the sum of its best two (DeepSeek-V3 noaux_tc).
enum class GroupScore { kMax, kTop2Sum };

// Router: scores of the experts in f32 (softmax, or sigmoid), then the top_k by
// score (ties to the lower expert id, as torch.topk does in practice). Experts come
// out in rank order. Optional, for DeepSeek:
//  - selection_bias is added to the scores for choosing only (the weights are the
//    unbiased scores of the chosen experts);
//  - with n_groups > 1 the experts form n_groups equal groups; only the top_groups
//    groups by group_score (over the biased scores) are eligible, the scores of the
//    others count as 0 for the choice (transformers' masked_fill(..., 0.0));
//  - the weights are renormalised to sum 1 when `renormalize` (plus 1e-20 for a
//    sigmoid, as transformers does), then multiplied by `scale`.
// Ranks among the chosen experts follow the biased score.
struct RouteParams {
  const float* logits = nullptr;  // [n_tokens, n_experts]
  int64_t n_tokens = 0;
  int n_experts = 0;
  int top_k = 0;
  bool renormalize = false;
  int32_t* experts = nullptr;  // [n_tokens, top_k]
  float* weights = nullptr;    // [n_tokens, top_k]
  RouterScoring scoring = RouterScoring::kSoftmax;
  const float* selection_bias = nullptr;  // [n_experts] or nullptr
  int n_groups = 1;
  int top_groups = 1;
  GroupScore group_score = GroupScore::kMax;
  float scale = 1.f;

  // The plain rule of Mixtral, Qwen and OLMoE (what the CUDA route op implements).
  bool is_plain_softmax() const {
    return scoring == RouterScoring::kSoftmax && selection_bias == nullptr && n_groups == 1 &&
           scale == 1.f;
  }
  OpCost cost() const;
};

// dst[r * dst_stride + i] = src[r * src_stride + i] for r < n_rows, i < width: moves
// pieces of rows between buffers of different layouts (MLA's rope and latent parts).
struct CopyRowsParams {
  const float* src = nullptr;
  int64_t src_stride = 0;
  float* dst = nullptr;
  int64_t dst_stride = 0;
  int64_t n_rows = 0;
  int64_t width = 0;

  OpCost cost() const;
};

// out[rows[i]] += weights[i] * y[i] for i < n (an expert's outputs back to their
// tokens); rows may repeat only across calls, never within one.
struct ScatterAddParams {
  float* out = nullptr;            // [*, width]
  const float* y = nullptr;        // [n, width]
  const int32_t* rows = nullptr;   // [n]
  const float* weights = nullptr;  // [n]
  int64_t n = 0;
  int64_t width = 0;

  OpCost cost() const;
};

// out[t] += sigmoid(gate_logits[t]) * y[t] (Qwen2-MoE's shared-expert gate).
struct GatedAddParams {
  float* out = nullptr;                // [n_rows, width]
  const float* y = nullptr;            // [n_rows, width]
  const float* gate_logits = nullptr;  // [n_rows]
  int64_t n_rows = 0;
  int64_t width = 0;

  OpCost cost() const;
};

// Causal grouped-query attention of a batch of query tokens, each over the KV
// entries of its own sequence and kv-head (chunks[seq * n_kv_heads + kv_head]) whose
// position is <= the query's and inside the window. Work item = (query, kv-head,
// piece of entries): the query heads of a GQA group are computed together so each
// K/V row is read once; pieces of long caches are merged by log-sum-exp (split-K),
// so a decode step uses every thread.
struct AttentionParams {
  int64_t n_queries = 0;  // tokens of the whole batch
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.f;
  int64_t sliding_window = 0;            // 0: none; else keys with q_pos - k_pos < window
  const float* q = nullptr;              // [n_queries, n_heads, head_dim]
  const int32_t* q_positions = nullptr;  // [n_queries]
  float* out = nullptr;                  // [n_queries, n_heads, value_dim()]
  const int32_t* q_seq = nullptr;        // [n_queries] sequence of each query; nullptr: all 0
  int64_t n_seqs = 1;
  // [n_queries] or nullptr: 1 where the query's attention probabilities (after the
  // log-sum-exp merge of all pieces) are added to its chunks' score slots, in the
  // same pass; the policies' scores come from here, not from a second pass.
  const uint8_t* q_scored = nullptr;
  // Width of a value row; 0: head_dim. When v_dim < head_dim the values are the first
  // v_dim elements of each K row and the chunks' v pointers equal k (MLA: K = [c |
  // k_rope], V = c), so nothing is stored twice.
  int64_t v_dim = 0;

  // What the call must move and compute over `chunks` (one list per (sequence,
  // kv-head), as for the call), counting only the entries each query sees (causal
  // mask, sliding window). Bytes: every entry that some query of its sequence sees,
  // once per call (K and V rows in their stored dtype, and its position, read for the
  // mask): the queries of a prefill chunk share those reads; plus the queries in and
  // the output out (f32), plus a score slot read and written per entry when a query of
  // the sequence is scored. FLOPs: 4 * head_dim per (query head, entry it sees), q.k
  // and p.v; the softmax's exponentials are not counted.
  OpCost cost(std::span<const std::vector<KvChunk>> chunks) const;
  // The same from the chunks' sizes alone, for chunks whose positions the host cannot
  // read (a GPU's cache): each sequence's queries are taken to be its newest entries
  // (a cache appends a call's tokens before attention runs) and every other entry
  // older than them. Equal to cost() for such caches without a sliding window; with
  // one it counts the entries the window hides.
  OpCost cost_from_sizes(std::span<const std::vector<KvChunk>> chunks) const;
  int64_t value_dim() const { return v_dim > 0 ? v_dim : head_dim; }
};

// The attention cost of totals rather than chunk lists (what cost(chunks) computes,
// and what a planner computes for a cache that does not exist yet): `seen_entries`
// (query, kv-head, entry) triples in which a query sees an entry; `read_bytes` of K, V
// and positions of the entries read; `scored_entries` of them whose score slot is
// updated.
OpCost attention_cost(const AttentionParams& p, double seen_entries, double read_bytes,
                      double scored_entries = 0);

namespace ref {
// Scalar references: plain loops, double accumulation where sums are long.
void embedding(const EmbeddingParams& p);
void matmul(const MatmulParams& p);
void rmsnorm(const RmsNormParams& p);
void rope(const RopeParams& p);
void add_bias(const AddBiasParams& p);
void clamp(const ClampParams& p);
void add(const AddParams& p);
void silu_mul(const SiluMulParams& p);
void route(const RouteParams& p);
void scatter_add(const ScatterAddParams& p);
void gated_add(const GatedAddParams& p);
void copy_rows(const CopyRowsParams& p);
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks);
}  // namespace ref

}  // namespace ekva
