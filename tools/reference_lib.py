"""Independent numpy reference for EKVA: safetensors I/O, bf16, and a float64
forward pass for the Hugging Face Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE /
Mistral / Llama decoder families, driven only by config.json and the tensors as stored.

numpy only (Debian python3 + numpy 1.24). No torch, no safetensors package.

Modeling rules (checked against transformers' modeling_*.py; see
make_reference.py's module docstring for the list):
  * RMSNorm: x * rsqrt(mean(x^2) + eps) * w
  * RoPE (rotate_half / NeoX layout): inv_freq = theta^-(2i/d), emb = [f, f],
    q' = q*cos + rotate_half(q)*sin, rotate_half(x) = [-x2, x1]
  * attention scale head_dim^-0.5, GQA: query head h reads kv head h // (nh/nkv)
  * sliding window (Mistral/Mixtral): key j visible to query i iff
    i - W < j <= i (W keys including itself; transformers masking_utils)
  * MoE router: softmax(router logits) in float, top-k, renormalise
    (Mixtral always; Qwen2-MoE/Qwen3-MoE/OLMoE only if norm_topk_prob)
  * Qwen2-MoE: + sigmoid(x @ shared_expert_gate^T) * shared_expert(x)
  * Qwen2-MoE / Qwen3-MoE: layer i is sparse iff i not in mlp_only_layers and
    (i + 1) % decoder_sparse_step == 0; dense layers use intermediate_size,
    experts moe_intermediate_size
  * Qwen3-MoE: q_norm / k_norm are RMSNorms of size head_dim applied to each
    head AFTER the head reshape and BEFORE RoPE; attention_bias puts biases
    on q, k, v and o; no shared expert; head_dim from config.json if given,
    else hidden / heads; num_key_value_heads defaults to 4 (Qwen3MoeConfig)
  * OLMoE: q_norm / k_norm are RMSNorms over the whole projected q (size
    hidden) / k (size head_dim*nkv) BEFORE the head reshape; clip_qkv clamps
    q, k, v (after the norms) to [-clip, clip].
  * DeepSeek-V2 / V3 (modeling_deepseek_v2.py / _v3.py): multi-head latent
    attention, computed here in the plain (non-absorbed) form transformers uses:
    q = q_b_proj(q_a_layernorm(q_a_proj(x))) or q_proj(x), split per head into
    [qk_nope | qk_rope]; kv_a_proj_with_mqa(x) = [c | k_rope]; k_nope, v =
    kv_b_proj(kv_a_layernorm(c)) per head; k_rope shared by all heads. The
    q_a / kv_a layernorms use RMSNorm's default eps 1e-6, not rms_norm_eps.
    RoPE over the rope dims only: V2 rotates pairs (2i, 2i+1) (view_as_complex);
    V3 with rope_interleave de-interleaves (view(d/2, 2).transpose) then
    rotate_half, else plain rotate_half. cos/sin times YaRN's attention_factor.
    Scale qk_head_dim^-0.5, times get_mscale(factor, mscale_all_dim)^2 under a
    rope_scaling with mscale_all_dim (DeepseekV3Attention and DeepSeek's V2
    code; transformers' V2 lacks it: see scripts/device_check_deepseek_reference.py).
    Layer i routes iff i >= first_k_dense_replace; shared experts (ungated,
    width moe_intermediate_size * n_shared_experts) are added.
    V2 routing: softmax; greedy top-k, or group_limited_greedy (group score =
    max prob, top topk_group groups, the others masked to 0); weights * rsf.
    V3 routing (noaux_tc): s = sigmoid(logits); choice = s + e_score_correction_bias;
    group score = sum of the group's top 2 choices; top topk_group groups, the
    others masked to 0.0; top-k of choice; weights = s of those, / (sum + 1e-20)
    if norm_topk_prob, then * routed_scaling_factor.
"""

import math

import json
import os
import struct

import numpy as np

# ----------------------------------------------------------------------------
# dtypes
# ----------------------------------------------------------------------------

ST_DTYPES = {
    # name: (numpy storage dtype, itemsize)
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # stored as raw uint16 bit patterns
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "U8": (np.dtype("u1"), 1),
    "I8": (np.dtype("i1"), 1),
}
# safetensors (Rust) orders tensors in a file by dtype, larger enum value
# first, then by name; this keeps every tensor naturally aligned.
_DTYPE_RANK = {"U8": 1, "I8": 2, "I16": 3, "F16": 6, "BF16": 7, "I32": 8,
               "F32": 10, "F64": 11, "I64": 12}

TORCH_DTYPE_TO_ST = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round-to-nearest-even.
    (No NaN handling needed: inputs are finite.)"""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    bias = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((u + bias) >> np.uint32(16)).astype(np.uint16)


def bf16_bits_to_f32(b):
    return (np.ascontiguousarray(b, dtype=np.uint16).astype(np.uint32)
            << np.uint32(16)).view(np.float32)


def to_storage(a, st_dtype):
    """float array -> storage array for a safetensors dtype."""
    if st_dtype == "BF16":
        return f32_to_bf16_bits(np.asarray(a, dtype=np.float32))
    if st_dtype == "F16":
        return np.asarray(a, dtype=np.float32).astype(np.float16)
    if st_dtype == "F32":
        return np.asarray(a, dtype=np.float32)
    if st_dtype == "I32":
        return np.asarray(a, dtype=np.int32)
    raise ValueError(st_dtype)


def storage_to_f64(arr, st_dtype):
    """storage array (as written) -> float64 values, exactly."""
    if st_dtype == "BF16":
        return bf16_bits_to_f32(arr).astype(np.float64)
    return np.asarray(arr).astype(np.float64)


# ----------------------------------------------------------------------------
# safetensors writer / reader
# ----------------------------------------------------------------------------

class LazyTensor:
    """A tensor whose bytes are produced in chunks (for big checkpoints)."""

    def __init__(self, st_dtype, shape, chunks_fn):
        self.st_dtype = st_dtype
        self.shape = tuple(int(s) for s in shape)
        self.chunks_fn = chunks_fn  # () -> iterable of numpy arrays/bytes

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * ST_DTYPES[self.st_dtype][1]


def _entry(name, t):
    if isinstance(t, LazyTensor):
        return name, t.st_dtype, t.shape, t.nbytes, t
    st_dtype, arr = t
    arr = np.ascontiguousarray(arr, dtype=ST_DTYPES[st_dtype][0])
    return name, st_dtype, arr.shape, arr.nbytes, arr


def safetensors_header(entries, metadata=None):
    """entries: list of (name, st_dtype, shape, nbytes, payload) already in
    data order. Returns the padded header bytes."""
    hdr = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("__metadata__ must be str -> str")
        hdr["__metadata__"] = dict(metadata)
    off = 0
    for name, st_dtype, shape, nbytes, _ in entries:
        hdr[name] = {"dtype": st_dtype, "shape": [int(s) for s in shape],
                     "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return raw


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> (st_dtype, ndarray) or LazyTensor.
    Layout as HF safetensors writes it: u64 LE header length, JSON header
    (padded with spaces to a multiple of 8), data packed in (dtype desc,
    name) order with no gaps. Returns total data bytes."""
    entries = [_entry(n, t) for n, t in tensors.items()]
    entries.sort(key=lambda e: (-_DTYPE_RANK[e[1]], e[0]))
    header = safetensors_header(entries, metadata)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, st_dtype, shape, nbytes, payload in entries:
            if isinstance(payload, LazyTensor):
                written = 0
                for chunk in payload.chunks_fn():
                    b = chunk.tobytes() if isinstance(chunk, np.ndarray) else bytes(chunk)
                    f.write(b)
                    written += len(b)
                if written != nbytes:
                    raise RuntimeError(f"{name}: wrote {written} bytes, expected {nbytes}")
            else:
                f.write(payload.tobytes())
    os.replace(tmp, path)
    return sum(e[3] for e in entries)


def read_safetensors(path, with_data=True):
    """Strict independent reader. Returns (metadata, {name: (st_dtype, ndarray)})
    or, with with_data=False, {name: (st_dtype, shape)} without reading the data."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short")
        (n,) = struct.unpack("<Q", head)
        if n % 8 != 0:
            raise ValueError(f"{path}: header length {n} not a multiple of 8")
        hdr_raw = f.read(n)
        data_len = os.fstat(f.fileno()).st_size - 8 - n
        blob = f.read() if with_data else None
    if hdr_raw[:1] != b"{":
        raise ValueError(f"{path}: header does not start with '{{'")
    hdr = json.loads(hdr_raw.decode("utf-8"))
    meta = hdr.pop("__metadata__", None)
    if meta is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    data = memoryview(blob) if with_data else None
    spans = []
    out = {}
    for name, info in hdr.items():
        st_dtype = info["dtype"]
        shape = tuple(info["shape"])
        a, b = info["data_offsets"]
        np_dt, isz = ST_DTYPES[st_dtype]
        if b - a != int(np.prod(shape, dtype=np.int64)) * isz:
            raise ValueError(f"{path}:{name}: size mismatch")
        if a % isz != 0:
            raise ValueError(f"{path}:{name}: offset {a} not aligned to {isz}")
        spans.append((a, b, name))
        if with_data:
            out[name] = (st_dtype, np.frombuffer(data[a:b], dtype=np_dt).reshape(shape))
        else:
            out[name] = (st_dtype, shape)
    spans.sort()
    pos = 0
    for a, b, name in spans:
        if a != pos:
            raise ValueError(f"{path}:{name}: gap/overlap at {pos}..{a}")
        pos = b
    if pos != data_len:
        raise ValueError(f"{path}: {data_len - pos} trailing bytes")
    return meta, out


def load_checkpoint(folder):
    """Read config.json + model.safetensors or the sharded set via the index.
    Returns (config, {name: float64 array}, {name: st_dtype})."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    idx_path = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    tensors = {}
    if os.path.exists(idx_path):
        with open(idx_path) as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
        total = 0
        for fn in files:
            _, t = read_safetensors(os.path.join(folder, fn))
            for name, v in t.items():
                if index["weight_map"].get(name) != fn:
                    raise ValueError(f"{name} in {fn} but index says {index['weight_map'].get(name)}")
                if name in tensors:
                    raise ValueError(f"duplicate tensor {name}")
                tensors[name] = v
                total += v[1].nbytes
        if set(tensors) != set(index["weight_map"]):
            raise ValueError("index weight_map does not match shard contents")
        if index["metadata"]["total_size"] != total:
            raise ValueError(f"total_size {index['metadata']['total_size']} != {total}")
    else:
        _, tensors = read_safetensors(single)
    w = {n: storage_to_f64(a, d) for n, (d, a) in tensors.items()}
    dts = {n: d for n, (d, a) in tensors.items()}
    return cfg, w, dts


# ----------------------------------------------------------------------------
# config interpretation (what transformers does with each config.json field)
# ----------------------------------------------------------------------------

SUPPORTED = ("mixtral", "mistral", "llama", "qwen2_moe", "qwen3_moe", "olmoe",
             "deepseek_v2", "deepseek_v3")


def yarn_get_mscale(scale, mscale=1.0):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def deepseek_spec(cfg):
    """What DeepseekV2Config / DeepseekV3Config and their modeling files make of
    config.json (defaults as the config classes set them)."""
    mt = cfg["model_type"]
    v3 = mt == "deepseek_v3"
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    if nkv != nh:
        raise NotImplementedError("MLA with num_key_value_heads != num_attention_heads")
    q_lora = cfg["q_lora_rank"] if "q_lora_rank" in cfg else 1536
    rope = cfg["qk_rope_head_dim"]
    theta = float(cfg.get("rope_theta", 10000.0))
    rs = cfg.get("rope_scaling")
    inv = 1.0 / (theta ** (np.arange(0, rope, 2, dtype=np.float64) / rope))
    attention_factor = 1.0
    scale = float(cfg["qk_nope_head_dim"] + rope) ** -0.5
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind != "yarn":
            raise NotImplementedError("rope scaling " + str(kind))
        factor = float(rs["factor"])
        mscale, mad = rs.get("mscale"), rs.get("mscale_all_dim")
        if rs.get("attention_factor") is not None:
            attention_factor = float(rs["attention_factor"])
        elif mscale and mad:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mad)
        else:
            attention_factor = yarn_get_mscale(factor)
        beta_fast = rs.get("beta_fast") or 32
        beta_slow = rs.get("beta_slow") or 1
        omax = rs["original_max_position_embeddings"]

        def corr_dim(rot):
            return (rope * math.log(omax / (rot * 2 * math.pi))) / (2 * math.log(theta))
        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if rs.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rope - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(rope // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        inv = inv / factor * (1 - extra) + inv * extra
        mad0 = rs.get("mscale_all_dim", 0)
        if mad0:
            m = yarn_get_mscale(factor, mad0)
            scale = scale * m * m
    E = cfg["n_routed_experts"]
    first_dense = cfg.get("first_k_dense_replace", 3 if v3 else 0)
    if cfg.get("moe_layer_freq", 1) != 1:
        raise NotImplementedError("moe_layer_freq != 1 (transformers ignores it)")
    if v3:
        method, scoring = "noaux_tc", "sigmoid"
        n_group, topk_group = cfg.get("n_group", 8), cfg.get("topk_group", 4)
        norm = bool(cfg.get("norm_topk_prob", True))
        rsf = float(cfg.get("routed_scaling_factor", 2.5))
    else:
        method, scoring = cfg.get("topk_method", "greedy"), "softmax"
        n_group, topk_group = (cfg["n_group"], cfg["topk_group"]) if method == "group_limited_greedy" else (1, 1)
        norm = False
        if cfg.get("norm_topk_prob", False):
            raise NotImplementedError("DeepSeek-V2 norm_topk_prob (transformers and DeepSeek differ)")
        rsf = float(cfg.get("routed_scaling_factor", 1.0))
    n_shared = cfg.get("n_shared_experts", 1 if v3 else 2) or 0
    return dict(
        mt=mt, V=cfg["vocab_size"], H=H, L=cfg["num_hidden_layers"], nh=nh, nkv=1,
        hd=cfg["kv_lora_rank"] + rope, eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie=bool(cfg.get("tie_word_embeddings", False)),
        q_lora=q_lora, kv_lora=cfg["kv_lora_rank"], nope=cfg["qk_nope_head_dim"], rope=rope,
        v_head=cfg["v_head_dim"], inv_freq=inv, attention_factor=attention_factor, scale=scale,
        rope_mode=("interleave" if cfg.get("rope_interleave", True) else "half") if v3 else "complex",
        bias=bool(cfg.get("attention_bias", False)),
        kinds=["dense" if i < first_dense else "deepseek_moe" for i in range(cfg["num_hidden_layers"])],
        E=E, k=cfg["num_experts_per_tok"], renorm=norm, method=method, scoring=scoring,
        n_group=n_group, topk_group=topk_group, rsf=rsf,
        expert_I=cfg["moe_intermediate_size"], shared_I=cfg["moe_intermediate_size"] * n_shared,
        dense_I=cfg.get("intermediate_size"),
        # routing margins are measured in the units the choice is made in
        router_gap=0.01 if v3 else 0.1,
    )


def model_spec(cfg):
    mt = cfg["model_type"]
    if mt not in SUPPORTED:
        raise NotImplementedError(mt)
    if mt in ("deepseek_v2", "deepseek_v3"):
        return deepseek_spec(cfg)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    if mt == "qwen3_moe":
        nkv = cfg.get("num_key_value_heads", 4)  # Qwen3MoeConfig's default, not nh
    else:
        nkv = cfg.get("num_key_value_heads") or nh
    if cfg.get("hidden_act", "silu") != "silu":
        raise NotImplementedError("hidden_act " + cfg["hidden_act"])
    if mt == "olmoe":
        # OLMoE's q_norm is sized hidden_size and k_norm (hidden/heads)*nkv:
        # head_dim is hidden // heads, any head_dim field is not honoured.
        if cfg.get("head_dim") not in (None, H // nh):
            raise NotImplementedError("olmoe with head_dim != hidden/heads")
        hd = H // nh
    else:
        hd = cfg.get("head_dim") or H // nh
    rp = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
    rs = cfg.get("rope_scaling")
    if rs not in (None, {}) or rp.get("rope_type", "default") != "default":
        raise NotImplementedError("rope scaling")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("partial_rotary_factor")
    sw = None
    if mt in ("mixtral", "mistral"):
        sw = cfg.get("sliding_window")
    elif mt in ("qwen2_moe", "qwen3_moe") and cfg.get("use_sliding_window", False):
        raise NotImplementedError(mt + " use_sliding_window (layer rule differs across transformers versions)")
    if mt == "llama" and cfg.get("mlp_bias", False):
        raise NotImplementedError("llama mlp_bias")
    # llama pretraining_tp only splits the matmuls: mathematically identical, ignored.
    s = dict(
        mt=mt, V=cfg["vocab_size"], H=H, L=cfg["num_hidden_layers"], nh=nh, nkv=nkv, hd=hd,
        eps=float(cfg["rms_norm_eps"]), theta=float(theta), sliding_window=sw,
        tie=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=(mt == "qwen2_moe" and cfg.get("qkv_bias", True))
        or (mt in ("llama", "olmoe", "qwen3_moe") and cfg.get("attention_bias", False)),
        o_bias=(mt in ("llama", "olmoe", "qwen3_moe") and cfg.get("attention_bias", False)),
        # where q_norm / k_norm sit: over the whole projection (OLMoE) or per head (Qwen3-MoE)
        qk_norm={"olmoe": "projection", "qwen3_moe": "head"}.get(mt),
        clip_qkv=cfg.get("clip_qkv") if mt == "olmoe" else None,
    )
    if nh % nkv != 0:
        raise ValueError("num_attention_heads % num_key_value_heads != 0")
    # per-layer MLP kind
    kinds = []
    for i in range(s["L"]):
        if mt == "mixtral":
            kinds.append("mixtral_moe")
        elif mt == "olmoe":
            kinds.append("moe")
        elif mt in ("qwen2_moe", "qwen3_moe"):
            mlp_only = cfg.get("mlp_only_layers") or []
            E = cfg["num_experts"]
            step = cfg.get("decoder_sparse_step", 1)
            sparse = i not in mlp_only and E > 0 and (i + 1) % step == 0
            kinds.append(("qwen_moe" if mt == "qwen2_moe" else "moe") if sparse else "dense")
        else:
            kinds.append("dense")
    s["kinds"] = kinds
    if mt == "mixtral":
        s["E"], s["k"], s["renorm"] = cfg["num_local_experts"], cfg["num_experts_per_tok"], True
    elif mt in ("qwen2_moe", "qwen3_moe", "olmoe"):
        s["E"], s["k"], s["renorm"] = cfg["num_experts"], cfg["num_experts_per_tok"], bool(cfg.get("norm_topk_prob", False))
    # FFN widths: routed experts, dense layers
    s["expert_I"] = cfg["moe_intermediate_size"] if mt in ("qwen2_moe", "qwen3_moe") else cfg.get("intermediate_size")
    s["dense_I"] = cfg.get("intermediate_size")
    return s


# ----------------------------------------------------------------------------
# float64 forward
# ----------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def rope_cos_sin(n, hd, theta):
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    f = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([f, f], axis=-1)  # [n, hd]
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _mlp(x, g, u, d):
    return (silu(x @ g.T) * (x @ u.T)) @ d.T


def forward(cfg, w, tokens):
    """Causal forward over all tokens (positions 0..N-1) in float64.
    w: {HF tensor name: float64 array}. Returns (logits [N, V] float64, info)
    where info['router'] is a list per MoE layer of dicts with 'layer',
    'topk' [N, k] (descending probability), 'logits' [N, E]."""
    s = model_spec(cfg)
    if s["mt"] in ("deepseek_v2", "deepseek_v3"):
        return deepseek_forward(s, w, tokens)
    tokens = np.asarray(tokens, dtype=np.int64)
    N = tokens.shape[0]
    nh, nkv, hd = s["nh"], s["nkv"], s["hd"]
    rep = nh // nkv
    cos, sin = rope_cos_sin(N, hd, s["theta"])
    i_idx = np.arange(N)[:, None]
    j_idx = np.arange(N)[None, :]
    allowed = j_idx <= i_idx
    if s["sliding_window"] is not None:
        allowed &= j_idx > i_idx - int(s["sliding_window"])
    neg = np.where(allowed, 0.0, -np.inf)
    scale = float(hd) ** -0.5
    info = {"router": []}

    x = w["model.embed_tokens.weight"][tokens]  # [N, H]
    for li in range(s["L"]):
        p = f"model.layers.{li}."
        # --- attention
        xn = rmsnorm(x, w[p + "input_layernorm.weight"], s["eps"])
        a = p + "self_attn."
        q = xn @ w[a + "q_proj.weight"].T
        k = xn @ w[a + "k_proj.weight"].T
        v = xn @ w[a + "v_proj.weight"].T
        if s["qkv_bias"]:
            q = q + w[a + "q_proj.bias"]
            k = k + w[a + "k_proj.bias"]
            v = v + w[a + "v_proj.bias"]
        if s["qk_norm"] == "projection":
            q = rmsnorm(q, w[a + "q_norm.weight"], s["eps"])
            k = rmsnorm(k, w[a + "k_norm.weight"], s["eps"])
        if s["clip_qkv"] is not None:
            c = float(s["clip_qkv"])
            q, k, v = np.clip(q, -c, c), np.clip(k, -c, c), np.clip(v, -c, c)
        q = q.reshape(N, nh, hd)
        k = k.reshape(N, nkv, hd)
        if s["qk_norm"] == "head":  # over the last axis: each head of each token
            q = rmsnorm(q, w[a + "q_norm.weight"], s["eps"])
            k = rmsnorm(k, w[a + "k_norm.weight"], s["eps"])
        q = q.transpose(1, 0, 2)                       # [nh, N, hd]
        k = k.transpose(1, 0, 2)                       # [nkv, N, hd]
        v = v.reshape(N, nkv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, rep, axis=0)                  # head h -> kv head h // rep
        v = np.repeat(v, rep, axis=0)
        sc = (q @ k.transpose(0, 2, 1)) * scale + neg
        o = softmax(sc, axis=-1) @ v                   # [nh, N, hd]
        o = o.transpose(1, 0, 2).reshape(N, nh * hd)
        o = o @ w[a + "o_proj.weight"].T
        if s["o_bias"]:
            o = o + w[a + "o_proj.bias"]
        x = x + o
        # --- MLP / MoE
        xn = rmsnorm(x, w[p + "post_attention_layernorm.weight"], s["eps"])
        kind = s["kinds"][li]
        if kind == "dense":
            m = p + "mlp."
            y = _mlp(xn, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
        else:
            m = p + ("block_sparse_moe." if kind == "mixtral_moe" else "mlp.")
            E, topk = s["E"], s["k"]
            rl = xn @ w[m + "gate.weight"].T               # [N, E]
            pr = softmax(rl, axis=-1)
            # descending; stable so equal probabilities prefer the lower index
            order = np.argsort(-pr, axis=-1, kind="stable")[:, :topk]
            wt = np.take_along_axis(pr, order, axis=-1)
            if s["renorm"]:
                wt = wt / wt.sum(axis=-1, keepdims=True)
            y = np.zeros_like(xn)
            for e in range(E):
                rows, slot = np.nonzero(order == e)
                if rows.size == 0:
                    continue
                xe = xn[rows]
                if kind == "mixtral_moe":
                    ep = f"{m}experts.{e}."
                    ye = _mlp(xe, w[ep + "w1.weight"], w[ep + "w3.weight"], w[ep + "w2.weight"])
                else:
                    ep = f"{m}experts.{e}."
                    ye = _mlp(xe, w[ep + "gate_proj.weight"], w[ep + "up_proj.weight"], w[ep + "down_proj.weight"])
                y[rows] += ye * wt[rows, slot][:, None]
            if kind == "qwen_moe":
                sh = _mlp(xn, w[m + "shared_expert.gate_proj.weight"], w[m + "shared_expert.up_proj.weight"],
                          w[m + "shared_expert.down_proj.weight"])
                g = 1.0 / (1.0 + np.exp(-(xn @ w[m + "shared_expert_gate.weight"].T)))  # [N, 1]
                y = y + g * sh
            info["router"].append({"layer": li, "topk": order, "logits": rl})
        x = x + y
    x = rmsnorm(x, w["model.norm.weight"], s["eps"])
    head = w["model.embed_tokens.weight"] if s["tie"] else w["lm_head.weight"]
    return x @ head.T, info


def router_margins(info, k):
    """Per (MoE layer, token): gap in router logits (or, where the router records
    them, its choice scores) between the k-th and (k+1)-th expert, and between
    the 1st and 2nd; group-limited routers also count the gap between the last
    chosen group and the next. Returns (min_k_gap [L, N], min_top1_gap [L, N])."""
    gk, g1 = [], []
    for r in info["router"]:
        srt = -np.sort(-r.get("choice", r["logits"]), axis=-1)
        kg = srt[:, k - 1] - srt[:, k]
        if "group_gap" in r:
            kg = np.minimum(kg, r["group_gap"])
        if "kth_above_zero" in r:  # masked experts count 0: the chosen stay clear of it
            kg = np.minimum(kg, r["kth_above_zero"])
        gk.append(kg)
        g1.append(srt[:, 0] - srt[:, 1])
    return np.array(gk), np.array(g1)


def _rope_pairs_complex(x, cos, sin):
    """V2's apply_rotary_emb: (x[2i], x[2i+1]) as a complex number times e^{i f}."""
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def deepseek_route(s, xn, w, m):
    """Returns (order [N, k] in rank order, weights [N, k], info dict)."""
    rl = xn @ w[m + "gate.weight"].T  # [N, E]
    N, E = rl.shape
    G, TG, k = s["n_group"], s["topk_group"], s["k"]
    info = {"logits": rl}
    if s["scoring"] == "softmax":
        score = softmax(rl, axis=-1)
        choice = score.copy()
        rank_key = rl.copy()  # same order as the probabilities, in logit units for the gaps
    else:
        score = 1.0 / (1.0 + np.exp(-rl))
        choice = score + w[m + "gate.e_score_correction_bias"][None, :]
        rank_key = choice.copy()
    if G > 1:
        grouped = choice.reshape(N, G, E // G)
        gkey = rank_key.reshape(N, G, E // G)
        if s["method"] == "noaux_tc":
            top2 = -np.sort(-grouped, axis=-1)[:, :, :2]
            gs = top2.sum(-1)
            gs_key = gs
        else:
            gs = grouped.max(-1)
            gs_key = gkey.max(-1)
        gorder = np.argsort(-gs, axis=-1, kind="stable")
        keep = np.zeros((N, G), dtype=bool)
        np.put_along_axis(keep, gorder[:, :TG], True, axis=-1)
        srt = -np.sort(-gs_key, axis=-1)
        info["group_gap"] = srt[:, TG - 1] - srt[:, TG]
        mask = np.repeat(keep, E // G, axis=-1)
        choice = np.where(mask, choice, 0.0)
        # logit units: masked experts rank below every kept one
        rank_key = np.where(mask, rank_key, -1e9 if s["scoring"] == "softmax" else 0.0)
    order = np.argsort(-choice, axis=-1, kind="stable")[:, :k]
    wt = np.take_along_axis(score, order, axis=-1)
    if s["renorm"]:
        wt = wt / (wt.sum(axis=-1, keepdims=True) + 1e-20)
    wt = wt * s["rsf"]
    info["choice"] = rank_key
    if s["scoring"] == "sigmoid":
        info["kth_above_zero"] = np.take_along_axis(choice, order[:, -1:], axis=-1)[:, 0]
    return order, wt, info


def deepseek_forward(s, w, tokens):
    tokens = np.asarray(tokens, dtype=np.int64)
    N = tokens.shape[0]
    nh, nope, R, C, Vh = s["nh"], s["nope"], s["rope"], s["kv_lora"], s["v_head"]
    qk = nope + R
    f = np.arange(N, dtype=np.float64)[:, None] * s["inv_freq"][None, :]  # [N, R/2]
    af = s["attention_factor"]
    neg = np.where(np.arange(N)[None, :] <= np.arange(N)[:, None], 0.0, -np.inf)
    info = {"router": []}

    def rope(x):  # x [..., N, R]
        if s["rope_mode"] == "complex":
            return _rope_pairs_complex(x, np.cos(f) * af, np.sin(f) * af)
        if s["rope_mode"] == "interleave":  # view(d/2, 2).transpose(-1, -2).reshape
            x = np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
        emb = np.concatenate([f, f], axis=-1)
        return x * (np.cos(emb) * af) + rotate_half(x) * (np.sin(emb) * af)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        if s["bias"] and name + ".bias" in w:
            y = y + w[name + ".bias"]
        return y

    x = w["model.embed_tokens.weight"][tokens]
    for li in range(s["L"]):
        p = f"model.layers.{li}."
        a = p + "self_attn."
        xn = rmsnorm(x, w[p + "input_layernorm.weight"], s["eps"])
        if s["q_lora"]:
            q = rmsnorm(lin(xn, a + "q_a_proj"), w[a + "q_a_layernorm.weight"], 1e-6) @ w[a + "q_b_proj.weight"].T
        else:
            q = xn @ w[a + "q_proj.weight"].T
        q = q.reshape(N, nh, qk).transpose(1, 0, 2)  # [nh, N, qk]
        q_nope, q_rot = q[..., :nope], q[..., nope:]
        ckv = lin(xn, a + "kv_a_proj_with_mqa")
        c, k_rot = ckv[:, :C], ckv[:, C:]
        kv = (rmsnorm(c, w[a + "kv_a_layernorm.weight"], 1e-6) @ w[a + "kv_b_proj.weight"].T)
        kv = kv.reshape(N, nh, nope + Vh).transpose(1, 0, 2)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        q_rot = rope(q_rot)
        k_rot = rope(k_rot[None])  # [1, N, R], shared by the heads
        qs = np.concatenate([q_nope, q_rot], axis=-1)
        ks = np.concatenate([k_nope, np.repeat(k_rot, nh, axis=0)], axis=-1)
        sc = (qs @ ks.transpose(0, 2, 1)) * s["scale"] + neg
        o = softmax(sc, axis=-1) @ v  # [nh, N, Vh]
        o = lin(o.transpose(1, 0, 2).reshape(N, nh * Vh), a + "o_proj")
        x = x + o
        xn = rmsnorm(x, w[p + "post_attention_layernorm.weight"], s["eps"])
        m = p + "mlp."
        if s["kinds"][li] == "dense":
            y = _mlp(xn, w[m + "gate_proj.weight"], w[m + "up_proj.weight"], w[m + "down_proj.weight"])
        else:
            order, wt, rinfo = deepseek_route(s, xn, w, m)
            y = np.zeros_like(xn)
            for e in range(s["E"]):
                rows, slot = np.nonzero(order == e)
                if rows.size == 0:
                    continue
                ep = f"{m}experts.{e}."
                ye = _mlp(xn[rows], w[ep + "gate_proj.weight"], w[ep + "up_proj.weight"], w[ep + "down_proj.weight"])
                y[rows] += ye * wt[rows, slot][:, None]
            if s["shared_I"]:
                sp = m + "shared_experts."
                y = y + _mlp(xn, w[sp + "gate_proj.weight"], w[sp + "up_proj.weight"], w[sp + "down_proj.weight"])
            rinfo.update({"layer": li, "topk": order})
            info["router"].append(rinfo)
        x = x + y
    x = rmsnorm(x, w["model.norm.weight"], s["eps"])
    head = w["model.embed_tokens.weight"] if s["tie"] else w["lm_head.weight"]
    return x @ head.T, info
