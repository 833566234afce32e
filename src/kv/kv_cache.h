// The KV cache of one sequence, behind the narrow interface the forward pass
// uses: append the new tokens' K/V of a layer, view a (layer, kv-head) as chunks for
// attention, and report length and bytes. The plain full cache lives here; the
// compressed ragged store implements the same interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kv/model_shape.h"
#include "ops/ops.h"

namespace ekva {

struct KvShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int v_dim = 0;  // KvModelShape::v_dim: 0, or (MLA) values read from the keys, not stored

  bool keys_only() const { return v_dim > 0; }
};

// The cache shape of a model (every kv-head, the value layout).
inline KvShape kv_cache_shape(const KvModelShape& m) {
  return {m.n_layers, m.n_kv_heads, m.head_dim, m.v_dim};
}

class KvCache {
 public:
  virtual ~KvCache() = default;

  // Stores the entries of tokens at `positions` for one layer. k and v are
  // [n_tokens, n_kv_heads, head_dim] with RoPE already applied to k (entries keep
  // their original positions; they are never re-rotated).
  virtual void append(int layer, std::span<const int32_t> positions, const float* k,
                      const float* v) = 0;
  // Expert tags of the entries just appended to `layer`: the top-1 expert of that
  // layer's router for each token (the router runs after attention, so tags come
  // after append, within the same forward call). Dense layers never call it.
  virtual void tag(int layer, std::span<const int32_t> positions, const int32_t* top1_experts) {
    (void)layer, (void)positions, (void)top1_experts;
  }
  // The queries of the tokens just appended to `layer`, [n_tokens, n_heads,
  // head_dim] with RoPE applied, before attention runs: a compressing cache scores
  // its entries with them (the attention op itself returns no weights).
  virtual void observe_queries(int layer, std::span<const int32_t> positions, const float* q) {
    (void)layer, (void)positions, (void)q;
  }
  // A replayed recording's form of observe_queries (runtime/prefill_recording.h):
  // the attention probabilities the tokens just appended to `layer` gave each other
  // (causal, every one of them a query), summed over each GQA group's query heads,
  // as a prefill's attention op computed them: scores[kv_head * n + i] for the entry
  // at positions[i]. Returns false when the cache does not score by every query (it
  // then wants observe_queries).
  virtual bool observe_all_query_scores(int layer, std::span<const int32_t> positions,
                                        const float* scores) {
    (void)layer, (void)positions, (void)scores;
    return false;
  }
  // How many of the last of the tokens just appended to `layer` should have their
  // attention probabilities added to the entries' scores by the attention op
  // itself (KvChunk::scores, which view() then points at the entries' score
  // slots): 0 for none. Asked once per layer and call, before attention runs.
  virtual int64_t scored_queries(int layer, std::span<const int32_t> positions) {
    (void)layer, (void)positions;
    return 0;
  }
  // Called once per layer and forward call, in layer order, when the layer is done
  // with the cache: after its tag() (dense layers: after its attention), so the
  // layer's entries, tags and scores are final. A compressing cache may enforce the
  // layer's budget here, before the later layers append theirs (the peak of a
  // prefill is then one layer uncompressed plus the compressed rest).
  virtual void end_layer(int layer) { (void)layer; }
  // Called once at the end of every forward call, after the last layer's
  // end_layer: the point where a compressing cache enforces what end_layer left.
  virtual void end_forward() {}
  // Appends to `out` the chunks holding the live entries of (layer, kv_head).
  virtual void view(int layer, int kv_head, std::vector<KvChunk>& out) const = 0;
  // Tokens the sequence has seen (the next position), whether or not they are kept.
  virtual int64_t length() const = 0;
  // Bytes of storage the cache holds for the sequence: for a paged cache the whole
  // blocks (K, V and per-entry metadata, partly filled blocks included), not only
  // the live entries' K/V.
  virtual size_t bytes_used() const = 0;
  // Forgets everything; the cache can be reused for a new sequence.
  virtual void clear() = 0;
  // Where the K/V live (Backend::memory_domain): append() reads k and v there and
  // view() hands out chunks there; 0: host memory. A forward pass runs a cache
  // only on a backend of the same domain.
  virtual int memory_domain() const { return 0; }
};

// Every entry kept, in f32, contiguous per (layer, kv-head): [capacity, head_dim]
// for K and for V, so a view is one chunk and attention streams it linearly.
class FullKvCache final : public KvCache {
 public:
  // K/V stored in kv_dtype (kF32 or kBF16: rounded to nearest even at append).
  FullKvCache(KvShape shape, int64_t capacity, DType kv_dtype = DType::kF32);

  void append(int layer, std::span<const int32_t> positions, const float* k,
              const float* v) override;
  void view(int layer, int kv_head, std::vector<KvChunk>& out) const override;
  int64_t length() const override { return length_; }
  size_t bytes_used() const override;
  void clear() override;

  int64_t capacity() const { return capacity_; }

 private:
  KvShape shape_;
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<int64_t> layer_len_;  // [n_layers]: entries appended per layer
  std::vector<int32_t> positions_;  // [capacity]
  DType dtype_;
  // [n_layers * n_kv_heads][capacity * head_dim] elements of dtype_
  std::vector<std::vector<std::byte>> k_, v_;
};

}  // namespace ekva
