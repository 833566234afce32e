// Ragged decode attention on the GPU (Hopper, sm_90a), following the host plan of
// ops/attention_plan.h: one thread block per plan task, a log-sum-exp merge per
// (query, kv-head), and the entry scores of flagged queries added to the chunks'
// score slots after the merge (the semantics of cpu::attention and ref::attention).
//
// Two steps, so that the launches are graph-capturable:
//   1. attention_prepare() packs the plan and the chunk table into a caller-provided
//      device workspace (one host->device copy on `stream`; no allocation). It is
//      re-run whenever the plan or the chunk lists change (every decode step).
//   2. attention_run() launches the kernels on `stream`. Its launch shapes depend only
//      on the plan, so a captured graph replays correctly while the table is unchanged.
//
// Inputs and their memory:
//   p.q            DEVICE  f32 [n_queries, n_heads, head_dim] (16-byte aligned)
//   p.out          DEVICE  f32 [n_queries, n_heads, head_dim]
//   p.q_positions  HOST    [n_queries], copied into the table
//   p.q_seq        HOST    [n_queries] or nullptr, read by the plan and copied
//   p.q_scored     HOST    [n_queries] or nullptr, folded into the table
//   lists[s * n_kv_heads + h]: host vectors of KvChunk whose k, v, positions and
//                  scores are DEVICE pointers; k and v bf16 [n, head_dim], 16-byte aligned.
// Supported: head_dim 64 or 128, GQA group (n_heads / n_kv_heads) 1..8, bf16 K/V;
// anything else throws ekva::Error naming the value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <cuda_runtime.h>

#include "ops/attention_plan.h"
#include "ops/ops.h"

namespace ekva::cuda {

// Plan options that fill an H200-class GPU: several waves of blocks over all SMs.
AttentionPlanOptions attention_plan_options(int device);

// The head dim the kernel computes a head of `head_dim` with: 64 or 128, the smallest
// that holds it (0 past 128). A model with another head dim (the small reference
// checkpoints) keeps its K/V rows zero-padded to it in device memory (the device KV
// cache does), and CudaBackend pads q and unpads the output around the kernel: the
// zero columns change no dot product.
inline int64_t attention_padded_head_dim(int64_t head_dim) {
  return head_dim <= 0 ? 0 : head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 0;
}

// What attention_prepare() packed: device pointers into the workspace plus the sizes
// the launches need. A plain value; copy it freely while the workspace lives.
struct AttentionTable {
  int32_t n_queries = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  int32_t sliding_window = 0;
  int32_t n_items = 0, n_tasks = 0, n_pairs = 0;
  bool any_scored = false;
  // Packed plan and chunk table (see attention.cu for the layout).
  const void* table = nullptr;
  // Scratch: per-item partials, merged (m, l) per (query, kv-head, head), raw logits.
  float* part_m = nullptr;   // [n_items, G]   (log2 domain)
  float* part_l = nullptr;   // [n_items, G]
  float* part_o = nullptr;   // [n_items, G, head_dim], unnormalised
  float* final_m = nullptr;  // [n_pairs, G]
  float* final_l = nullptr;  // [n_pairs, G]
  float* raw = nullptr;      // logits (log2 domain) of scored items' entries
  // Byte offsets of the packed sections inside `table` (attention.cu).
  size_t off_items = 0, off_task_begin = 0, off_merge_begin = 0, off_raw_offset = 0, off_q_pos = 0,
         off_list = 0, off_list_begin = 0, off_chunk_start = 0, off_chunk_end = 0, off_chunk_k = 0,
         off_chunk_v = 0, off_chunk_pos = 0, off_chunk_scores = 0;
};

// Device bytes attention_prepare() needs for this problem and plan.
size_t attention_workspace_bytes(const AttentionParams& p,
                                 std::span<const std::vector<KvChunk>> lists,
                                 const AttentionPlan& plan);

// Checks the shapes, packs the table into `workspace` (device, >= the bytes above,
// 256-byte aligned) with one async copy on `stream`.
AttentionTable attention_prepare(const AttentionParams& p,
                                 std::span<const std::vector<KvChunk>> lists,
                                 const AttentionPlan& plan, void* workspace, size_t workspace_bytes,
                                 cudaStream_t stream);

// Launches attend, merge and (when any query is scored) the score kernel on `stream`.
// q, out: device, as AttentionParams describes them.
void attention_run(const AttentionTable& table, const float* q, float* out, cudaStream_t stream);

// Both steps.
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
               const AttentionPlan& plan, void* workspace, size_t workspace_bytes,
               cudaStream_t stream);

}  // namespace ekva::cuda
