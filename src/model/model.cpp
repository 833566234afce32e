#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "core/error.h"
#include "ops/backend.h"

namespace ekva {

namespace {

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int dim = c.rope_dim;  // head_dim; MLA: qk_rope_head_dim
  const int half = dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const RopeConfig& r = c.rope;
  // YaRN (transformers' _compute_yarn_parameters): the dims between the correction
  // range's ends blend interpolated (f / factor) and extrapolated (f) frequencies.
  double yarn_low = 0, yarn_high = 0;
  if (r.type == "yarn") {
    const auto correction_dim = [&](double rotations) {
      return dim * std::log(r.original_max_position / (rotations * 2 * std::numbers::pi)) /
             (2 * std::log(static_cast<double>(r.theta)));
    };
    yarn_low = correction_dim(r.beta_fast);
    yarn_high = correction_dim(r.beta_slow);
    if (r.truncate) {
      yarn_low = std::floor(yarn_low);
      yarn_high = std::ceil(yarn_high);
    }
    yarn_low = std::max(yarn_low, 0.0);
    yarn_high = std::min(yarn_high, dim - 1.0);
    if (yarn_low == yarn_high) yarn_high += 0.001;
  }
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(r.theta), 2.0 * i / dim);
    if (r.type == "yarn") {
      const double ramp = std::clamp((i - yarn_low) / (yarn_high - yarn_low), 0.0, 1.0);
      const double extrapolation = 1.0 - ramp;
      f = f / r.factor * (1.0 - extrapolation) + f * extrapolation;
    } else if (r.type == "linear") {
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
    if (L.mla) {
      bytes += L.mla->q_a.nbytes() + L.mla->q_b.nbytes() + L.mla->kv_a_c.nbytes() +
               L.mla->kv_a_rope.nbytes();
      for (const WeightMatrix& m : L.mla->uk_t) bytes += m.nbytes();
      for (const WeightMatrix& m : L.mla->uv) bytes += m.nbytes();
    }
    if (L.mlp) bytes += mlp_bytes(*L.mlp);
    if (!L.experts.empty()) {
      bytes += L.router.nbytes() + mlp_bytes(L.experts[0]) * static_cast<size_t>(c.router.top_k);
    }
    if (L.shared_expert) bytes += mlp_bytes(*L.shared_expert) + L.shared_expert_gate.nbytes();
    bytes += L.selection_bias.size() * sizeof(float);
  }
  return bytes;
}

void Model::place(Backend& backend) {
  const int domain = backend.memory_domain();
  if (domain == 0) return;
  for (const auto& p : placed_)
    if (p->memory_domain == domain) return;
  try {
    placed_.push_back(place_weights(weights_, rope_inv_freq_, backend));
  } catch (const Error& e) {
    size_t total = 0;
    weights_.for_each([&](auto& t) { total += t.nbytes(); });
    fail("placing the model's weights ({:.1f} MiB) on {}: {}", total / 1048576.0, backend.name(),
         e.what());
  }
}

const ModelWeights& Model::weights_for(int memory_domain) const {
  if (memory_domain == 0) return weights_;
  for (const auto& p : placed_)
    if (p->memory_domain == memory_domain) return p->weights;
  fail("forward: the weights are not in the backend's memory (domain {}): call Model::place first",
       memory_domain);
}

// The batch of one call, as the blocks see it.
struct Model::Step {
  std::span<const SequenceStep> batch;
  int64_t n_tokens = 0;             // T
  const ModelWeights* w = nullptr;  // in the backend's memory
  const float* rope_inv_freq = nullptr;
  const ForwardObserver* observer = nullptr;

  // Hands a tensor of the backend's memory to the observer (downloaded first when
  // the backend's memory is a device's).
  void observe(std::string_view name, int layer, const float* x, int64_t rows, int64_t width,
               Activations& a, Backend& backend) const {
    if (observer == nullptr || !observer->tensor) return;
    if (a.device) {
      a.host.observed.resize(static_cast<size_t>(rows * width));
      backend.download(a.host.observed.data(), x, a.host.observed.size() * sizeof(float));
      x = a.host.observed.data();
    }
    observer->tensor(name, layer, x, rows, width);
  }
  // y = x w^T (+ bias) over the step's tokens: a projection of the attention blocks.
  void project(const OpSite& site, const WeightMatrix& m, const WeightVector& bias, const float* x,
               float* y, Backend& backend, ForwardCounters& counters) const {
    backend.at(site).matmul({x, n_tokens, nullptr, m, y, m.rows});
    if (!bias.empty()) backend.at(site).add_bias({y, bias.data(), n_tokens, m.rows});
    counters.weight_bytes += m.nbytes();
  }
};

// One layer's observer, op sites and projections, bound to the call: what the
// attention and MLA blocks both name their ops through.
struct Model::LayerOps {
  const Step& s;
  int layer;
  Activations& a;
  Backend& backend;
  ForwardCounters& counters;

  void observe(std::string_view name, const float* x, int64_t width) const {
    s.observe(name, layer, x, s.n_tokens, width, a, backend);
  }
  Backend& at(const char* name) const { return backend.at({name, layer}); }
  void project(const char* name, const WeightMatrix& w, const WeightVector& bias, const float* x,
               float* y) const {
    s.project({name, layer}, w, bias, x, y, backend, counters);
  }
};

ForwardCounters Model::forward(std::span<const SequenceStep> batch, Activations& a,
                               Backend& backend, const ForwardObserver* observer) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size;
  const auto B = static_cast<int64_t>(batch.size());
  if (B == 0) fail("forward: empty batch");
  if (B > a.limits.max_sequences)
    fail("forward: batch of {} sequences exceeds the maximum of {}", B, a.limits.max_sequences);

  // Lay the batch out: token rows, positions, sequence index, logit rows.
  Activations::Host& h = a.host;
  const int domain = backend.memory_domain();
  a.token_begin.assign(1, 0);
  a.logit_begin.assign(1, 0);
  for (int64_t i = 0; i < B; ++i) {
    const SequenceStep& st = batch[static_cast<size_t>(i)];
    EKVA_CHECK(st.cache != nullptr, "forward: batch entry {} has no KV cache", i);
    if (st.cache->memory_domain() != domain)
      fail(
          "forward: the KV cache of batch entry {} is in {} memory, the backend ({}) computes in "
          "{}",
          i, st.cache->memory_domain() == 0 ? "host" : "device", backend.name(),
          domain == 0 ? "host memory" : "device memory");
    const auto n = static_cast<int64_t>(st.tokens.size());
    if (n == 0) fail("forward: batch entry {} has no tokens", i);
    const int64_t T0 = a.token_begin.back();
    if (T0 + n > a.limits.max_tokens)
      fail("forward: {} tokens in one call exceed the maximum of {}", T0 + n, a.limits.max_tokens);
    const int64_t pos0 = st.cache->length();
    if (pos0 + n > c.max_position_embeddings)
      fail("sequence of {} tokens exceeds the model's context of {} (max_position_embeddings)",
           pos0 + n, c.max_position_embeddings);
    const int64_t n_logits = st.all_logits ? n : 1;
    const int64_t L0 = a.logit_begin.back();
    if (L0 + n_logits > a.limits.max_logit_rows)
      fail("forward: {} rows of logits in one call exceed the maximum of {}", L0 + n_logits,
           a.limits.max_logit_rows);
    for (int64_t t = 0; t < n; ++t) {
      const int32_t id = st.tokens[static_cast<size_t>(t)];
      if (id < 0 || id >= c.vocab_size)
        fail("token id {} is outside the vocabulary (0..{})", id, c.vocab_size - 1);
      h.tokens[static_cast<size_t>(T0 + t)] = id;
      h.positions[static_cast<size_t>(T0 + t)] = static_cast<int32_t>(pos0 + t);
      h.seq[static_cast<size_t>(T0 + t)] = static_cast<int32_t>(i);
    }
    for (int64_t r = 0; r < n_logits; ++r)
      h.logit_rows[static_cast<size_t>(L0 + r)] = static_cast<int32_t>(T0 + n - n_logits + r);
    a.token_begin.push_back(T0 + n);
    a.logit_begin.push_back(L0 + n_logits);
  }
  const ModelWeights& W = weights_for(domain);
  const float* inv_freq = rope_inv_freq_.data();
  if (domain != 0)
    for (const auto& p : placed_)
      if (p->memory_domain == domain) inv_freq = p->rope_inv_freq.data();
  const Step s{batch, a.token_begin.back(), &W, inv_freq, observer};
  const int64_t T = s.n_tokens;
  const int64_t n_out = a.logit_begin.back();
  const auto T_bytes = static_cast<size_t>(T) * sizeof(int32_t);
  backend.upload(a.tokens.data(), h.tokens.data(), T_bytes);
  backend.upload(a.positions.data(), h.positions.data(), T_bytes);
  // Decode steps want every row's logits in order: the LM head then reads x's rows as
  // they are, without a gather.
  bool gather = n_out != T;
  for (int64_t r = 0; r < n_out && !gather; ++r) gather = h.logit_rows[static_cast<size_t>(r)] != r;
  if (gather)
    backend.upload(a.logit_rows.data(), h.logit_rows.data(),
                   static_cast<size_t>(n_out) * sizeof(int32_t));
  ForwardCounters counters;

  backend.at({"embed"}).embedding({W.embed, a.tokens.data(), T, a.x.data()});
  counters.weight_bytes += static_cast<size_t>(T * H) * dtype_size(W.embed.dtype);

  for (int layer = 0; layer < c.n_layers; ++layer) {
    attention_block(layer, s, a, backend, counters);
    moe_block(layer, s, a, backend, counters);
    // The layer's entries are tagged and scored: its budget can be enforced now.
    for (const SequenceStep& st : batch)
      if (!st.prompt_continues) st.cache->end_layer(layer);
    s.observe("hidden", layer, a.x.data(), T, H, a, backend);
  }
  for (const SequenceStep& st : batch)
    if (!st.prompt_continues) st.cache->end_forward();

  // Final norm and LM head, only for the rows the callers want.
  if (gather)  // a row gather: the "table" is x itself
    backend.at({"final_gather"})
        .embedding(
            {{DType::kF32, T, H, a.x.data()}, a.logit_rows.data(), n_out, a.final_xn.data()});
  backend.at({"final_norm"})
      .rmsnorm({gather ? a.final_xn.data() : a.x.data(), W.final_norm.data(), n_out, H,
                c.rms_norm_eps, a.final_xn.data()});
  backend.at({"lm_head"})
      .matmul({a.final_xn.data(), n_out, nullptr, W.lm_head, a.logits.data(), c.vocab_size});
  counters.weight_bytes += W.lm_head.nbytes();
  if (a.device)
    backend.download(a.host.logits.data(), a.logits.data(),
                     static_cast<size_t>(n_out * c.vocab_size) * sizeof(float));
  return counters;
}

ForwardCounters Model::forward(std::span<const int32_t> tokens, KvCache& cache,
                               std::vector<float>& logits, bool all_logits, Backend& backend,
                               const ForwardObserver* observer, int64_t max_step) const {
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) fail("forward: no tokens");
  const int64_t step = max_step > 0 ? std::min(max_step, n) : n;
  Activations a(config_, backend,
                {.max_sequences = 1, .max_tokens = step, .max_logit_rows = all_logits ? step : 1});
  const auto V = static_cast<size_t>(config_.vocab_size);
  logits.clear();
  ForwardCounters total;
  for (int64_t t0 = 0; t0 < n; t0 += step) {
    const int64_t m = std::min(step, n - t0);
    const SequenceStep st{&cache, tokens.subspan(static_cast<size_t>(t0), static_cast<size_t>(m)),
                          all_logits,
                          /*prompt_continues=*/t0 + m < n};
    const ForwardCounters c = forward({&st, 1}, a, backend, observer);
    total.weight_bytes += c.weight_bytes;
    total.kv_bytes += c.kv_bytes;
    if (all_logits || t0 + m == n) {
      const auto rows = static_cast<size_t>(a.logit_begin.back());
      logits.insert(logits.end(), a.host_logits(), a.host_logits() + rows * V);
    }
  }
  return total;
}

void Model::attention_block(int layer, const Step& s, Activations& a, Backend& backend,
                            ForwardCounters& counters) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = s.w->layers[static_cast<size_t>(layer)];
  const Activations::Host& h = a.host;
  const int64_t T = s.n_tokens;
  const int64_t H = c.hidden_size;
  const LayerOps ops{s, layer, a, backend, counters};

  ops.at("attn_norm").rmsnorm({a.x.data(), L.input_norm.data(), T, H, c.rms_norm_eps, a.xn.data()});
  ops.observe("attn_norm", a.xn.data(), H);
  if (L.mla) return mla_block(layer, s, a, backend, counters);
  ops.project("q_proj", L.q, L.q_bias, a.xn.data(), a.q.data());  // [T, n_heads * head_dim]
  ops.project("k_proj", L.k, L.k_bias, a.xn.data(), a.k.data());  // [T, n_kv_heads * head_dim]
  ops.project("v_proj", L.v, L.v_bias, a.xn.data(), a.v.data());
  if (c.qk_norm != QkNorm::kNone) {
    // OLMoE: each token's whole q and k; Qwen3-MoE: each head, i.e. rows of head_dim
    // of the same [T, n_heads * head_dim] buffers.
    const int64_t qn = c.q_norm_size(), kn = c.k_norm_size();
    ops.at("q_norm").rmsnorm(
        {a.q.data(), L.q_norm.data(), T * c.q_dim() / qn, qn, c.rms_norm_eps, a.q.data()});
    ops.at("k_norm").rmsnorm(
        {a.k.data(), L.k_norm.data(), T * c.kv_dim() / kn, kn, c.rms_norm_eps, a.k.data()});
  }
  if (c.clip_qkv > 0.f) {
    ops.at("clip_qkv").clamp({a.q.data(), T * c.q_dim(), c.clip_qkv});
    ops.at("clip_qkv").clamp({a.k.data(), T * c.kv_dim(), c.clip_qkv});
    ops.at("clip_qkv").clamp({a.v.data(), T * c.kv_dim(), c.clip_qkv});
  }
  ops.at("rope_q").rope(
      {a.q.data(), a.positions.data(), T, c.n_heads, c.head_dim, s.rope_inv_freq});
  ops.at("rope_k").rope(
      {a.k.data(), a.positions.data(), T, c.n_kv_heads, c.head_dim, s.rope_inv_freq});
  ops.observe("q", a.q.data(), c.q_dim());
  ops.observe("k", a.k.data(), c.kv_dim());
  ops.observe("v", a.v.data(), c.kv_dim());

  // Each sequence's new entries go to its own cache; attention reads its view and
  // adds the probabilities of the queries its cache wants scored to the entries.
  const auto B = static_cast<int64_t>(s.batch.size());
  bool any_scored = false;
  for (int64_t i = 0; i < B; ++i) {
    const SequenceStep& st = s.batch[static_cast<size_t>(i)];
    const int64_t t0 = a.token_begin[static_cast<size_t>(i)];
    const auto n = static_cast<int64_t>(st.tokens.size());
    const std::span<const int32_t> pos(h.positions.data() + t0, st.tokens.size());
    st.cache->append(layer, pos, a.k.data() + t0 * c.kv_dim(), a.v.data() + t0 * c.kv_dim());
    const int64_t n_scored =
        st.prompt_continues ? 0 : std::clamp<int64_t>(st.cache->scored_queries(layer, pos), 0, n);
    for (int64_t t = 0; t < n; ++t)
      a.host.q_scored[static_cast<size_t>(t0 + t)] = t >= n - n_scored;
    any_scored = any_scored || n_scored > 0;
    if (!st.prompt_continues) st.cache->observe_queries(layer, pos, a.q.data() + t0 * c.q_dim());
    for (int kh = 0; kh < c.n_kv_heads; ++kh) {
      auto& list = a.chunks[static_cast<size_t>(i * c.n_kv_heads + kh)];
      list.clear();
      st.cache->view(layer, kh, list);
      for (const KvChunk& ch : list)
        counters.kv_bytes += static_cast<size_t>(ch.n) * ch.entry_bytes(c.head_dim);
    }
  }
  // The plan is made on the host from the query metadata: the host copies serve
  // (a backend of device memory reads the rest of the call there).
  AttentionParams p;
  p.n_queries = T;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = c.head_dim;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.sliding_window = c.sliding_window;
  p.q = a.q.data();
  p.q_positions = h.positions.data();
  p.out = a.attn.data();
  p.q_seq = h.seq.data();
  p.n_seqs = B;
  p.q_scored = any_scored ? h.q_scored.data() : nullptr;
  ops.at("attention")
      .attention(p, std::span(a.chunks).first(static_cast<size_t>(B * c.n_kv_heads)));
  ops.observe("attn_out", a.attn.data(), c.q_dim());

  ops.project("o_proj", L.o, L.o_bias, a.attn.data(), a.out.data());
  ops.at("attn_residual").add({a.x.data(), a.out.data(), T * H});
}

// Multi-head latent attention (DeepSeek-V2/V3) in the absorbed form, for prefill and
// decode alike. Per token: the latent c = kv_a_layernorm(x W_c) [kv_lora] and the shared
// rope key k_rope [rope] go to the cache as one entry [c | k_rope] (the layer's one
// "kv-head"); per head h the query q_h = [q_nope | q_rope] becomes the latent-space
// query [W_UK_h^T q_nope | q_rope], whose dot product with an entry equals q_h · k_h
// of the up-projected key. Attention over the entries gives o_h = sum_j p_j c_j
// [kv_lora] (V is the prefix c of each entry: v_dim), and W_UV_h o_h is head h's value
// output, then o_proj. The bytes read per entry are the latent's, not n_heads K/V rows.
void Model::mla_block(int layer, const Step& s, Activations& a, Backend& backend,
                      ForwardCounters& counters) const {
  const ModelConfig& c = config_;
  const MlaConfig& m = c.mla;
  const MlaWeights& W = *s.w->layers[static_cast<size_t>(layer)].mla;
  const LayerWeights& L = s.w->layers[static_cast<size_t>(layer)];
  const Activations::Host& h = a.host;
  const int64_t T = s.n_tokens;
  const int64_t H = c.hidden_size;
  const int64_t nh = c.n_heads, qk = m.qk_head_dim(), R = m.qk_rope_head_dim;
  const int64_t C = m.kv_lora_rank, D = m.latent_dim(), Vh = m.v_head_dim;
  // transformers' DeepseekV2/V3RMSNorm of q_a_layernorm / kv_a_layernorm: default eps.
  constexpr float kLoraNormEps = 1e-6f;
  const LayerOps ops{s, layer, a, backend, counters};

  // The query [T, nh, qk_nope | qk_rope], through the LoRA when there is one.
  const float* q_in = a.xn.data();
  if (m.q_lora_rank > 0) {
    ops.project("q_a_proj", W.q_a, W.q_a_bias, a.xn.data(), a.mla_q_a.data());  // [T, q_lora]
    ops.at("q_a_norm")
        .rmsnorm({a.mla_q_a.data(), W.q_a_norm.data(), T, m.q_lora_rank, kLoraNormEps,
                  a.mla_q_a.data()});
    q_in = a.mla_q_a.data();
  }
  ops.project("q_proj", W.q_b, {}, q_in, a.mla_q.data());  // [T, nh * qk]
  // The latent and the rope key.
  ops.project("kv_a_proj", W.kv_a_c, W.kv_a_c_bias, a.xn.data(), a.mla_c.data());  // [T, C]
  ops.at("kv_a_norm")
      .rmsnorm({a.mla_c.data(), W.kv_a_norm.data(), T, C, kLoraNormEps, a.mla_c.data()});
  ops.project("kv_a_rope", W.kv_a_rope, W.kv_a_rope_bias, a.xn.data(),
              a.mla_k_rope.data());  // [T, R]
  ops.at("rope_k").rope({a.mla_k_rope.data(), a.positions.data(), T, 1, R, s.rope_inv_freq});
  // The cache entries [T, C | R].
  ops.at("latent").copy_rows({a.mla_c.data(), C, a.k.data(), D, T, C});
  ops.at("latent").copy_rows({a.mla_k_rope.data(), R, a.k.data() + C, D, T, R});
  // The query's rope part, rotated, into the latent-space query [T, nh, C | R] ...
  ops.at("rope_q").copy_rows(
      {a.mla_q.data() + m.qk_nope_head_dim, qk, a.mla_q_rope.data(), R, T * nh, R});
  ops.at("rope_q").rope({a.mla_q_rope.data(), a.positions.data(), T, nh, R, s.rope_inv_freq});
  ops.at("rope_q").copy_rows({a.mla_q_rope.data(), R, a.q.data() + C, D, T * nh, R});
  // ... and its nope part absorbed: W_UK_h^T q_nope_h per head.
  for (int64_t hd = 0; hd < nh; ++hd) {
    MatmulParams absorb{a.mla_q.data() + hd * qk, T,     nullptr, W.uk_t[static_cast<size_t>(hd)],
                        a.q.data() + hd * D,      nh * D};
    absorb.ldx = nh * qk;
    backend.at({"q_absorb", layer, -1}).matmul(absorb);
    counters.weight_bytes += W.uk_t[static_cast<size_t>(hd)].nbytes();
  }
  ops.observe("q", a.q.data(), nh * D);
  ops.observe("k", a.k.data(), D);

  const auto B = static_cast<int64_t>(s.batch.size());
  bool any_scored = false;
  for (int64_t i = 0; i < B; ++i) {
    const SequenceStep& st = s.batch[static_cast<size_t>(i)];
    const int64_t t0 = a.token_begin[static_cast<size_t>(i)];
    const auto n = static_cast<int64_t>(st.tokens.size());
    const std::span<const int32_t> pos(h.positions.data() + t0, st.tokens.size());
    st.cache->append(layer, pos, a.k.data() + t0 * D, nullptr);  // keys only: V is c
    const int64_t n_scored =
        st.prompt_continues ? 0 : std::clamp<int64_t>(st.cache->scored_queries(layer, pos), 0, n);
    for (int64_t t = 0; t < n; ++t)
      a.host.q_scored[static_cast<size_t>(t0 + t)] = t >= n - n_scored;
    any_scored = any_scored || n_scored > 0;
    if (!st.prompt_continues) st.cache->observe_queries(layer, pos, a.q.data() + t0 * nh * D);
    auto& list = a.chunks[static_cast<size_t>(i)];
    list.clear();
    st.cache->view(layer, 0, list);
    for (const KvChunk& ch : list)
      counters.kv_bytes += static_cast<size_t>(ch.n) * ch.entry_bytes(D);
  }
  AttentionParams p;
  p.n_queries = T;
  p.n_heads = nh;
  p.n_kv_heads = 1;
  p.head_dim = D;
  p.v_dim = C;
  p.scale = m.softmax_scale;
  p.q = a.q.data();
  p.q_positions = h.positions.data();
  p.out = a.attn.data();  // [T, nh, C]
  p.q_seq = h.seq.data();
  p.n_seqs = B;
  p.q_scored = any_scored ? h.q_scored.data() : nullptr;
  ops.at("attention").attention(p, std::span(a.chunks).first(static_cast<size_t>(B)));
  ops.observe("attn_out", a.attn.data(), nh * C);

  // Per head the latent output up-projected, W_UV_h o_h, into [T, nh * v_head]; o_proj.
  for (int64_t hd = 0; hd < nh; ++hd) {
    MatmulParams up{a.attn.data() + hd * C,   T,      nullptr, W.uv[static_cast<size_t>(hd)],
                    a.mla_v.data() + hd * Vh, nh * Vh};
    up.ldx = nh * C;
    backend.at({"v_up", layer, -1}).matmul(up);
    counters.weight_bytes += W.uv[static_cast<size_t>(hd)].nbytes();
  }
  ops.project("o_proj", L.o, L.o_bias, a.mla_v.data(), a.out.data());
  ops.at("attn_residual").add({a.x.data(), a.out.data(), T * H});
}

namespace {
constexpr FfnSiteNames kDenseMlp{"mlp_gate", "mlp_up", "mlp_act", "mlp_down"};
constexpr FfnSiteNames kExpertFfn{"expert_gate", "expert_up", "expert_act", "expert_down"};
constexpr FfnSiteNames kSharedExpert{"shared_gate", "shared_up", "shared_act", "shared_down"};
}  // namespace

// out[i] = down(silu(gate(x[rows[i]])) * up(x[rows[i]])) for n_rows gathered rows
// (rows == nullptr: the first n_rows rows of x); the ops' sites are (names, layer, expert).
void Model::swiglu(const MlpWeights& m, const FfnSiteNames& names, int layer, int expert,
                   const float* x, const int32_t* rows, int64_t n_rows, float* out, Activations& a,
                   Backend& backend, ForwardCounters& counters) const {
  const int64_t I = m.gate.rows;
  backend.at({names.gate, layer, expert})
      .matmul({x, n_rows, rows, m.gate, a.gate.data(), I});  // [n_rows, I]
  backend.at({names.up, layer, expert}).matmul({x, n_rows, rows, m.up, a.up.data(), I});
  backend.at({names.act, layer, expert}).silu_mul({a.gate.data(), a.up.data(), n_rows * I});
  backend.at({names.down, layer, expert})
      .matmul({a.gate.data(), n_rows, nullptr, m.down, out, m.down.rows});  // [n_rows, hidden]
  counters.weight_bytes += m.gate.nbytes() + m.up.nbytes() + m.down.nbytes();
}

void Model::moe_block(int layer, const Step& s, Activations& a, Backend& backend,
                      ForwardCounters& counters) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = s.w->layers[static_cast<size_t>(layer)];
  Activations::Host& h = a.host;
  const int64_t T = s.n_tokens;
  const int64_t H = c.hidden_size;

  const auto at = [&](const char* name) -> Backend& { return backend.at({name, layer}); };

  at("ffn_norm").rmsnorm({a.x.data(), L.post_attn_norm.data(), T, H, c.rms_norm_eps, a.xn.data()});
  s.observe("ffn_norm", layer, a.xn.data(), T, H, a, backend);

  if (L.mlp) {  // a dense layer
    swiglu(*L.mlp, kDenseMlp, layer, -1, a.xn.data(), nullptr, T, a.out.data(), a, backend,
           counters);
  } else {
    const int E = c.router.n_experts;
    const int K = c.router.top_k;
    at("router").matmul({a.xn.data(), T, nullptr, L.router, a.router_logits.data(), E});  // [T, E]
    counters.weight_bytes += L.router.nbytes();
    s.observe("router_logits", layer, a.router_logits.data(), T, E, a, backend);
    RouteParams route{a.router_logits.data(), T, E, K, c.router.renormalize, a.experts.data(),
                      a.expert_weights.data()};
    route.scoring = c.router.scoring;
    route.selection_bias = L.selection_bias.empty() ? nullptr : L.selection_bias.data();
    route.n_groups = c.router.n_groups;
    route.top_groups = c.router.top_groups;
    route.group_score = c.router.group_score;
    route.scale = c.router.scale;
    at("route").route(route);
    // The host groups the tokens and tags the entries: it reads the routing back.
    const auto TK = static_cast<size_t>(T * K);
    backend.download(h.experts.data(), a.experts.data(), TK * sizeof(int32_t));
    backend.download(h.expert_weights.data(), a.expert_weights.data(), TK * sizeof(float));
    if (s.observer && s.observer->routing)
      s.observer->routing(layer, h.experts.data(), h.expert_weights.data(), T, K);

    // The top-1 expert tags this layer's new entries, in each sequence's cache.
    for (int64_t t = 0; t < T; ++t)
      h.top1[static_cast<size_t>(t)] = h.experts[static_cast<size_t>(t * K)];
    for (size_t i = 0; i < s.batch.size(); ++i) {
      const int64_t t0 = a.token_begin[i];
      const std::span<const int32_t> pos(h.positions.data() + t0, s.batch[i].tokens.size());
      s.batch[i].cache->tag(layer, pos, h.top1.data() + t0);
    }

    // Group the batch's tokens by expert (counting sort: tokens ascending within
    // an expert) so each expert's weights are read once per call.
    a.expert_begin.assign(static_cast<size_t>(E) + 1, 0);
    for (size_t i = 0; i < TK; ++i) ++a.expert_begin[static_cast<size_t>(h.experts[i]) + 1];
    for (int e = 0; e < E; ++e)
      a.expert_begin[static_cast<size_t>(e) + 1] += a.expert_begin[static_cast<size_t>(e)];
    for (size_t i = 0; i < TK; ++i) {
      const auto e = static_cast<size_t>(h.experts[i]);
      const auto slot = static_cast<size_t>(a.expert_begin[e]++);
      h.expert_rows[slot] = static_cast<int32_t>(i / static_cast<size_t>(K));
      h.expert_row_weights[slot] = h.expert_weights[i];
    }
    std::rotate(a.expert_begin.rbegin(), a.expert_begin.rbegin() + 1, a.expert_begin.rend());
    a.expert_begin[0] = 0;
    backend.upload(a.expert_rows.data(), h.expert_rows.data(), TK * sizeof(int32_t));
    backend.upload(a.expert_row_weights.data(), h.expert_row_weights.data(), TK * sizeof(float));

    backend.fill_zero(a.out.data(), static_cast<size_t>(T * H) * sizeof(float));
    for (int e = 0; e < E; ++e) {
      const int64_t r0 = a.expert_begin[static_cast<size_t>(e)];
      const int64_t n = a.expert_begin[static_cast<size_t>(e) + 1] - r0;
      if (n == 0) continue;
      swiglu(L.experts[static_cast<size_t>(e)], kExpertFfn, layer, e, a.xn.data(),
             a.expert_rows.data() + r0, n, a.ffn_out.data(), a, backend, counters);
      backend.at({"expert_scatter", layer, e})
          .scatter_add({a.out.data(), a.ffn_out.data(), a.expert_rows.data() + r0,
                        a.expert_row_weights.data() + r0, n, H});
    }
    if (L.shared_expert && L.shared_expert_gate.data == nullptr) {  // DeepSeek: ungated
      swiglu(*L.shared_expert, kSharedExpert, layer, -1, a.xn.data(), nullptr, T, a.ffn_out.data(),
             a, backend, counters);
      at("shared_add").add({a.out.data(), a.ffn_out.data(), T * H});
    } else if (L.shared_expert) {  // Qwen2-MoE: sigmoid(gate(x)) * shared_expert(x), every token
      swiglu(*L.shared_expert, kSharedExpert, layer, -1, a.xn.data(), nullptr, T, a.ffn_out.data(),
             a, backend, counters);
      at("shared_expert_gate")
          .matmul({a.xn.data(), T, nullptr, L.shared_expert_gate, a.shared_gate.data(), 1});
      counters.weight_bytes += L.shared_expert_gate.nbytes();
      at("shared_add").gated_add({a.out.data(), a.ffn_out.data(), a.shared_gate.data(), T, H});
    }
  }
  s.observe("ffn_out", layer, a.out.data(), T, H, a, backend);
  at("ffn_residual").add({a.x.data(), a.out.data(), T * H});
}

}  // namespace ekva
