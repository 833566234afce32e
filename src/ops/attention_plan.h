// The work plan of one ragged attention call, made on the host and read by every
// backend: the entries of each (query, kv-head) are cut into work items of bounded
// size (long lists split), consecutive small items are packed into tasks (so a
// task is never much smaller than the bound either), and the partial results of
// each (query, kv-head) are merged by log-sum-exp over a contiguous range of items.
// The CPU runs one task per pool share; a GPU kernel one task per thread block,
// with the plan's sizes fixed so the launch can be captured in a graph.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "ops/ops.h"

namespace ekva {

struct AttentionWorkItem {
  int32_t query = 0;  // row of the batch's queries
  int32_t kv_head = 0;
  int64_t begin = 0;  // entries [begin, end) of the query's (sequence, kv-head) list,
  int64_t end = 0;    // counted over its chunks in order
};

struct AttentionPlan {
  std::vector<AttentionWorkItem> items;  // grouped by (query, kv-head), in row-major order
  // Items of (query t, kv-head h) are merge_begin[t * n_kv_heads + h] ..
  // merge_begin[t * n_kv_heads + h + 1]; item i's partial result lives in slot i.
  std::vector<int64_t> merge_begin;  // [n_queries * n_kv_heads + 1]
  // Task k runs items task_begin[k] .. task_begin[k + 1].
  std::vector<int64_t> task_begin;    // [n_tasks + 1]
  int64_t item_entries = 0;           // the bound on entries per item (and per packed task)
  std::vector<int64_t> list_entries;  // [n_seqs * n_kv_heads] entries of each list

  int64_t n_tasks() const { return static_cast<int64_t>(task_begin.size()) - 1; }
};

struct AttentionPlanOptions {
  int64_t min_tasks = 8;  // at least this many tasks when the work allows (e.g. 4 x threads)
  int64_t min_item_entries = 256;  // never cut finer: per-item overhead and merge cost
};

// Plans attention of p's queries over lists[seq * n_kv_heads + kv_head] (the chunks
// of each sequence and kv-head, as AttentionParams describes them). Every (query,
// kv-head) gets at least one item, an empty one when its list is, so that its
// output is written.
AttentionPlan plan_attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
                             const AttentionPlanOptions& options = {});
// The same plan into `plan`, whose vectors are cleared and refilled: once they have
// grown to the largest problem, planning allocates nothing (the decode path's form).
void plan_attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> lists,
                    const AttentionPlanOptions& options, AttentionPlan& plan);

}  // namespace ekva
