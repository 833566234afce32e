#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "core/error.h"
#include "core/thread_pool.h"

namespace ekva {

namespace {

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const RopeConfig& r = c.rope;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(r.theta), 2.0 * i / c.head_dim);
    if (r.type == "linear") {
      f /= r.factor;
    } else if (r.type == "llama3") {
      // transformers' _compute_llama3_parameters: long wavelengths are slowed by
      // `factor`, short ones kept, the band between blended smoothly.
      const double low_wavelen = r.original_max_position / r.low_freq_factor;
      const double high_wavelen = r.original_max_position / r.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= r.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (r.original_max_position / wavelen - r.low_freq_factor) /
                              (r.high_freq_factor - r.low_freq_factor);
        f = (1.0 - smooth) * f / r.factor + smooth * f;
      }
    }
    inv[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv;
}

void add_bias(float* x, const std::vector<float>& bias, int64_t n_rows) {
  if (bias.empty()) return;
  const auto w = static_cast<int64_t>(bias.size());
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t i = 0; i < w; ++i) x[r * w + i] += bias[static_cast<size_t>(i)];
}

void embedding_row(const WeightMatrix& e, int32_t token, float* out) {
  const std::byte* row = e.row(token);
  if (e.dtype == DType::kBF16) {
    for (int64_t i = 0; i < e.cols; ++i) {
      uint16_t h;
      std::memcpy(&h, row + 2 * i, 2);
      out[i] = bf16_to_f32(h);
    }
  } else {
    std::memcpy(out, row, sizeof(float) * static_cast<size_t>(e.cols));
  }
}

// Router: softmax over all experts in f32, then the top-k by probability (ties to
// the lower expert id, as torch.topk on CPU/GPU does in practice), renormalised when
// the architecture says so.
void route(const float* logits, const RouterRule& rule, int32_t* experts, float* weights) {
  const int E = rule.n_experts;
  std::vector<float> prob(static_cast<size_t>(E));
  float max_logit = logits[0];
  for (int e = 1; e < E; ++e) max_logit = std::max(max_logit, logits[e]);
  float sum = 0.f;
  for (int e = 0; e < E; ++e) sum += prob[static_cast<size_t>(e)] = std::exp(logits[e] - max_logit);
  for (auto& p : prob) p /= sum;
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) order[static_cast<size_t>(e)] = e;
  std::partial_sort(order.begin(), order.begin() + rule.top_k, order.end(), [&](int32_t a, int32_t b) {
    const float pa = prob[static_cast<size_t>(a)];
    const float pb = prob[static_cast<size_t>(b)];
    return pa > pb || (pa == pb && a < b);
  });
  float top_sum = 0.f;
  for (int k = 0; k < rule.top_k; ++k) {
    experts[k] = order[static_cast<size_t>(k)];
    weights[k] = prob[static_cast<size_t>(experts[k])];
    top_sum += weights[k];
  }
  if (rule.renormalize)
    for (int k = 0; k < rule.top_k; ++k) weights[k] /= top_sum;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) fail("{}: not a model directory", dir.string());
  auto m = std::unique_ptr<Model>(new Model());
  m->config_ = ModelConfig::from_file(dir / "config.json");
  m->store_ = TensorStore::open_model_dir(dir);
  m->weights_ = ModelWeights::bind(m->config_, m->store_);
  m->rope_inv_freq_ = rope_inv_freq(m->config_);
  return m;
}

size_t Model::active_weight_bytes_per_token() const {
  const ModelConfig& c = config_;
  size_t bytes = static_cast<size_t>(c.hidden_size) * dtype_size(weights_.embed.dtype) +
                 weights_.lm_head.nbytes();
  const auto mlp_bytes = [](const MlpWeights& m) {
    return m.gate.nbytes() + m.up.nbytes() + m.down.nbytes();
  };
  for (const LayerWeights& L : weights_.layers) {
    bytes += L.q.nbytes() + L.k.nbytes() + L.v.nbytes() + L.o.nbytes();
    if (L.mlp) bytes += mlp_bytes(*L.mlp);
    if (!L.experts.empty()) {
      bytes += L.router.nbytes() + mlp_bytes(L.experts[0]) * static_cast<size_t>(c.router.top_k);
    }
    if (L.shared_expert) bytes += mlp_bytes(*L.shared_expert) + L.shared_expert_gate.nbytes();
  }
  return bytes;
}

// Per-call activations. Shapes in comments; T = tokens in this call.
struct Model::Scratch {
  int64_t n_tokens = 0;
  std::vector<int32_t> positions;  // [T]
  std::vector<float> x;            // [T, hidden] residual stream
  std::vector<float> xn;           // [T, hidden] normed input of the current block
  std::vector<float> q;            // [T, n_heads * head_dim]
  std::vector<float> k, v;         // [T, n_kv_heads * head_dim]
  std::vector<float> attn;         // [T, n_heads * head_dim]
  std::vector<float> out;          // [T, hidden] block output added to x
  std::vector<std::vector<KvChunk>> chunks;  // [n_kv_heads]
};

ForwardCounters Model::forward(std::span<const int32_t> tokens, KvCache& cache,
                               std::vector<float>& logits, bool all_logits, ThreadPool& pool,
                               const ForwardObserver* observer) const {
  const ModelConfig& c = config_;
  const auto T = static_cast<int64_t>(tokens.size());
  EKVA_CHECK(T > 0, "forward: no tokens");
  const int64_t pos0 = cache.length();
  if (pos0 + T > c.max_position_embeddings)
    fail("sequence of {} tokens exceeds the model's context of {} (max_position_embeddings)",
         pos0 + T, c.max_position_embeddings);
  const int64_t H = c.hidden_size;
  ForwardCounters counters;

  Scratch s;
  s.n_tokens = T;
  s.positions.resize(static_cast<size_t>(T));
  s.x.resize(static_cast<size_t>(T * H));
  s.xn.resize(static_cast<size_t>(T * H));
  s.q.resize(static_cast<size_t>(T * c.q_dim()));
  s.k.resize(static_cast<size_t>(T * c.kv_dim()));
  s.v.resize(static_cast<size_t>(T * c.kv_dim()));
  s.attn.resize(static_cast<size_t>(T * c.q_dim()));
  s.out.resize(static_cast<size_t>(T * H));
  s.chunks.resize(static_cast<size_t>(c.n_kv_heads));

  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = tokens[static_cast<size_t>(t)];
    if (id < 0 || id >= c.vocab_size) fail("token id {} is outside the vocabulary (0..{})", id, c.vocab_size - 1);
    s.positions[static_cast<size_t>(t)] = static_cast<int32_t>(pos0 + t);
    embedding_row(weights_.embed, id, &s.x[static_cast<size_t>(t * H)]);
  }
  counters.weight_bytes += static_cast<size_t>(T * H) * dtype_size(weights_.embed.dtype);

  for (int layer = 0; layer < c.n_layers; ++layer) {
    attention_block(layer, s, cache, pool, observer, counters);
    moe_block(layer, s, cache, pool, observer, counters);
    if (observer && observer->tensor) observer->tensor("hidden", layer, s.x.data(), T, H);
  }

  cache.end_forward();

  // Final norm and LM head, only for the rows the caller wants.
  const int64_t first = all_logits ? 0 : T - 1;
  const int64_t n_out = T - first;
  rmsnorm(&s.x[static_cast<size_t>(first * H)], weights_.final_norm.data(), n_out, H,
          c.rms_norm_eps, s.xn.data());
  logits.resize(static_cast<size_t>(n_out * c.vocab_size));
  matmul(s.xn.data(), n_out, weights_.lm_head, logits.data(), c.vocab_size, pool);
  counters.weight_bytes += weights_.lm_head.nbytes();
  return counters;
}

void Model::attention_block(int layer, Scratch& s, KvCache& cache, ThreadPool& pool,
                            const ForwardObserver* observer, ForwardCounters& counters) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[static_cast<size_t>(layer)];
  const int64_t T = s.n_tokens;
  const int64_t H = c.hidden_size;
  const auto observe = [&](std::string_view name, const std::vector<float>& a, int64_t width) {
    if (observer && observer->tensor) observer->tensor(name, layer, a.data(), T, width);
  };

  rmsnorm(s.x.data(), L.input_norm.data(), T, H, c.rms_norm_eps, s.xn.data());
  observe("attn_norm", s.xn, H);
  matmul(s.xn.data(), T, L.q, s.q.data(), c.q_dim(), pool);
  matmul(s.xn.data(), T, L.k, s.k.data(), c.kv_dim(), pool);
  matmul(s.xn.data(), T, L.v, s.v.data(), c.kv_dim(), pool);
  counters.weight_bytes += L.q.nbytes() + L.k.nbytes() + L.v.nbytes() + L.o.nbytes();
  add_bias(s.q.data(), L.q_bias, T);
  add_bias(s.k.data(), L.k_bias, T);
  add_bias(s.v.data(), L.v_bias, T);
  if (c.qk_norm) {  // OLMoE: over the whole projection, before splitting into heads
    rmsnorm(s.q.data(), L.q_norm.data(), T, c.q_dim(), c.rms_norm_eps, s.q.data());
    rmsnorm(s.k.data(), L.k_norm.data(), T, c.kv_dim(), c.rms_norm_eps, s.k.data());
  }
  if (c.clip_qkv > 0.f) {
    for (auto* a : {&s.q, &s.k, &s.v})
      for (float& x : *a) x = std::clamp(x, -c.clip_qkv, c.clip_qkv);
  }
  rope(s.q.data(), s.positions.data(), T, c.n_heads, c.head_dim, rope_inv_freq_.data());
  rope(s.k.data(), s.positions.data(), T, c.n_kv_heads, c.head_dim, rope_inv_freq_.data());
  observe("q", s.q, c.q_dim());
  observe("k", s.k, c.kv_dim());
  observe("v", s.v, c.kv_dim());

  cache.append(layer, s.positions, s.k.data(), s.v.data());
  cache.observe_queries(layer, s.positions, s.q.data());
  for (int h = 0; h < c.n_kv_heads; ++h) {
    auto& list = s.chunks[static_cast<size_t>(h)];
    list.clear();
    cache.view(layer, h, list);
    for (const KvChunk& ch : list) counters.kv_bytes += static_cast<size_t>(ch.n * c.head_dim) * 2 * sizeof(float);
  }
  AttentionParams p;
  p.n_queries = T;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = c.head_dim;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.sliding_window = c.sliding_window;
  p.q = s.q.data();
  p.q_positions = s.positions.data();
  p.out = s.attn.data();
  attention(p, s.chunks, pool);
  observe("attn_out", s.attn, c.q_dim());

  matmul(s.attn.data(), T, L.o, s.out.data(), H, pool);
  add_bias(s.out.data(), L.o_bias, T);
  for (int64_t i = 0; i < T * H; ++i) s.x[static_cast<size_t>(i)] += s.out[static_cast<size_t>(i)];
}

namespace {

// out[i] = down(silu(gate(x[rows[i]])) * up(x[rows[i]])) for a gathered set of rows.
void swiglu(const MlpWeights& m, const float* x, std::span<const int32_t> rows, float* out,
            std::vector<float>& gate, std::vector<float>& up, ThreadPool& pool) {
  const auto n = static_cast<int64_t>(rows.size());
  const int64_t I = m.gate.rows;
  gate.resize(static_cast<size_t>(n * I));
  up.resize(static_cast<size_t>(n * I));
  matmul_rows(x, rows, m.gate, gate.data(), pool);
  matmul_rows(x, rows, m.up, up.data(), pool);
  silu_mul(gate.data(), up.data(), n * I);
  matmul(gate.data(), n, m.down, out, m.down.rows, pool);
}

size_t mlp_bytes(const MlpWeights& m) { return m.gate.nbytes() + m.up.nbytes() + m.down.nbytes(); }

}  // namespace

void Model::moe_block(int layer, Scratch& s, KvCache& cache, ThreadPool& pool,
                      const ForwardObserver* observer, ForwardCounters& counters) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[static_cast<size_t>(layer)];
  const int64_t T = s.n_tokens;
  const int64_t H = c.hidden_size;
  const auto observe = [&](std::string_view name, const float* a, int64_t width) {
    if (observer && observer->tensor) observer->tensor(name, layer, a, T, width);
  };

  rmsnorm(s.x.data(), L.post_attn_norm.data(), T, H, c.rms_norm_eps, s.xn.data());
  observe("ffn_norm", s.xn.data(), H);
  std::vector<int32_t> all_rows(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) all_rows[static_cast<size_t>(t)] = static_cast<int32_t>(t);
  std::vector<float> gate, up, y;

  if (L.mlp) {
    swiglu(*L.mlp, s.xn.data(), all_rows, s.out.data(), gate, up, pool);
    counters.weight_bytes += mlp_bytes(*L.mlp);
  } else {
    const int E = c.router.n_experts;
    const int K = c.router.top_k;
    std::vector<float> router_logits(static_cast<size_t>(T * E));  // [T, E]
    matmul(s.xn.data(), T, L.router, router_logits.data(), E, pool);
    counters.weight_bytes += L.router.nbytes();
    observe("router_logits", router_logits.data(), E);
    std::vector<int32_t> experts(static_cast<size_t>(T * K));  // [T, K]
    std::vector<float> weights(static_cast<size_t>(T * K));    // [T, K]
    for (int64_t t = 0; t < T; ++t)
      route(&router_logits[static_cast<size_t>(t * E)], c.router, &experts[static_cast<size_t>(t * K)],
            &weights[static_cast<size_t>(t * K)]);
    if (observer && observer->routing) observer->routing(layer, experts.data(), weights.data(), T, K);
    std::vector<int32_t> top1(static_cast<size_t>(T));  // the expert tags of this layer's entries
    for (int64_t t = 0; t < T; ++t) top1[static_cast<size_t>(t)] = experts[static_cast<size_t>(t * K)];
    cache.tag(layer, s.positions, top1.data());

    // Group the tokens by expert so each expert's weights are read once per call.
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(E));
    std::vector<std::vector<float>> row_weights(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
      for (int k = 0; k < K; ++k) {
        const auto e = static_cast<size_t>(experts[static_cast<size_t>(t * K + k)]);
        rows[e].push_back(static_cast<int32_t>(t));
        row_weights[e].push_back(weights[static_cast<size_t>(t * K + k)]);
      }
    }
    std::fill(s.out.begin(), s.out.end(), 0.f);
    for (int e = 0; e < E; ++e) {
      const auto& r = rows[static_cast<size_t>(e)];
      if (r.empty()) continue;
      y.resize(r.size() * static_cast<size_t>(H));
      swiglu(L.experts[static_cast<size_t>(e)], s.xn.data(), r, y.data(), gate, up, pool);
      counters.weight_bytes += mlp_bytes(L.experts[static_cast<size_t>(e)]);
      for (size_t i = 0; i < r.size(); ++i) {
        float* dst = &s.out[static_cast<size_t>(r[i] * H)];
        const float w = row_weights[static_cast<size_t>(e)][i];
        for (int64_t j = 0; j < H; ++j) dst[j] += w * y[i * static_cast<size_t>(H) + static_cast<size_t>(j)];
      }
    }
    if (L.shared_expert) {  // Qwen2-MoE: sigmoid(gate(x)) * shared_expert(x), for every token
      y.resize(static_cast<size_t>(T * H));
      swiglu(*L.shared_expert, s.xn.data(), all_rows, y.data(), gate, up, pool);
      std::vector<float> g(static_cast<size_t>(T));
      matmul(s.xn.data(), T, L.shared_expert_gate, g.data(), 1, pool);
      counters.weight_bytes += mlp_bytes(*L.shared_expert) + L.shared_expert_gate.nbytes();
      for (int64_t t = 0; t < T; ++t) {
        const float sg = 1.f / (1.f + std::exp(-g[static_cast<size_t>(t)]));
        for (int64_t j = 0; j < H; ++j) s.out[static_cast<size_t>(t * H + j)] += sg * y[static_cast<size_t>(t * H + j)];
      }
    }
  }
  observe("ffn_out", s.out.data(), H);
  for (int64_t i = 0; i < T * H; ++i) s.x[static_cast<size_t>(i)] += s.out[static_cast<size_t>(i)];
}

}  // namespace ekva
