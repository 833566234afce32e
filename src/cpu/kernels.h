// The CPU backend's op implementations (Highway SIMD, threads of the backend's
// pool); CpuBackend (cpu/cpu_backend.h) exposes them through the Backend interface.
#pragma once

#include <span>
#include <vector>

#include "ops/attention_plan.h"
#include "ops/ops.h"

namespace ekva {
class ThreadPool;
}

namespace ekva::cpu {

// Decode streams each weight row once per thread; prefill reuses each weight tile
// for blocks of 4 rows of x (cpu/matmul.cpp).
void matmul(const MatmulParams& p, ThreadPool& pool);
// Bytes ahead the decode GEMV prefetches each weight row in software: 4096 on Intel
// hosts (whose per-core streams need it), 0 elsewhere (AMD's hardware prefetchers do
// better alone); the environment variable EKVA_GEMV_PREFETCH overrides it (0..1 MiB).
int64_t gemv_prefetch_bytes();
// The scratch of attention, kept by the caller from call to call (the CPU backend
// owns one). Its buffers only grow: once they have reached the largest problem seen,
// a call allocates nothing (vector resize and assign within capacity do not).
struct AttentionWorkspace {
  AttentionPlan plan;                   // the plan of the forms that plan themselves
  std::vector<float> part_m, part_l;    // [n_items, G] per-item maxima and sums
  std::vector<float> part_o;            // [n_items, G, head_dim] unnormalised outputs
  std::vector<int64_t> raw_begin;       // [n_items + 1] offsets into raw
  std::vector<float> raw;               // [G, item length] logits per item of a scored query
  std::vector<float> final_m, final_l;  // [n_queries, n_kv_heads, G] merged, for the scores
};

// Split-K GQA attention over the chunks of every (sequence, kv-head), one pool share
// per task of the plan (cpu/attention.cpp); without a plan, one is made with
// attention_plan_options(pool) (into the workspace's, when one is given). The forms
// without a workspace use a fresh one (they allocate).
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               const AttentionPlan& plan, ThreadPool& pool, AttentionWorkspace& workspace);
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               ThreadPool& pool, AttentionWorkspace& workspace);
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               const AttentionPlan& plan, ThreadPool& pool);
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               ThreadPool& pool);
AttentionPlanOptions attention_plan_options(const ThreadPool& pool);

void embedding(const EmbeddingParams& p);
void rmsnorm(const RmsNormParams& p, ThreadPool& pool);
void rope(const RopeParams& p, ThreadPool& pool);
void add_bias(const AddBiasParams& p);
void clamp(const ClampParams& p);
void add(const AddParams& p);
void silu_mul(const SiluMulParams& p);
void route(const RouteParams& p);
void scatter_add(const ScatterAddParams& p);
void gated_add(const GatedAddParams& p);
void copy_rows(const CopyRowsParams& p);

}  // namespace ekva::cpu
