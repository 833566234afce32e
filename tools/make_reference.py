#!/usr/bin/python3
"""Write tiny Hugging Face-format MoE / dense checkpoints plus float64 reference
logits that EKVA's C++ engine is tested against.

    /usr/bin/python3 tools/make_reference.py --out DIR [--only NAME[,NAME...]]
    /usr/bin/python3 tools/make_reference.py --bench-model PATH --bench-size-mb 400
    /usr/bin/python3 tools/make_reference.py --check DIR [--only NAME]

Each case folder holds config.json, model.safetensors (or model-0000i-of-0000n
.safetensors + model.safetensors.index.json) and reference.safetensors with
  tokens  I32 [N]
  logits  F32 [N, vocab]  causal forward over all N tokens, computed in float64
                          from the weights as stored (after bf16/f16 rounding)
  __metadata__: prefill_len, description, n_tokens, router_topk (JSON: per MoE
                layer, per token, the selected experts in descending order;
                element 0 is the top-1 "expert tag"), min_router_gap (smallest
                router-logit gap between the k-th and (k+1)-th expert and
                between the 1st and 2nd over all MoE layers and tokens),
                min_argmax_gap, logits_std, generator.
The engine prefills tokens[:prefill_len] and then decodes the rest one at a
time; its logits at every position should match `logits`.

Everything is deterministic (fixed seeds, numpy only). Tokens are chosen
position by position (the forward is causal, so later tokens cannot change
earlier routing) such that every router decision has a comfortable margin
(>= ROUTER_GAP in router-logit units), so rounding in the engine cannot flip an
expert choice. After writing, every case is read back with an independent
strict safetensors reader and the forward is recomputed from the files on disk;
the logits must match byte for byte.

Modeling details verified against transformers (modeling_mixtral.py,
modeling_qwen2_moe.py, modeling_qwen3_moe.py, modeling_olmoe.py, modeling_llama.py,
masking_utils.py and the configuration_*.py files): see reference_lib.py.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_lib as R  # noqa: E402

TRANSFORMERS_VERSION = "4.51.3"  # what config.json says wrote it (HF v4 layout)
N_TOKENS = 24
PREFILL_LEN = 12
ROUTER_GAP = 0.1  # minimum router-logit gap for every routing decision
SHARD_LIMIT = 2_000_000_000  # HF "2GB"

# ----------------------------------------------------------------------------
# configs (every field the transformers config class for the family uses)
# ----------------------------------------------------------------------------


def cfg_mixtral(p):
    c = {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": p["H"], "initializer_range": 0.02,
        "intermediate_size": p["I"], "max_position_embeddings": 4096,
        "num_attention_heads": p["nh"], "num_experts_per_tok": p["k"],
        "num_hidden_layers": p["L"], "num_key_value_heads": p["nkv"],
        "num_local_experts": p["E"], "output_router_logits": False,
        "rms_norm_eps": p.get("eps", 1e-5), "rope_theta": p.get("theta", 1e6),
        "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0,
        "sliding_window": p.get("sliding_window"), "tie_word_embeddings": False,
        "use_cache": True, "vocab_size": p["V"],
    }
    if p.get("hd") is not None:
        c["head_dim"] = p["hd"]
    return c


def cfg_mistral(p):
    c = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": p["H"], "initializer_range": 0.02,
        "intermediate_size": p["I"], "max_position_embeddings": 4096,
        "num_attention_heads": p["nh"], "num_hidden_layers": p["L"],
        "num_key_value_heads": p["nkv"], "rms_norm_eps": p.get("eps", 1e-5),
        "rope_theta": p.get("theta", 1e6),
        # MistralConfig defaults sliding_window to 4096 when absent: always write it.
        "sliding_window": p.get("sliding_window"),
        "tie_word_embeddings": p.get("tie", False), "use_cache": True, "vocab_size": p["V"],
    }
    if p.get("hd") is not None:
        c["head_dim"] = p["hd"]
    return c


def cfg_llama(p):
    c = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": p["H"], "initializer_range": 0.02,
        "intermediate_size": p["I"], "max_position_embeddings": 2048, "mlp_bias": False,
        "num_attention_heads": p["nh"], "num_hidden_layers": p["L"],
        "num_key_value_heads": p["nkv"], "pretraining_tp": 1,
        "rms_norm_eps": p.get("eps", 1e-6), "rope_scaling": None,
        "rope_theta": p.get("theta", 10000.0), "tie_word_embeddings": p.get("tie", False),
        "use_cache": True, "vocab_size": p["V"],
    }
    if p.get("hd") is not None:
        c["head_dim"] = p["hd"]
    return c


def cfg_qwen2_moe(p):
    return {
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
        "attention_dropout": 0.0, "bos_token_id": p["V"] - 2, "eos_token_id": p["V"] - 1,
        "decoder_sparse_step": p["step"], "hidden_act": "silu", "hidden_size": p["H"],
        "initializer_range": 0.02, "intermediate_size": p["I"],
        "max_position_embeddings": 8192, "max_window_layers": p["L"],
        "mlp_only_layers": p["mlp_only"], "moe_intermediate_size": p["moeI"],
        "norm_topk_prob": p["norm"], "num_attention_heads": p["nh"],
        "num_experts": p["E"], "num_experts_per_tok": p["k"], "num_hidden_layers": p["L"],
        "num_key_value_heads": p["nkv"], "output_router_logits": False, "qkv_bias": True,
        "rms_norm_eps": p.get("eps", 1e-6), "rope_scaling": None,
        "rope_theta": p.get("theta", 1e6), "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": p["shI"],
        # as in real Qwen1.5-MoE checkpoints: a window is present but disabled
        "sliding_window": 4096, "use_sliding_window": False,
        "tie_word_embeddings": p.get("tie", False), "use_cache": True, "vocab_size": p["V"],
    }


def cfg_qwen3_moe(p):
    c = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "attention_bias": p.get("bias", False), "attention_dropout": 0.0,
        "bos_token_id": p["V"] - 2, "decoder_sparse_step": p["step"], "eos_token_id": p["V"] - 1,
        "hidden_act": "silu", "hidden_size": p["H"], "initializer_range": 0.02,
        "intermediate_size": p["I"], "max_position_embeddings": 40960,
        "max_window_layers": p["L"], "mlp_only_layers": p["mlp_only"],
        "moe_intermediate_size": p["moeI"], "norm_topk_prob": p["norm"],
        "num_attention_heads": p["nh"], "num_experts": p["E"], "num_experts_per_tok": p["k"],
        "num_hidden_layers": p["L"], "num_key_value_heads": p["nkv"],
        "output_router_logits": False, "rms_norm_eps": p.get("eps", 1e-6), "rope_scaling": None,
        "rope_theta": p.get("theta", 1e6), "router_aux_loss_coef": 0.001,
        # as in real Qwen3-MoE checkpoints: no window
        "sliding_window": None, "use_sliding_window": False,
        "tie_word_embeddings": p.get("tie", False), "use_cache": True, "vocab_size": p["V"],
    }
    if p.get("hd") is not None:
        c["head_dim"] = p["hd"]
    return c


def cfg_olmoe(p):
    return {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": None,
        "clip_qkv": p.get("clip_qkv"), "eos_token_id": p["V"] - 1, "hidden_act": "silu",
        "hidden_size": p["H"], "initializer_range": 0.02, "intermediate_size": p["I"],
        "max_position_embeddings": 4096, "norm_topk_prob": p["norm"],
        "num_attention_heads": p["nh"], "num_experts": p["E"], "num_experts_per_tok": p["k"],
        "num_hidden_layers": p["L"], "num_key_value_heads": p["nkv"],
        "output_router_logits": False, "pad_token_id": 1, "rms_norm_eps": p.get("eps", 1e-5),
        "rope_scaling": None, "rope_theta": p.get("theta", 10000.0),
        "router_aux_loss_coef": 0.01, "tie_word_embeddings": p.get("tie", False),
        "use_cache": True, "vocab_size": p["V"],
    }


def cfg_deepseek(p):
    """DeepseekV2Config / DeepseekV3Config fields as real checkpoints write them."""
    v3 = p["arch"] == "deepseek_v3"
    c = {
        "architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        "model_type": p["arch"], "attention_bias": p.get("bias", False), "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001, "bos_token_id": p["V"] - 2, "eos_token_id": p["V"] - 1,
        "ep_size": 1, "first_k_dense_replace": p["first_dense"], "hidden_act": "silu",
        "hidden_size": p["H"], "initializer_range": 0.02, "intermediate_size": p["I"],
        "kv_lora_rank": p["kv_lora"], "max_position_embeddings": p.get("max_pos", 4096),
        "moe_intermediate_size": p["moeI"], "moe_layer_freq": 1, "n_group": p.get("n_group"),
        "n_routed_experts": p["E"], "n_shared_experts": p["n_shared"],
        "norm_topk_prob": p["norm"], "num_attention_heads": p["nh"],
        "num_experts_per_tok": p["k"], "num_hidden_layers": p["L"],
        "num_key_value_heads": p["nh"], "q_lora_rank": p["q_lora"],
        "qk_nope_head_dim": p["nope"], "qk_rope_head_dim": p["rope"],
        "rms_norm_eps": p.get("eps", 1e-6), "rope_scaling": p.get("rope_scaling"),
        "rope_theta": p.get("theta", 10000.0), "routed_scaling_factor": p["rsf"],
        "scoring_func": "sigmoid" if v3 else "softmax", "seq_aux": True,
        "tie_word_embeddings": p.get("tie", False), "topk_group": p.get("topk_group"),
        "topk_method": "noaux_tc" if v3 else p["method"], "use_cache": True,
        "v_head_dim": p["v"], "vocab_size": p["V"],
    }
    if v3:
        c["rope_interleave"] = p.get("interleave", True)
    return c


CFG_BUILDERS = {"mixtral": cfg_mixtral, "mistral": cfg_mistral, "llama": cfg_llama,
                "qwen2_moe": cfg_qwen2_moe, "qwen3_moe": cfg_qwen3_moe, "olmoe": cfg_olmoe,
                "deepseek_v2": cfg_deepseek, "deepseek_v3": cfg_deepseek}

# ----------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------

CASES = {
    "mixtral": dict(arch="mixtral", dtype="bfloat16", seed=101, shards=1,
                    V=384, H=64, L=2, nh=4, nkv=2, hd=16, I=128, E=8, k=2,
                    desc="Mixtral, bf16, untied, single file, GQA 2:1, head_dim 16"),
    "mixtral_sharded": dict(arch="mixtral", dtype="bfloat16", seed=102, shards=3,
                            V=320, H=64, L=3, nh=4, nkv=1, hd=32, I=96, E=8, k=2, theta=10000.0,
                            desc="Mixtral, bf16, 3 shards + index, GQA 4:1, head_dim 32 != hidden/heads 16"),
    "mixtral_f32": dict(arch="mixtral", dtype="float32", seed=103, shards=1,
                        V=384, H=64, L=2, nh=4, nkv=2, hd=16, I=128, E=8, k=2,
                        desc="Mixtral, f32 weights"),
    "mixtral_f16": dict(arch="mixtral", dtype="float16", seed=104, shards=1,
                        V=384, H=64, L=2, nh=4, nkv=2, hd=16, I=128, E=8, k=2,
                        desc="Mixtral, f16 weights"),
    "qwen2_moe": dict(arch="qwen2_moe", dtype="bfloat16", seed=105, shards=1,
                      V=512, H=96, L=3, nh=6, nkv=3, I=192, moeI=48, shI=128, E=8, k=4,
                      step=2, mlp_only=[0], norm=False, tie=False,
                      desc="Qwen2-MoE, bf16, qkv bias, shared expert with sigmoid gate, top-4 of 8, "
                           "norm_topk_prob false, decoder_sparse_step 2, mlp_only_layers [0] "
                           "(layers 0,2 dense, layer 1 sparse)"),
    "qwen2_moe_norm": dict(arch="qwen2_moe", dtype="bfloat16", seed=106, shards=1,
                           V=448, H=64, L=2, nh=4, nkv=2, I=128, moeI=64, shI=96, E=8, k=2,
                           step=1, mlp_only=[], norm=True, tie=True,
                           desc="Qwen2-MoE, bf16, norm_topk_prob true, tied embeddings, top-2 of 8, all layers sparse"),
    "qwen3_moe": dict(arch="qwen3_moe", dtype="bfloat16", seed=112, shards=1,
                      V=384, H=64, L=3, nh=4, nkv=2, hd=24, I=128, moeI=32, E=16, k=4,
                      step=1, mlp_only=[], norm=True, tie=False,
                      desc="Qwen3-MoE, bf16, per-head q/k norm, head_dim 24 != hidden/heads 16, GQA 2:1, "
                           "top-4 of 16 small experts, norm_topk_prob true, all layers sparse"),
    "qwen3_moe_dense": dict(arch="qwen3_moe", dtype="bfloat16", seed=113, shards=1,
                            V=352, H=64, L=4, nh=4, nkv=1, I=96, moeI=48, E=8, k=2,
                            step=2, mlp_only=[3], norm=False, tie=True, bias=True,
                            desc="Qwen3-MoE, bf16, decoder_sparse_step 2 + mlp_only_layers [3] "
                                 "(layers 0,2,3 dense, layer 1 sparse), norm_topk_prob false, "
                                 "attention_bias, tied, MQA, no head_dim field"),
    "qwen3_moe_sharded": dict(arch="qwen3_moe", dtype="bfloat16", seed=114, shards=3,
                              V=320, H=96, L=3, nh=8, nkv=4, hd=16, I=160, moeI=16, E=32, k=8,
                              step=1, mlp_only=[], norm=True, tie=False,
                              desc="Qwen3-MoE, bf16, 3 shards + index, top-8 of 32 experts of width 16, "
                                   "head_dim 16 != hidden/heads 12"),
    "olmoe": dict(arch="olmoe", dtype="bfloat16", seed=107, shards=1,
                  V=352, H=64, L=2, nh=4, nkv=2, I=96, E=8, k=2, norm=False,
                  desc="OLMoE, bf16, q_norm/k_norm over full projections, top-2 of 8, norm_topk_prob false, GQA 2:1"),
    "olmoe_clip": dict(arch="olmoe", dtype="bfloat16", seed=110, shards=1,
                       V=352, H=64, L=2, nh=4, nkv=4, I=96, E=8, k=2, norm=True, clip_qkv=1.5,
                       desc="OLMoE, bf16, clip_qkv 1.5 (clips ~13% of q/k/v elements), norm_topk_prob true, MHA"),
    "mistral": dict(arch="mistral", dtype="bfloat16", seed=108, shards=1,
                    V=320, H=64, L=2, nh=4, nkv=2, hd=16, I=160, sliding_window=None,
                    desc="Mistral dense, bf16, sliding_window null"),
    "mistral_swa": dict(arch="mistral", dtype="bfloat16", seed=111, shards=1,
                        V=320, H=64, L=2, nh=4, nkv=2, hd=16, I=160, sliding_window=8,
                        desc="Mistral dense, bf16, sliding_window 8 < N (query i sees keys i-7..i)"),
    # DeepSeek (MLA). A device script cross-checks these against transformers:
    # scripts/device_check_deepseek_reference.py (torch + transformers, eager attention).
    "deepseek_v2": dict(arch="deepseek_v2", dtype="bfloat16", seed=120, shards=1,
                        V=320, H=64, L=3, nh=4, q_lora=None, kv_lora=32, nope=16, rope=8, v=16,
                        I=96, moeI=32, E=8, k=2, n_shared=2, first_dense=1, method="greedy",
                        norm=False, rsf=1.5,
                        desc="DeepSeek-V2, bf16, MLA without a query LoRA (q_proj), kv_lora_rank 32, "
                             "rope 8 (pairs), softmax greedy top-2 of 8, routed_scaling_factor 1.5, "
                             "2 shared experts, first_k_dense_replace 1"),
    "deepseek_v2_group": dict(arch="deepseek_v2", dtype="bfloat16", seed=121, shards=3,
                              V=288, H=64, L=2, nh=8, q_lora=48, kv_lora=32, nope=8, rope=8, v=12,
                              I=96, moeI=16, E=16, k=3, n_shared=1, first_dense=0,
                              method="group_limited_greedy", n_group=4, topk_group=2,
                              norm=False, rsf=2.0,
                              desc="DeepSeek-V2, bf16, 3 shards + index, query LoRA 48, "
                                   "group_limited_greedy (4 groups, best 2) top-3 of 16, "
                                   "routed_scaling_factor 2, all layers sparse"),
    "deepseek_v3": dict(arch="deepseek_v3", dtype="bfloat16", seed=122, shards=1,
                        V=320, H=64, L=3, nh=4, q_lora=32, kv_lora=32, nope=16, rope=8, v=16,
                        I=96, moeI=24, E=16, k=4, n_shared=1, first_dense=1, n_group=4,
                        topk_group=2, norm=True, rsf=2.5,
                        desc="DeepSeek-V3, bf16, query LoRA 32, rope_interleave, noaux_tc: sigmoid + "
                             "e_score_correction_bias, 4 groups (top-2 sums), best 2, top-4 of 16, "
                             "norm_topk_prob, routed_scaling_factor 2.5, first_k_dense_replace 1"),
    "deepseek_v3_yarn": dict(arch="deepseek_v3", dtype="float32", seed=123, shards=1,
                             V=256, H=48, L=2, nh=6, q_lora=None, kv_lora=16, nope=8, rope=16, v=8,
                             I=64, moeI=16, E=8, k=2, n_shared=2, first_dense=0, n_group=1,
                             topk_group=1, norm=False, rsf=1.0, interleave=False, max_pos=1024,
                             rope_scaling={"type": "yarn", "factor": 8.0, "beta_fast": 32,
                                           "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                                           "original_max_position_embeddings": 128},
                             desc="DeepSeek-V3, f32, YaRN factor 8 (mscale = mscale_all_dim = 1: "
                                  "softmax scale x 1.46), no query LoRA, rope_interleave false, "
                                  "ungrouped sigmoid top-2 of 8, 2 shared experts"),
    "llama": dict(arch="llama", dtype="float32", seed=109, shards=1,
                  V=300, H=64, L=2, nh=4, nkv=1, I=144, tie=True,
                  desc="Llama dense, f32, tied embeddings, GQA 4:1, no head_dim field"),
}

# ----------------------------------------------------------------------------
# weights (module order, as state_dict() lists them)
# ----------------------------------------------------------------------------


def swiglu(prefix, I, H):
    """A SwiGLU FFN's three projections (gate, up, down) under `prefix`, in module order."""
    return [(prefix + "gate_proj.weight", (I, H), "lin"), (prefix + "up_proj.weight", (I, H), "lin"),
            (prefix + "down_proj.weight", (H, I), "lin")]


def layer_norms(p, H):
    return [(p + "input_layernorm.weight", (H,), "norm"),
            (p + "post_attention_layernorm.weight", (H,), "norm")]


def final_tensors(s, H, V):
    """The final norm and (untied) LM head."""
    return [("model.norm.weight", (H,), "norm")] + ([] if s["tie"] else [("lm_head.weight", (V, H), "lin")])


def weight_shapes(cfg):
    """[(name, shape, kind)] in module order; kind picks the init scale."""
    s = R.model_spec(cfg)
    H, nh, nkv, hd, V = s["H"], s["nh"], s["nkv"], s["hd"], s["V"]
    out = [("model.embed_tokens.weight", (V, H), "embed")]
    if s["mt"] in ("deepseek_v2", "deepseek_v3"):
        return deepseek_shapes(cfg, s, out)
    for i in range(s["L"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out += [(a + "q_proj.weight", (nh * hd, H), "lin")]
        if s["qkv_bias"]:
            out += [(a + "q_proj.bias", (nh * hd,), "bias")]
        out += [(a + "k_proj.weight", (nkv * hd, H), "lin")]
        if s["qkv_bias"]:
            out += [(a + "k_proj.bias", (nkv * hd,), "bias")]
        out += [(a + "v_proj.weight", (nkv * hd, H), "lin")]
        if s["qkv_bias"]:
            out += [(a + "v_proj.bias", (nkv * hd,), "bias")]
        out += [(a + "o_proj.weight", (H, nh * hd), "lin")]
        if s["o_bias"]:
            out += [(a + "o_proj.bias", (H,), "bias")]
        if s["qk_norm"] == "projection":
            out += [(a + "q_norm.weight", (nh * hd,), "norm"), (a + "k_norm.weight", (nkv * hd,), "norm")]
        elif s["qk_norm"] == "head":
            out += [(a + "q_norm.weight", (hd,), "norm"), (a + "k_norm.weight", (hd,), "norm")]
        kind = s["kinds"][i]
        if kind == "mixtral_moe":
            m = p + "block_sparse_moe."
            I = cfg["intermediate_size"]
            out += [(m + "gate.weight", (s["E"], H), "router")]
            for e in range(s["E"]):
                out += [(f"{m}experts.{e}.w1.weight", (I, H), "lin"),
                        (f"{m}experts.{e}.w2.weight", (H, I), "lin"),
                        (f"{m}experts.{e}.w3.weight", (I, H), "lin")]
        elif kind in ("moe", "qwen_moe"):
            m = p + "mlp."
            I = s["expert_I"]
            out += [(m + "gate.weight", (s["E"], H), "router")]
            for e in range(s["E"]):
                out += swiglu(f"{m}experts.{e}.", I, H)
            if kind == "qwen_moe":
                S = cfg["shared_expert_intermediate_size"]
                out += swiglu(m + "shared_expert.", S, H) + [(m + "shared_expert_gate.weight", (1, H), "lin")]
        else:
            m = p + "mlp."
            I = cfg["intermediate_size"]
            out += swiglu(m, I, H)
        out += layer_norms(p, H)
    return out + final_tensors(s, H, V)


def deepseek_shapes(cfg, s, out):
    H, nh, V = s["H"], s["nh"], s["V"]
    qk = s["nope"] + s["rope"]
    for i in range(s["L"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        if s["q_lora"]:
            out += [(a + "q_a_proj.weight", (s["q_lora"], H), "lin")]
            if s["bias"]:
                out += [(a + "q_a_proj.bias", (s["q_lora"],), "bias")]
            out += [(a + "q_a_layernorm.weight", (s["q_lora"],), "norm"),
                    (a + "q_b_proj.weight", (nh * qk, s["q_lora"]), "lin")]
        else:
            out += [(a + "q_proj.weight", (nh * qk, H), "lin")]
        out += [(a + "kv_a_proj_with_mqa.weight", (s["kv_lora"] + s["rope"], H), "lin")]
        if s["bias"]:
            out += [(a + "kv_a_proj_with_mqa.bias", (s["kv_lora"] + s["rope"],), "bias")]
        out += [(a + "kv_a_layernorm.weight", (s["kv_lora"],), "norm"),
                (a + "kv_b_proj.weight", (nh * (s["nope"] + s["v_head"]), s["kv_lora"]), "lin"),
                (a + "o_proj.weight", (H, nh * s["v_head"]), "lin")]
        if s["bias"]:
            out += [(a + "o_proj.bias", (H,), "bias")]
        m = p + "mlp."
        if s["kinds"][i] == "dense":
            I = s["dense_I"]
            out += swiglu(m, I, H)
        else:
            I = s["expert_I"]
            out += [(m + "gate.weight", (s["E"], H), "router")]
            if s["scoring"] == "sigmoid":
                out += [(m + "gate.e_score_correction_bias", (s["E"],), "score_bias")]
            for e in range(s["E"]):
                out += swiglu(f"{m}experts.{e}.", I, H)
            if s["shared_I"]:
                S = s["shared_I"]
                out += swiglu(m + "shared_experts.", S, H)
        out += layer_norms(p, H)
    return out + final_tensors(s, H, V)


def init_std(kind, shape, tied):
    """Scales chosen so that activations stay O(1) and logits are O(1):
    linear layers 1/sqrt(fan_in), router 2/sqrt(H) (router logits ~N(0, 2^2):
    diverse routing with clear gaps), biases 0.1, norms 1 +- 0.1; tied
    embeddings 2/sqrt(H) (they are also the LM head)."""
    if kind == "embed":
        return 2.0 / np.sqrt(shape[1]) if tied else 1.0
    if kind == "lin":
        return 1.0 / np.sqrt(shape[1])
    if kind == "router":
        return 2.0 / np.sqrt(shape[1])
    if kind == "bias":
        return 0.1
    if kind == "norm":
        return 0.1
    if kind == "score_bias":  # small next to sigmoid scores: reorders some choices only
        return 0.05
    raise ValueError(kind)


def gen_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    tied = bool(cfg.get("tie_word_embeddings", False))
    out = {}
    for name, shape, kind in weight_shapes(cfg):
        a = rng.standard_normal(shape) * init_std(kind, shape, tied)
        if kind == "norm":
            a = 1.0 + a
        out[name] = a.astype(np.float32)
    return out


# ----------------------------------------------------------------------------
# token choice
# ----------------------------------------------------------------------------


def choose_tokens(cfg, w64, seed, n=N_TOKENS):
    """Pick tokens position by position so every routing decision at that
    position (k-th vs (k+1)-th, and 1st vs 2nd) has a gap >= ROUTER_GAP."""
    s = R.model_spec(cfg)
    rng = np.random.default_rng(seed)
    moe = any(k != "dense" for k in s["kinds"])
    toks = []
    tries = 0
    for t in range(n):
        for attempt in range(200):
            cand = int(rng.integers(0, s["V"]))
            tries += 1
            if not moe:
                break
            _, info = R.forward(cfg, w64, toks + [cand])
            gk, g1 = R.router_margins(info, s["k"])
            if min(gk[:, t].min(), g1[:, t].min()) >= s.get("router_gap", ROUTER_GAP):
                break
        else:
            raise RuntimeError(f"no token with a clear routing margin at position {t}")
        toks.append(cand)
    return np.array(toks, dtype=np.int32), tries


# ----------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def split_shards(names_sizes, nshards):
    total = sum(sz for _, sz in names_sizes)
    groups = [[] for _ in range(nshards)]
    cum = 0
    for name, sz in names_sizes:
        g = min(nshards - 1, int(cum * nshards // total))
        groups[g].append(name)
        cum += sz
    if any(not g for g in groups):
        raise RuntimeError("empty shard")
    return groups


def write_weights(folder, stored, st_dtype, nshards):
    """stored: {name: storage array} in module order."""
    if nshards == 1:
        R.write_safetensors(os.path.join(folder, "model.safetensors"),
                            {n: (st_dtype, a) for n, a in stored.items()}, {"format": "pt"})
        return ["model.safetensors"]
    groups = split_shards([(n, a.nbytes) for n, a in stored.items()], nshards)
    weight_map, files = {}, []
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{nshards:05d}.safetensors"
        R.write_safetensors(os.path.join(folder, fn), {n: (st_dtype, stored[n]) for n in g}, {"format": "pt"})
        files.append(fn)
        for n in g:
            weight_map[n] = fn
    total = sum(a.nbytes for a in stored.values())
    write_json(os.path.join(folder, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files + ["model.safetensors.index.json"]


def make_case(out_dir, name, p):
    t0 = time.time()
    cfg = CFG_BUILDERS[p["arch"]](p)
    cfg["torch_dtype"] = p["dtype"]
    cfg["transformers_version"] = TRANSFORMERS_VERSION
    st_dtype = R.TORCH_DTYPE_TO_ST[p["dtype"]]
    w32 = gen_weights(cfg, p["seed"])
    stored = {n: R.to_storage(a, st_dtype) for n, a in w32.items()}
    w64 = {n: R.storage_to_f64(a, st_dtype) for n, a in stored.items()}
    tokens, tries = choose_tokens(cfg, w64, p["seed"] + 1000)
    logits64, info = R.forward(cfg, w64, tokens)
    logits = logits64.astype(np.float32)
    stats = sanity(cfg, logits64, info)

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    for fn in os.listdir(folder):  # stale files from an older layout
        if fn.endswith(".safetensors") or fn.endswith(".json"):
            os.remove(os.path.join(folder, fn))
    write_json(os.path.join(folder, "config.json"), cfg)
    files = write_weights(folder, stored, st_dtype, p["shards"])
    router_topk = {str(r["layer"]): r["topk"].tolist() for r in info["router"]}
    meta = {
        "prefill_len": str(PREFILL_LEN),
        "description": p["desc"],
        "n_tokens": str(len(tokens)),
        "router_topk": json.dumps(router_topk, separators=(",", ":")),
        "min_router_gap": f"{stats['min_gap']:.6g}" if info["router"] else "",
        "min_argmax_gap": f"{stats['min_argmax_gap']:.6g}",
        "logits_std": f"{stats['std']:.6g}",
        "generator": "tools/make_reference.py (float64 numpy reference)",
    }
    R.write_safetensors(os.path.join(folder, "reference.safetensors"),
                        {"tokens": ("I32", tokens), "logits": ("F32", logits)}, meta)
    verify_case(folder, expect_names=list(w32))
    s = R.model_spec(cfg)
    moe = (f" E={s['E']} top{s['k']} renorm={int(s['renorm'])} layers={''.join('D' if k == 'dense' else 'S' for k in s['kinds'])}"
           f" top1-distinct={stats['top1_distinct']} min_gap={stats['min_gap']:.3f}") if info["router"] else ""
    print(f"{name:16s} {p['arch']:9s} {p['dtype']:8s} V={s['V']} H={s['H']} L={s['L']} "
          f"heads={s['nh']}/{s['nkv']}x{s['hd']}{moe} tie={int(s['tie'])} files={len(files)} "
          f"N={len(tokens)} prefill={PREFILL_LEN} logits_std={stats['std']:.2f} "
          f"tok_tries={tries} {time.time() - t0:.2f}s", flush=True)


def sanity(cfg, logits, info):
    if not np.all(np.isfinite(logits)):
        raise RuntimeError("non-finite logits")
    std = float(logits.std(axis=-1).mean())
    if not (0.3 < std < 10.0):
        raise RuntimeError(f"degenerate logits, std {std}")
    am = logits.argmax(-1)
    if len(set(am.tolist())) < 3:
        raise RuntimeError("argmax nearly constant")
    srt = -np.sort(-logits, axis=-1)
    st = {"std": std, "min_argmax_gap": float((srt[:, 0] - srt[:, 1]).min()),
          "min_gap": float("inf"), "top1_distinct": ""}
    if info["router"]:
        s = R.model_spec(cfg)
        gk, g1 = R.router_margins(info, s["k"])
        st["min_gap"] = float(min(gk.min(), g1.min()))
        d = []
        for r in info["router"]:
            n1 = len(set(r["topk"][:, 0].tolist()))
            if n1 < 4:
                raise RuntimeError(f"layer {r['layer']}: only {n1} distinct top-1 experts")
            d.append(str(n1))
        st["top1_distinct"] = "/".join(d)
    return st


def verify_case(folder, expect_names=None):
    """Independent read-back: strict parse of every file, then recompute the
    forward from what is on disk and require byte-identical logits."""
    cfg, w, dts = R.load_checkpoint(folder)
    if expect_names is not None and set(w) != set(expect_names):
        raise RuntimeError(f"{folder}: tensor names differ: {set(w) ^ set(expect_names)}")
    want = R.TORCH_DTYPE_TO_ST[cfg["torch_dtype"]]
    if set(dts.values()) != {want}:
        raise RuntimeError(f"{folder}: dtypes {set(dts.values())} != {want}")
    meta, ref = R.read_safetensors(os.path.join(folder, "reference.safetensors"))
    if set(ref) != {"tokens", "logits"}:
        raise RuntimeError("reference.safetensors must hold exactly tokens and logits")
    tokens = ref["tokens"][1]
    logits = ref["logits"][1]
    if ref["tokens"][0] != "I32" or ref["logits"][0] != "F32":
        raise RuntimeError("reference dtypes")
    if logits.shape != (tokens.shape[0], cfg["vocab_size"]):
        raise RuntimeError("logits shape")
    if not (0 < int(meta["prefill_len"]) < tokens.shape[0]):
        raise RuntimeError("prefill_len")
    again, _ = R.forward(cfg, w, tokens)
    if again.astype(np.float32).tobytes() != logits.tobytes():
        raise RuntimeError(f"{folder}: recomputed logits differ")
    return cfg, meta


# ----------------------------------------------------------------------------
# benchmark checkpoint
# ----------------------------------------------------------------------------


def bench_config(size_mb):
    """Mixtral-shaped: hidden 1024, 32 heads / 8 kv heads x 128, 8 experts
    top-2, vocab 32000. Layers from the size with intermediate 2048, then the
    intermediate size (multiple of 128) is tuned so the file is ~size_mb MB."""
    H, nh, nkv, hd, E, V = 1024, 32, 8, 128, 8, 32000
    attn = 2 * (H * nh * hd + 2 * H * nkv * hd + nh * hd * H + E * H + 2 * H)
    fixed = 2 * (2 * V * H + H)
    target = size_mb * 1e6
    L = max(1, int(round((target - fixed) / (attn + 2 * E * 3 * H * 2048))))
    I = int(round((target - fixed - L * attn) / (L * 2 * E * 3 * H) / 128.0)) * 128
    I = max(256, I)
    p = dict(V=V, H=H, L=L, nh=nh, nkv=nkv, hd=hd, I=I, E=E, k=2, theta=1e6)
    cfg = cfg_mixtral(p)
    cfg["max_position_embeddings"] = 32768
    cfg["torch_dtype"] = "bfloat16"
    cfg["transformers_version"] = TRANSFORMERS_VERSION
    return cfg


def mixtral8x7b_bench_config(layers):
    """Mixtral-8x7B's shapes (hidden 4096, 32/8 heads x 128, 8 experts of 14336 top-2,
    vocab 32000) with `layers` layers: the issue's end-to-end checkpoint."""
    p = dict(V=32000, H=4096, L=layers, nh=32, nkv=8, hd=128, I=14336, E=8, k=2, theta=1e6)
    cfg = cfg_mixtral(p)
    cfg["max_position_embeddings"] = 32768 + 1024
    cfg["torch_dtype"] = "bfloat16"
    cfg["transformers_version"] = TRANSFORMERS_VERSION
    return cfg


# Real checkpoints' per-layer shapes for the CPU decode benchmarks (fewer layers).
BENCH_ARCHS = {
    # Qwen3-30B-A3B: 128 experts of 768 top-8, 32/4 heads x 128, per-head q/k norm.
    "qwen3_30b_a3b": dict(arch="qwen3_moe", V=151936, H=2048, nh=32, nkv=4, hd=128, I=6144,
                          moeI=768, E=128, k=8, step=1, mlp_only=[], norm=True, tie=False,
                          theta=1e6),
    # DeepSeek-V2-Lite: MLA (kv_lora 512, rope 64, no query LoRA), 64 routed experts of
    # 1408 top-6 + 2 shared, layer 0 dense (10944), YaRN factor 40 as shipped.
    "deepseek_v2_lite": dict(arch="deepseek_v2", V=102400, H=2048, nh=16, q_lora=None,
                             kv_lora=512, nope=128, rope=64, v=128, I=10944, moeI=1408, E=64,
                             k=6, n_shared=2, first_dense=1, method="greedy", norm=False,
                             rsf=1.0, max_pos=163840,
                             rope_scaling={"type": "yarn", "factor": 40,
                                           "original_max_position_embeddings": 4096,
                                           "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                           "mscale_all_dim": 0.707}),
}


def arch_bench_config(name, layers):
    p = dict(BENCH_ARCHS[name], L=layers)
    cfg = CFG_BUILDERS[p["arch"]](p)
    cfg["torch_dtype"] = "bfloat16"
    cfg["transformers_version"] = TRANSFORMERS_VERSION
    return cfg


def _lazy_bf16(seed, idx, shape, kind, tiled=False):
    """Random normal bf16 at the tensor's init scale, streamed in 8M-value chunks.
    tiled: every chunk after the first of a tensor repeats the first (rolled by its
    index), for multi-GB timing checkpoints whose values do not matter; routers,
    norms and embeddings stay fully random."""
    std = init_std(kind, shape, False)
    rows_per = max(1, (1 << 23) // int(np.prod(shape[1:], dtype=np.int64) or 1))
    tiled = tiled and kind not in ("norm", "router", "embed")

    def chunks():
        rng = np.random.default_rng([seed, idx])
        first = None
        for i, r0 in enumerate(range(0, shape[0], rows_per)):
            sub = (min(rows_per, shape[0] - r0),) + tuple(shape[1:])
            if tiled and first is not None and sub == first.shape:
                yield np.roll(first, i)
                continue
            a = rng.standard_normal(sub, dtype=np.float32)
            a *= np.float32(std)
            if kind == "norm":
                a += np.float32(1.0)
            bits = R.f32_to_bf16_bits(a)
            if first is None:
                first = bits
            yield bits
    return R.LazyTensor("BF16", shape, chunks)


def make_bench(path, size_mb, seed=4242, mixtral_layers=0, arch=None, layers=2):
    t0 = time.time()
    if arch:
        cfg = arch_bench_config(arch, layers)
    elif mixtral_layers > 0:
        cfg = mixtral8x7b_bench_config(mixtral_layers)
    else:
        cfg = bench_config(size_mb)
    os.makedirs(path, exist_ok=True)
    for fn in os.listdir(path):
        if fn.endswith(".safetensors") or fn.endswith(".json"):
            os.remove(os.path.join(path, fn))
    shapes = weight_shapes(cfg)
    tensors = [(n, _lazy_bf16(seed, i, shape, kind, tiled=mixtral_layers > 0))
               for i, (n, shape, kind) in enumerate(shapes)]
    total = sum(t.nbytes for _, t in tensors)
    # HF-style sharding: module order, start a new shard when the limit would be passed
    groups, cur, cur_sz = [], [], 0
    for n, t in tensors:
        if cur and cur_sz + t.nbytes > SHARD_LIMIT:
            groups.append(cur)
            cur, cur_sz = [], 0
        cur.append((n, t))
        cur_sz += t.nbytes
    groups.append(cur)
    write_json(os.path.join(path, "config.json"), cfg)
    if len(groups) == 1:
        R.write_safetensors(os.path.join(path, "model.safetensors"), dict(groups[0]), {"format": "pt"})
        files = ["model.safetensors"]
    else:
        weight_map, files = {}, []
        for i, g in enumerate(groups):
            fn = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            R.write_safetensors(os.path.join(path, fn), dict(g), {"format": "pt"})
            files.append(fn)
            for n, _ in g:
                weight_map[n] = fn
        write_json(os.path.join(path, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    for fn in files:  # cheap structural check (header + offsets, no data decode)
        R.read_safetensors(os.path.join(path, fn), with_data=False)
    experts = cfg.get("num_local_experts", cfg.get("num_experts", cfg.get("n_routed_experts")))
    print(f"bench            {cfg['model_type']} bfloat16 V={cfg['vocab_size']} H={cfg['hidden_size']} "
          f"L={cfg['num_hidden_layers']} heads={cfg['num_attention_heads']}/{cfg['num_key_value_heads']}"
          f"x{cfg.get('head_dim', cfg.get('v_head_dim'))} E={experts} top{cfg['num_experts_per_tok']} "
          f"I={cfg.get('moe_intermediate_size', cfg['intermediate_size'])} size={total / 1e6:.1f}MB "
          f"files={len(files)} {time.time() - t0:.2f}s", flush=True)


# ----------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="output directory (one subfolder per case)")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--check", metavar="DIR", help="re-verify existing case folders under DIR")
    ap.add_argument("--bench-model", metavar="PATH", help="write a random Mixtral-shaped bf16 checkpoint here")
    ap.add_argument("--bench-size-mb", type=float, default=400.0)
    ap.add_argument("--bench-arch", choices=sorted(BENCH_ARCHS),
                    help="instead: a real checkpoint's shapes with --bench-layers layers")
    ap.add_argument("--bench-layers", type=int, default=2)
    ap.add_argument("--bench-mixtral-layers", type=int, default=0, metavar="N",
                    help="instead: Mixtral-8x7B's shapes with N layers (tiled random weights)")
    a = ap.parse_args(argv)
    if a.list:
        for n, p in CASES.items():
            print(f"{n:16s} {p['desc']}")
        return 0
    names = list(CASES)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        bad = [n for n in names if n not in CASES]
        if bad:
            ap.error(f"unknown case(s) {bad}; known: {', '.join(CASES)}")
    if not (a.out or a.check or a.bench_model):
        ap.error("need --out, --check or --bench-model")
    t0 = time.time()
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        for n in names:
            make_case(a.out, n, CASES[n])
    if a.check:
        for n in names:
            folder = os.path.join(a.check, n)
            if not os.path.isdir(folder):
                if a.only:
                    raise SystemExit(f"missing {folder}")
                continue
            verify_case(folder)
            print(f"{n:16s} OK (files parse strictly, logits recompute byte-identical)", flush=True)
    if a.bench_model:
        make_bench(a.bench_model, a.bench_size_mb, mixtral_layers=a.bench_mixtral_layers,
                   arch=a.bench_arch, layers=a.bench_layers)
    print(f"total {time.time() - t0:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
