// What the KV layer needs to know about a model: its attention shape, its experts
// and which layers route, and the architecture name that calibration profiles are
// matched against. kv never includes model/ (see ARCHITECTURE.md, Layering); callers
// convert a ModelConfig with kv_shape_of (model/config.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ekva {

struct KvModelShape {
  std::string architecture;  // config.json "architectures"[0]; profiles are matched on it
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (GQA: n_heads / n_kv_heads query heads share one)
  int head_dim = 0;
  // 0: values are head_dim wide and stored beside the keys. Otherwise (MLA: the one
  // kv-head is the latent [c | k_rope]) the values are the first v_dim elements of each
  // key row and are not stored at all: an entry is one row of head_dim.
  int v_dim = 0;
  int n_experts = 0;       // routed experts per MoE layer; 0 for a dense model
  int sliding_window = 0;  // 0: none; otherwise a query sees keys with q - k < sliding_window
  std::vector<uint8_t> layer_is_moe;  // [n_layers]; empty: no layer routes

  bool is_moe_layer(int layer) const {
    return static_cast<size_t>(layer) < layer_is_moe.size() &&
           layer_is_moe[static_cast<size_t>(layer)] != 0;
  }
  int group_size() const { return n_heads / n_kv_heads; }
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

}  // namespace ekva
