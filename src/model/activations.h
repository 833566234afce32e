// The activations of one forward call over a batch, allocated once in the backend's
// memory for a maximum batch (sequences) and step (tokens), never per step. T is the
// number of tokens in a call (all sequences' tokens, concatenated in batch order).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "ops/backend.h"

namespace ekva {

struct ForwardLimits {
  int max_sequences = 1;     // sequences in one call
  int64_t max_tokens = 512;  // tokens in one call (prefill chunks + decode tokens)
  // Rows of logits one call may return (a sequence asking for all of its tokens'
  // logits counts each); 0: max_sequences.
  int64_t max_logit_rows = 0;
};

struct Activations {
  Activations(const ModelConfig& config, Backend& backend, ForwardLimits limits);

  ForwardLimits limits;
  int64_t max_expert_rows = 0;  // rows an FFN may see at once (max_tokens)

  BackendBuffer<int32_t> tokens;     // [T]
  BackendBuffer<int32_t> positions;  // [T]
  BackendBuffer<int32_t> seq;        // [T] index of each token's sequence in the batch
  BackendBuffer<uint8_t>
      q_scored;  // [T] 1: attention adds this query's probabilities to the entries' scores
  BackendBuffer<float> x;                   // [T, hidden] residual stream
  BackendBuffer<float> xn;                  // [T, hidden] normed input of the current block
  BackendBuffer<float> q;                   // [T, n_heads * head_dim]
  BackendBuffer<float> k, v;                // [T, n_kv_heads * head_dim]
  BackendBuffer<float> attn;                // [T, n_heads * head_dim]
  BackendBuffer<float> out;                 // [T, hidden] block output added to x
  BackendBuffer<float> router_logits;       // [T, n_experts]
  BackendBuffer<int32_t> experts;           // [T, top_k] routed experts, rank order
  BackendBuffer<float> expert_weights;      // [T, top_k]
  BackendBuffer<int32_t> top1;              // [T] the expert tags of this layer's entries
  BackendBuffer<int32_t> expert_rows;       // [T * top_k] token rows grouped by expert
  BackendBuffer<float> expert_row_weights;  // [T * top_k] their routing weights
  BackendBuffer<float> gate, up;            // [T, max intermediate] SwiGLU of one FFN
  BackendBuffer<float> ffn_out;             // [T, hidden] one FFN's output rows
  BackendBuffer<float> shared_gate;         // [T] shared-expert gate logits
  BackendBuffer<int32_t> logit_rows;        // [max_logit_rows] token rows the LM head reads
  BackendBuffer<float> final_xn;            // [max_logit_rows, hidden]
  BackendBuffer<float> logits;              // [max_logit_rows, vocab]
  // Host copies of what the host writes or reads between ops: the forward pass lays
  // the batch out and groups tokens per expert here and uploads the result (for a
  // host backend the upload is a memcpy), and reads the routing back from the
  // device. Sized like the buffers above.
  struct Host {
    std::vector<int32_t> tokens, positions, seq, logit_rows;
    std::vector<uint8_t> q_scored;
    std::vector<int32_t> experts, top1, expert_rows;
    std::vector<float> expert_weights, expert_row_weights;
    std::vector<float> logits;    // [max_logit_rows, vocab], backends of device memory only
    std::vector<float> observed;  // a tensor downloaded for a ForwardObserver
  } host;
  bool device = false;  // the buffers are in device memory (not host_memory())
  // The last call's logits in host memory: rows logit_begin[i] .. logit_begin[i + 1]
  // of [max_logit_rows, vocab] for batch entry i.
  const float* host_logits() const { return device ? host.logits.data() : logits.data(); }

  // MLA only (empty otherwise): q = [T, n_heads, latent] is the query in latent space,
  // k = [T, latent] the cache entry [c | k_rope], attn = [T, n_heads, kv_lora_rank].
  BackendBuffer<float> mla_q_a;     // [T, q_lora_rank] the query LoRA's down-projection
  BackendBuffer<float> mla_q;       // [T, n_heads, qk_nope + qk_rope] the projected query
  BackendBuffer<float> mla_q_rope;  // [T, n_heads, qk_rope] the query's rope part, rotated
  BackendBuffer<float> mla_c;       // [T, kv_lora_rank] the normed latent
  BackendBuffer<float> mla_k_rope;  // [T, qk_rope] the shared rope key, rotated
  BackendBuffer<float> mla_v;       // [T, n_heads * v_head_dim] the values, o_proj's input
  // Host metadata of the last call, reused across calls. Batch entry i's tokens
  // are rows token_begin[i] .. token_begin[i + 1]; its logits are rows
  // logit_begin[i] .. logit_begin[i + 1] of `logits`.
  std::vector<int64_t> token_begin;          // [batch + 1]
  std::vector<int64_t> logit_begin;          // [batch + 1]
  std::vector<int64_t> expert_begin;         // [n_experts + 1] into expert_rows
  std::vector<std::vector<KvChunk>> chunks;  // [batch * n_kv_heads] the current layer's views
};

}  // namespace ekva
