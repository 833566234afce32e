// The forward pass's operations on the CPU: signatures, and the bytes and FLOPs
// each call must move (so benchmarks report bandwidth, not only time). Activations
// are f32; weights are bf16 or f32 matrices used in place from the checkpoint map.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/dtype.h"

namespace ekva {

class ThreadPool;

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

// A run of KV entries of one (layer, kv-head) that sits contiguously in memory:
// k and v are [n, head_dim] f32 rows; positions are the tokens' original positions.
// The plain cache hands out one chunk per (layer, kv-head); the compressed store
// hands out one per segment block.
struct KvChunk {
  const float* k = nullptr;
  const float* v = nullptr;
  const int32_t* positions = nullptr;
  int64_t n = 0;
};

// y[t, r] = sum_c x[t, c] * w[r, c] for t < n_tokens: x [n_tokens, w.cols], y
// [n_tokens, ldy] (r < w.rows). Threads split the rows of w.
void matmul(const float* x, int64_t n_tokens, const WeightMatrix& w, float* y, int64_t ldy,
            ThreadPool& pool);
// The same over a subset of x's rows: y[i] = w · x[rows[i]] (MoE experts in prefill
// gather their tokens this way).
void matmul_rows(const float* x, std::span<const int32_t> rows, const WeightMatrix& w, float* y,
                 ThreadPool& pool);

// out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * weight, rows of width `width`.
void rmsnorm(const float* x, const float* weight, int64_t n_rows, int64_t width, float eps,
             float* out);

// Rotates pairs (i, i + head_dim/2) of every head of x [n_tokens, n_heads, head_dim]
// in place by position * inv_freq[i] (Hugging Face's rotate_half convention).
void rope(float* x, const int32_t* positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
          const float* inv_freq);

// gate[i] = silu(gate[i]) * up[i].
void silu_mul(float* gate, const float* up, int64_t n);

struct AttentionParams {
  int64_t n_queries = 0;  // tokens
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.f;
  int64_t sliding_window = 0;       // 0: none; else keys with q_pos - k_pos < window
  const float* q = nullptr;         // [n_queries, n_heads, head_dim]
  const int32_t* q_positions = nullptr;  // [n_queries]
  float* out = nullptr;             // [n_queries, n_heads, head_dim]
};

// Causal grouped-query attention of each query over the KV entries of its kv-head
// (chunks[kv_head]) whose position is <= the query's and inside the window. One
// work item = (query, kv-head, piece of entries): all query heads of the GQA group
// are computed together so each K/V row is read once; pieces of long caches are
// merged by log-sum-exp (split-K), so decode uses every thread.
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               ThreadPool& pool);

namespace ref {
// Scalar references the optimised ops are tested against.
void matmul(const float* x, int64_t n_tokens, const WeightMatrix& w, float* y, int64_t ldy);
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks);
}  // namespace ref

}  // namespace ekva
