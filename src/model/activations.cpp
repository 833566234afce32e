#include "model/activations.h"

#include <algorithm>

#include "core/error.h"

namespace ekva {

Activations::Activations(const ModelConfig& c, Backend& backend, ForwardLimits l) : limits(l) {
  if (l.max_sequences < 1)
    fail("forward limits: max_sequences must be >= 1, got {}", l.max_sequences);
  if (l.max_tokens < 1) fail("forward limits: max_tokens must be >= 1, got {}", l.max_tokens);
  if (l.max_logit_rows < 0)
    fail("forward limits: max_logit_rows must be >= 0, got {}", l.max_logit_rows);
  if (l.max_logit_rows == 0) limits.max_logit_rows = l.max_sequences;
  const auto T = static_cast<size_t>(limits.max_tokens);
  const auto L = static_cast<size_t>(limits.max_logit_rows);
  const auto H = static_cast<size_t>(c.hidden_size);
  const auto E = static_cast<size_t>(std::max(c.router.n_experts, 1));
  const auto K = static_cast<size_t>(std::max(c.router.top_k, 1));
  const auto I = static_cast<size_t>(std::max(
      {c.expert_intermediate_size, c.dense_intermediate_size, c.shared_expert_intermediate_size}));
  max_expert_rows = limits.max_tokens;
  tokens = {backend, T};
  positions = {backend, T};
  seq = {backend, T};
  q_scored = {backend, T};
  x = {backend, T * H};
  xn = {backend, T * H};
  q = {backend, T * static_cast<size_t>(c.q_dim())};
  k = {backend, T * static_cast<size_t>(c.kv_dim())};
  v = {backend, T * static_cast<size_t>(c.kv_dim())};
  attn = {backend, T * static_cast<size_t>(c.q_dim())};
  out = {backend, T * H};
  router_logits = {backend, T * E};
  experts = {backend, T * K};
  expert_weights = {backend, T * K};
  top1 = {backend, T};
  expert_rows = {backend, T * K};
  expert_row_weights = {backend, T * K};
  gate = {backend, T * I};
  up = {backend, T * I};
  ffn_out = {backend, T * H};
  shared_gate = {backend, T};
  if (c.is_mla()) {
    const MlaConfig& m = c.mla;
    const auto nh = static_cast<size_t>(c.n_heads);
    mla_q_a = {backend, T * static_cast<size_t>(std::max(m.q_lora_rank, 1))};
    mla_q = {backend, T * nh * static_cast<size_t>(m.qk_head_dim())};
    mla_q_rope = {backend, T * nh * static_cast<size_t>(m.qk_rope_head_dim)};
    mla_c = {backend, T * static_cast<size_t>(m.kv_lora_rank)};
    mla_k_rope = {backend, T * static_cast<size_t>(m.qk_rope_head_dim)};
    mla_v = {backend, T * nh * static_cast<size_t>(m.v_head_dim)};
  }
  logit_rows = {backend, L};
  final_xn = {backend, L * H};
  logits = {backend, L * static_cast<size_t>(c.vocab_size)};
  device = !backend.host_memory();
  host.tokens.resize(T);
  host.positions.resize(T);
  host.seq.resize(T);
  host.q_scored.resize(T);
  host.logit_rows.resize(L);
  host.experts.resize(T * K);
  host.expert_weights.resize(T * K);
  host.top1.resize(T);
  host.expert_rows.resize(T * K);
  host.expert_row_weights.resize(T * K);
  if (device) host.logits.resize(L * static_cast<size_t>(c.vocab_size));
  token_begin.reserve(static_cast<size_t>(limits.max_sequences) + 1);
  logit_begin.reserve(static_cast<size_t>(limits.max_sequences) + 1);
  expert_begin.reserve(E + 1);
  chunks.resize(static_cast<size_t>(limits.max_sequences) * static_cast<size_t>(c.n_kv_heads));
}

}  // namespace ekva
