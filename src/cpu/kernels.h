// The CPU backend's op implementations (Highway SIMD, threads of the backend's
// pool); CpuBackend (cpu/cpu_backend.h) exposes them through the Backend interface.
#pragma once

#include <span>
#include <vector>

#include "ops/ops.h"

namespace ekva {
class ThreadPool;
}

namespace ekva::cpu {

// Decode streams each weight row once per thread; prefill reuses each weight tile
// for blocks of 4 rows of x (cpu/matmul.cpp).
void matmul(const MatmulParams& p, ThreadPool& pool);
// Split-K GQA attention over the chunks of every (sequence, kv-head) (cpu/attention.cpp).
void attention(const AttentionParams& p, std::span<const std::vector<KvChunk>> chunks,
               ThreadPool& pool);

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

}  // namespace ekva::cpu
