#include "runtime/runtime.h"

#include "core/error.h"

namespace ekva {

std::unique_ptr<KvCache> Runtime::make_cache(int64_t capacity, PagedKvStore* store) const {
  const ModelConfig& c = model->config();
  const KvShape shape = kv_cache_shape(c);
  if (gpu && !compression) return make_device_full_cache(device, *gpu, shape, capacity, kv_dtype);
  if (!compression) return std::make_unique<FullKvCache>(shape, capacity, kv_dtype);
  if (store != nullptr)
    return std::make_unique<CompressedKvCache>(*store, c, *compression, backend());
  return std::make_unique<CompressedKvCache>(c, *compression, context, backend());
}

Backend& Runtime::backend() const {
  if (profiler) return *profiler;
  if (gpu) return *gpu;
  return *cpu;
}

void Runtime::begin_profile_step(std::string_view phase,
                                 std::span<const SequenceStep> batch) const {
  if (!profiler) return;
  int64_t tokens = 0;
  for (const SequenceStep& st : batch) tokens += static_cast<int64_t>(st.tokens.size());
  profiler->begin_step(phase, static_cast<int64_t>(batch.size()), tokens);
}

void Runtime::end_profile_step() const {
  if (profiler) profiler->end_step();
}

StoreConfig Runtime::store_config() const {
  EKVA_CHECK(compression.has_value(), "store_config: the engine does not compress its KV cache");
  return store_config_for(model->config(), *compression, context);
}

size_t Runtime::full_kv_bytes(int64_t n_tokens) const {
  const ModelConfig& c = model->config();
  // MLA stores one latent row per entry (the values are read from it).
  return static_cast<size_t>(n_tokens) * c.n_layers * c.n_kv_heads * (c.is_mla() ? 1 : 2) *
         c.head_dim * dtype_size(kv_dtype);
}

void Runtime::check_prompt(std::span<const int32_t> ids) const {
  if (ids.empty()) fail("the prompt encodes to no tokens");
  const int vocab = model->config().vocab_size;
  for (const int32_t id : ids)
    if (id < 0 || id >= vocab)
      fail("prompt token id {} is outside the vocabulary (0..{})", id, vocab - 1);
  if (static_cast<int64_t>(ids.size()) >= context)
    fail("prompt of {} tokens does not fit the context of {} tokens (leave room for one more)",
         ids.size(), context);
}

}  // namespace ekva
