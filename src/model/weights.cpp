#include "model/weights.h"

#include <cstring>
#include <map>
#include <set>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "core/error.h"
#include "ops/backend.h"

namespace ekva {

namespace {

class Binder {
 public:
  Binder(const TensorStore& store, ModelWeights& w) : store_(store), w_(w) {}

  // `why`: the config fields the shape comes from, for the error message.
  const TensorInfo& expect(const std::string& name, std::initializer_list<int64_t> shape,
                           std::string_view why = {}) {
    const TensorInfo& t = store_.get(name);
    const std::vector<int64_t> want(shape);
    if (t.shape != want)
      fail("{}: tensor '{}' has shape {}, but the config implies [{}]{}", t.file->string(), name,
           t.shape_string(), fmt::join(want, ", "),
           why.empty() ? std::string() : fmt::format(" ({})", why));
    if (t.dtype != DType::kBF16 && t.dtype != DType::kF16 && t.dtype != DType::kF32)
      fail("{}: tensor '{}' has dtype {}; weights must be BF16, F16 or F32", t.file->string(), name,
           dtype_name(t.dtype));
    used_.insert(name);
    return t;
  }

  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols,
                      std::string_view why = {}) {
    const TensorInfo& t = expect(name, {rows, cols}, why);
    if (t.dtype == DType::kF16) {
      auto& buf = w_.owned->emplace_back(widen(t));
      return {DType::kF32, rows, cols, buf.data()};
    }
    return {t.dtype, rows, cols, t.data};
  }

  WeightVector vector(const std::string& name, int64_t n, std::string_view why = {}) {
    const auto& buf = w_.owned->emplace_back(widen(expect(name, {n}, why)));
    return {buf.data(), n};
  }

  void check_all_used() const {
    std::vector<std::string> unused;
    for (const auto& name : store_.names())
      if (used_.count(name) == 0 && name.find("rotary_emb.inv_freq") == std::string::npos)
        unused.push_back(name);
    if (!unused.empty())
      fail("{}: {} tensor(s) the config does not use, e.g. '{}' (wrong architecture or config?)",
           store_.dir().string(), unused.size(), unused.front());
  }

 private:
  static std::vector<float> widen(const TensorInfo& t) {
    const auto n = static_cast<size_t>(t.numel());
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
      if (t.dtype == DType::kF32) {
        std::memcpy(&out[i], t.data + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = t.dtype == DType::kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
    return out;
  }

  const TensorStore& store_;
  ModelWeights& w_;
  std::set<std::string> used_;
};

// rows[i] of a new matrix is row order[i] of w, in w's dtype (MLA's rope rows).
WeightMatrix reorder_rows(const WeightMatrix& w, const std::vector<int64_t>& order,
                          ModelWeights& out) {
  const size_t row_bytes = static_cast<size_t>(w.cols) * dtype_size(w.dtype);
  auto& buf = out.owned_bytes->emplace_back(row_bytes * order.size());
  for (size_t i = 0; i < order.size(); ++i)
    std::memcpy(buf.data() + i * row_bytes, w.row(order[i]), row_bytes);
  return {w.dtype, static_cast<int64_t>(order.size()), w.cols, buf.data()};
}

// The transpose of rows [r0, r0 + n) of w: [w.cols, n], in w's dtype.
WeightMatrix transpose_rows(const WeightMatrix& w, int64_t r0, int64_t n, ModelWeights& out) {
  const size_t es = dtype_size(w.dtype);
  auto& buf = out.owned_bytes->emplace_back(static_cast<size_t>(n * w.cols) * es);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < w.cols; ++c)
      std::memcpy(buf.data() + static_cast<size_t>(c * n + r) * es, w.row(r0 + r) + c * es, es);
  return {w.dtype, w.cols, n, buf.data()};
}

// Row order that moves the rope dims of `heads` heads of `head_width` (the last
// `rope` of each) from pairs (2i, 2i + 1) to halves (i, rope/2 + i).
std::vector<int64_t> rope_half_order(int64_t heads, int64_t head_width, int64_t rope) {
  std::vector<int64_t> order;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t base = h * head_width;
    for (int64_t d = 0; d < head_width - rope; ++d) order.push_back(base + d);
    for (int64_t i = 0; i < rope / 2; ++i) order.push_back(base + head_width - rope + 2 * i);
    for (int64_t i = 0; i < rope / 2; ++i) order.push_back(base + head_width - rope + 2 * i + 1);
  }
  return order;
}

MlaWeights bind_mla(Binder& b, const ModelConfig& c, const std::string& a, ModelWeights& w) {
  const MlaConfig& m = c.mla;
  const int64_t H = c.hidden_size, nh = c.n_heads;
  const int64_t qk = m.qk_head_dim(), R = m.qk_rope_head_dim, C = m.kv_lora_rank;
  MlaWeights M;
  const std::string q_shape =
      fmt::format("num_attention_heads {} x (qk_nope_head_dim {} + qk_rope_head_dim {})", nh,
                  m.qk_nope_head_dim, R);
  if (m.q_lora_rank > 0) {
    const std::string lora = fmt::format("q_lora_rank {}", m.q_lora_rank);
    M.q_a = b.matrix(a + "q_a_proj.weight", m.q_lora_rank, H, lora);
    if (m.attention_bias) M.q_a_bias = b.vector(a + "q_a_proj.bias", m.q_lora_rank, lora);
    M.q_a_norm = b.vector(a + "q_a_layernorm.weight", m.q_lora_rank, lora);
    M.q_b = b.matrix(a + "q_b_proj.weight", nh * qk, m.q_lora_rank, q_shape + ", " + lora);
  } else {
    M.q_b = b.matrix(a + "q_proj.weight", nh * qk, H, q_shape + ", q_lora_rank null");
  }
  const std::string kv_shape = fmt::format("kv_lora_rank {} + qk_rope_head_dim {}", C, R);
  const WeightMatrix kv_a = b.matrix(a + "kv_a_proj_with_mqa.weight", C + R, H, kv_shape);
  M.kv_a_c = {kv_a.dtype, C, H, kv_a.data};
  M.kv_a_rope = {kv_a.dtype, R, H, kv_a.row(C)};
  if (m.attention_bias) {
    const WeightVector bias = b.vector(a + "kv_a_proj_with_mqa.bias", C + R, kv_shape);
    M.kv_a_c_bias = {bias.data(), C};
    M.kv_a_rope_bias = {bias.data() + C, R};
  }
  M.kv_a_norm = b.vector(a + "kv_a_layernorm.weight", C, fmt::format("kv_lora_rank {}", C));
  if (m.rope_pairs) {
    M.q_b = reorder_rows(M.q_b, rope_half_order(nh, qk, R), w);
    M.kv_a_rope = reorder_rows(M.kv_a_rope, rope_half_order(1, R, R), w);
    if (!M.kv_a_rope_bias.empty()) {
      auto& reordered = w.owned->emplace_back();
      for (int64_t i : rope_half_order(1, R, R)) reordered.push_back(M.kv_a_rope_bias.data()[i]);
      M.kv_a_rope_bias = {reordered.data(), R};
    }
  }
  const int64_t nope = m.qk_nope_head_dim, V = m.v_head_dim;
  const WeightMatrix kv_b = b.matrix(
      a + "kv_b_proj.weight", nh * (nope + V), C,
      fmt::format("num_attention_heads {} x (qk_nope_head_dim {} + v_head_dim {}), kv_lora_rank {}",
                  nh, nope, V, C));
  for (int64_t h = 0; h < nh; ++h) {
    M.uk_t.push_back(transpose_rows(kv_b, h * (nope + V), nope, w));
    M.uv.push_back({kv_b.dtype, V, C, kv_b.row(h * (nope + V) + nope)});
  }
  return M;
}

MlpWeights bind_mlp(Binder& b, const std::string& prefix, const char* gate, const char* up,
                    const char* down, int64_t hidden, int64_t inter) {
  return {b.matrix(prefix + gate + ".weight", inter, hidden),
          b.matrix(prefix + up + ".weight", inter, hidden),
          b.matrix(prefix + down + ".weight", hidden, inter)};
}

}  // namespace

ModelWeights ModelWeights::bind(const ModelConfig& c, const TensorStore& store) {
  ModelWeights w;
  w.owned = std::make_shared<std::deque<std::vector<float>>>();
  w.owned_bytes = std::make_shared<std::deque<std::vector<std::byte>>>();
  Binder b(store, w);
  const int64_t H = c.hidden_size;
  w.embed = b.matrix("model.embed_tokens.weight", c.vocab_size, H);
  w.lm_head = c.tie_word_embeddings ? w.embed : b.matrix("lm_head.weight", c.vocab_size, H);
  w.final_norm = b.vector("model.norm.weight", H);
  w.layers.resize(static_cast<size_t>(c.n_layers));
  const std::string q_shape = fmt::format("num_attention_heads {} x head_dim {}, hidden_size {}",
                                          c.n_heads, c.head_dim, c.hidden_size);
  const std::string kv_shape = fmt::format("num_key_value_heads {} x head_dim {}, hidden_size {}",
                                           c.n_kv_heads, c.head_dim, H);
  const bool per_head = c.qk_norm == QkNorm::kPerHead;
  const std::string head_shape =
      fmt::format("head_dim {}, one norm shared by every head", c.head_dim);
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[static_cast<size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    L.input_norm = b.vector(p + "input_layernorm.weight", H);
    L.post_attn_norm = b.vector(p + "post_attention_layernorm.weight", H);
    const std::string a = p + "self_attn.";
    if (c.is_mla()) {
      L.mla = bind_mla(b, c, a, w);
      const std::string o_shape = fmt::format(
          "hidden_size {}, num_attention_heads {} x v_head_dim {}", H, c.n_heads, c.mla.v_head_dim);
      L.o = b.matrix(a + "o_proj.weight", H, int64_t{c.n_heads} * c.mla.v_head_dim, o_shape);
      if (c.mla.attention_bias) L.o_bias = b.vector(a + "o_proj.bias", H);
    } else {
      L.q = b.matrix(a + "q_proj.weight", c.q_dim(), H, q_shape);
      L.k = b.matrix(a + "k_proj.weight", c.kv_dim(), H, kv_shape);
      L.v = b.matrix(a + "v_proj.weight", c.kv_dim(), H, kv_shape);
      L.o = b.matrix(a + "o_proj.weight", H, c.q_dim(), q_shape);
      if (c.qkv_bias) {
        L.q_bias = b.vector(a + "q_proj.bias", c.q_dim());
        L.k_bias = b.vector(a + "k_proj.bias", c.kv_dim());
        L.v_bias = b.vector(a + "v_proj.bias", c.kv_dim());
      }
      if (c.o_bias) L.o_bias = b.vector(a + "o_proj.bias", H);
      if (c.qk_norm != QkNorm::kNone) {
        L.q_norm = b.vector(a + "q_norm.weight", c.q_norm_size(), per_head ? head_shape : q_shape);
        L.k_norm = b.vector(a + "k_norm.weight", c.k_norm_size(), per_head ? head_shape : kv_shape);
      }
    }

    const int64_t E = c.router.n_experts;
    if (!c.is_moe_layer(i)) {
      L.mlp = bind_mlp(b, p + "mlp.", "gate_proj", "up_proj", "down_proj", H,
                       c.dense_intermediate_size);
    } else if (c.arch == Architecture::kMixtral) {
      L.router = b.matrix(p + "block_sparse_moe.gate.weight", E, H);
      for (int64_t e = 0; e < E; ++e)
        L.experts.push_back(bind_mlp(b, fmt::format("{}block_sparse_moe.experts.{}.", p, e), "w1",
                                     "w3", "w2", H, c.expert_intermediate_size));
    } else {
      L.router = b.matrix(p + "mlp.gate.weight", E, H);
      for (int64_t e = 0; e < E; ++e)
        L.experts.push_back(bind_mlp(b, fmt::format("{}mlp.experts.{}.", p, e), "gate_proj",
                                     "up_proj", "down_proj", H, c.expert_intermediate_size));
      if (c.router.selection_bias)
        L.selection_bias = b.vector(p + "mlp.gate.e_score_correction_bias", E,
                                    fmt::format("n_routed_experts {}", E));
      if (c.is_mla() && c.shared_expert_intermediate_size > 0) {  // DeepSeek: ungated
        L.shared_expert = bind_mlp(b, p + "mlp.shared_experts.", "gate_proj", "up_proj",
                                   "down_proj", H, c.shared_expert_intermediate_size);
      } else if (c.shared_expert_intermediate_size > 0) {
        L.shared_expert = bind_mlp(b, p + "mlp.shared_expert.", "gate_proj", "up_proj", "down_proj",
                                   H, c.shared_expert_intermediate_size);
        L.shared_expert_gate = b.matrix(p + "mlp.shared_expert_gate.weight", 1, H);
      }
    }
  }
  b.check_all_used();
  return w;
}

std::unique_ptr<PlacedWeights> place_weights(const ModelWeights& host,
                                             std::span<const float> rope_inv_freq,
                                             Backend& backend) {
  auto placed = std::make_unique<PlacedWeights>();
  placed->memory_domain = backend.memory_domain();
  placed->weights = host;  // shares `owned`; every pointer is replaced below
  // One device copy per distinct host tensor (the tied LM head is the embedding).
  std::map<const void*, const void*> copies;
  const auto copy = [&](const void* src, size_t bytes) -> const void* {
    if (src == nullptr || bytes == 0) return src;
    if (const auto it = copies.find(src); it != copies.end()) return it->second;
    void* dst = backend.allocate(bytes);
    placed->buffers.emplace_back(dst, [&backend](void* p) { backend.release(p); });
    backend.upload(dst, src, bytes);
    placed->bytes += bytes;
    copies.emplace(src, dst);
    return dst;
  };
  placed->weights.for_each([&](auto& t) {
    using T = std::decay_t<decltype(t)>;
    if constexpr (std::is_same_v<T, WeightMatrix>) {
      t.data = copy(t.data, t.nbytes());
    } else {
      t.ptr = static_cast<const float*>(copy(t.ptr, t.nbytes()));
    }
  });
  placed->rope_inv_freq = {
      static_cast<const float*>(copy(rope_inv_freq.data(), rope_inv_freq.size_bytes())),
      static_cast<int64_t>(rope_inv_freq.size())};
  return placed;
}

}  // namespace ekva
