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
"""

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

SUPPORTED = ("mixtral", "mistral", "llama", "qwen2_moe", "qwen3_moe", "olmoe")


def model_spec(cfg):
    mt = cfg["model_type"]
    if mt not in SUPPORTED:
        raise NotImplementedError(mt)
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
    """Per (MoE layer, token): gap in router logits between the k-th and
    (k+1)-th expert, and between the 1st and 2nd. Returns (min_k_gap [L, N],
    min_top1_gap [L, N])."""
    gk, g1 = [], []
    for r in info["router"]:
        srt = -np.sort(-r["logits"], axis=-1)
        gk.append(srt[:, k - 1] - srt[:, k])
        g1.append(srt[:, 0] - srt[:, 1])
    return np.array(gk), np.array(g1)
