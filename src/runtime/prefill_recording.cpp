#include "runtime/prefill_recording.h"

#include "core/error.h"
#include "kv/scoring_cache.h"

namespace ekva {
PrefillRecording PrefillRecording::record(const Model& model, std::span<const int32_t> tokens,
                                          Backend& backend, DType kv_dtype, RecordOptions options) {
  const ModelConfig& c = model.config();
  const auto T = static_cast<int64_t>(tokens.size());
  if (options.split < 0 || options.split >= T) options.split = 0;
  PrefillRecording r;
  const auto L = static_cast<size_t>(c.n_layers);
  r.n_kv_heads = c.n_kv_heads;
  r.q.resize(L);
  r.k.resize(L);
  r.v.resize(L);
  r.top1.resize(L);
  // Appended: the recording may come from two forward calls (the split).
  ForwardObserver obs;
  obs.tensor = [&](std::string_view name, int layer, const float* data, int64_t n, int64_t width) {
    auto* dst = name == "q" ? &r.q : name == "k" ? &r.k : name == "v" ? &r.v : nullptr;
    if (dst != nullptr) {
      auto& d = (*dst)[static_cast<size_t>(layer)];
      d.insert(d.end(), data, data + n * width);
    }
  };
  obs.routing = [&](int layer, const int32_t* experts, const float*, int64_t n, int top_k) {
    auto& t = r.top1[static_cast<size_t>(layer)];
    for (int64_t i = 0; i < n; ++i) t.push_back(experts[i * top_k]);
  };
  const KvShape shape = kv_cache_shape(c);
  if (options.all_query_scores) {
    ScoringFullCache cache(shape, T, kv_dtype);
    if (options.split > 0) {
      model.forward(tokens.first(static_cast<size_t>(options.split)), cache, r.last_logits, false,
                    backend, &obs);
      r.split = options.split;
      r.split_scores.resize(L);
      for (int l = 0; l < c.n_layers; ++l)
        r.split_scores[static_cast<size_t>(l)] = cache.scores(l, options.split);
      model.forward(tokens.subspan(static_cast<size_t>(options.split)), cache, r.last_logits, false,
                    backend, &obs);
    } else {
      model.forward(tokens, cache, r.last_logits, false, backend, &obs);
    }
    r.scores.resize(L);
    for (int l = 0; l < c.n_layers; ++l) r.scores[static_cast<size_t>(l)] = cache.scores(l, T);
  } else {
    FullKvCache cache(shape, T, kv_dtype);
    model.forward(tokens, cache, r.last_logits, false, backend, &obs);
  }
  r.positions.resize(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) r.positions[i] = static_cast<int32_t>(i);
  return r;
}

void PrefillRecording::replay(KvCache& cache, int64_t n) const {
  if (n < 0) n = size();
  if (n == 0 || n > size()) fail("prefill recording: cannot replay {} of its {} tokens", n, size());
  const std::vector<std::vector<float>>* recorded = n == size() && !scores.empty() ? &scores
                                                    : n == split && !split_scores.empty()
                                                        ? &split_scores
                                                        : nullptr;
  const auto pos = std::span(positions).first(static_cast<size_t>(n));
  for (size_t l = 0; l < k.size(); ++l) {
    const int layer = static_cast<int>(l);
    cache.append(layer, pos, k[l].data(), v[l].data());
    if (recorded == nullptr || !cache.observe_all_query_scores(layer, pos, (*recorded)[l].data()))
      cache.observe_queries(layer, pos, q[l].data());
    if (!top1[l].empty()) cache.tag(layer, pos, top1[l].data());
    cache.end_layer(layer);
  }
  cache.end_forward();
}

}  // namespace ekva
