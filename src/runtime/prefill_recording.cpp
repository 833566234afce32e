#include "runtime/prefill_recording.h"

namespace ekva {

PrefillRecording PrefillRecording::record(const Model& model, std::span<const int32_t> tokens,
                                          Backend& backend, DType kv_dtype) {
  const ModelConfig& c = model.config();
  PrefillRecording r;
  const auto L = static_cast<size_t>(c.n_layers);
  r.q.resize(L);
  r.k.resize(L);
  r.v.resize(L);
  r.top1.resize(L);
  ForwardObserver obs;
  obs.tensor = [&](std::string_view name, int layer, const float* data, int64_t n, int64_t width) {
    auto* dst = name == "q" ? &r.q : name == "k" ? &r.k : name == "v" ? &r.v : nullptr;
    if (dst != nullptr) (*dst)[static_cast<size_t>(layer)].assign(data, data + n * width);
  };
  obs.routing = [&](int layer, const int32_t* experts, const float*, int64_t n, int top_k) {
    auto& t = r.top1[static_cast<size_t>(layer)];
    t.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = experts[i * top_k];
  };
  FullKvCache cache({c.n_layers, c.n_kv_heads, c.head_dim}, static_cast<int64_t>(tokens.size()),
                    kv_dtype);
  model.forward(tokens, cache, r.last_logits, false, backend, &obs);
  r.positions.resize(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) r.positions[i] = static_cast<int32_t>(i);
  return r;
}

void PrefillRecording::replay(KvCache& cache) const {
  for (size_t l = 0; l < k.size(); ++l) {
    const int layer = static_cast<int>(l);
    cache.append(layer, positions, k[l].data(), v[l].data());
    cache.observe_queries(layer, positions, q[l].data());
    if (!top1[l].empty()) cache.tag(layer, positions, top1[l].data());
    cache.end_layer(layer);
  }
  cache.end_forward();
}

}  // namespace ekva
