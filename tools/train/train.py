#!/usr/bin/env python3
"""Train ekva-moe-tiny (transformers' MixtralForCausalLM) from scratch, on the GPU machine.

One call does everything, in this order, writing under --out as it goes:
  1. tokenize the corpus (.device/corpus/{train,val}.jsonl.xz) with the Mistral tokenizer
  2. build the model, train (bf16 autocast, fused AdamW, cosine LR, router aux loss,
     25% synthetic pass-key / multi-key retrieval sequences), log the loss curve
  3. save the bf16 weights in the original Mixtral checkpoint layout, sharded
     (model-0000i-of-0000n.safetensors + index), reload them with
     MixtralForCausalLM.from_pretrained and check the logits are identical
  4. float32 reference logits / router top-1 for the C++ engine
  5. evaluation: train/val loss, perplexity on data/evalsets/ppl.jsonl.xz, retrieval accuracy
     on data/evalsets/retrieval.jsonl.xz (greedy, full cache)
Usage (GPU machine, see tools/train/README.md):
  python3 tools/train/train.py --out $OUT --train-seconds 420
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import random
import sys
import tarfile
import threading
import queue
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import retrieval as R  # noqa: E402

T0 = time.time()
BOS, EOS, NL, SPACE = 1, 2, 13, 28705  # Mistral ids: <s>, </s>, <0x0A>, "\u2581"


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


# ----------------------------------------------------------------------------- model config

def model_config_dict(args) -> dict:
    """config.json in the classic Mixtral layout (as in mistralai/Mixtral-8x7B-v0.1) plus head_dim."""
    return {
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "hidden_size": args.hidden,
        "initializer_range": 0.02,
        "intermediate_size": args.ffn,
        "max_position_embeddings": args.max_pos,
        "model_type": "mixtral",
        "num_attention_heads": args.heads,
        "num_experts_per_tok": args.top_k,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": args.kv_heads,
        "num_local_experts": args.experts,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": args.rope_theta,
        "router_aux_loss_coef": args.aux_coef,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32000,
    }


def build_model(args, cfg_dict):
    from transformers import MixtralConfig, MixtralForCausalLM
    d = dict(cfg_dict)
    d.pop("architectures")
    d.pop("model_type")
    d.pop("torch_dtype")
    cfg = MixtralConfig(**d)
    # transformers 5 keeps RoPE settings in rope_parameters; make sure theta is honoured either way
    if getattr(cfg, "rope_parameters", None) is not None:
        rp = dict(cfg.rope_parameters)
        rp["rope_theta"] = args.rope_theta
        rp.setdefault("rope_type", "default")
        cfg.rope_parameters = rp
    kw = {"attn_implementation": "sdpa"}
    if args.experts_impl != "default":
        kw["experts_implementation"] = args.experts_impl
    try:
        model = MixtralForCausalLM._from_config(cfg, **kw)
    except TypeError as e:  # older API without experts_implementation
        log("from_config kwargs refused:", e)
        if args.experts_impl != "default":
            cfg._experts_implementation = args.experts_impl
        model = MixtralForCausalLM._from_config(cfg, attn_implementation="sdpa")
    return model


def load_initial_weights(model, folder: Path, cfg_dict: dict) -> dict:
    """Continued training: copy a saved checkpoint's weights (loaded and converted by transformers
    itself) into the freshly built model, after checking the architectures agree field by field."""
    from transformers import MixtralForCausalLM
    saved = json.loads((folder / "config.json").read_text())
    arch_keys = ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "num_hidden_layers", "num_local_experts", "num_experts_per_tok", "vocab_size", "rope_theta",
                 "rms_norm_eps", "tie_word_embeddings"]
    diff = {k: (saved.get(k), cfg_dict.get(k)) for k in arch_keys if saved.get(k) != cfg_dict.get(k)}
    if diff:
        raise SystemExit(f"--init-from {folder}: config differs from the model being trained: {diff}")
    src = MixtralForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    sd = src.state_dict()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"--init-from {folder}: missing {missing[:8]}, unexpected {list(unexpected)[:8]}")
    with torch.no_grad():
        x = torch.tensor([[BOS, 22557, 1526, 13, 13, 1014, 1455, 1945, 349]], device="cuda")
        a = model(input_ids=x, use_cache=False).logits.float()
        b = src.cuda()(input_ids=x, use_cache=False).logits.float()
        d = float((a - b).abs().max())
    del src
    torch.cuda.empty_cache()
    if d > 0.1 * max(1.0, float(b.abs().max()) / 10):  # TF32 rounding only; a wrong copy is off by O(1)
        raise SystemExit(f"--init-from {folder}: copied model's logits differ from the loaded one's by {d}")
    log(f"initial weights from {folder} ({len(sd)} tensors; logits equal the loaded checkpoint's within {d:.1e})")
    return {"folder": str(folder), "tensors": len(sd), "max_abs_logit_diff_vs_loaded": d}


def check_model(model, args):
    sa = model.model.layers[0].self_attn
    assert tuple(sa.q_proj.weight.shape) == (args.heads * args.head_dim, args.hidden), sa.q_proj.weight.shape
    assert tuple(sa.k_proj.weight.shape) == (args.kv_heads * args.head_dim, args.hidden), sa.k_proj.weight.shape
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    inv = next(b for n, b in model.named_buffers() if n.endswith("inv_freq")).float().cpu()
    want = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2).float() / args.head_dim))
    assert inv.shape == want.shape and torch.allclose(inv, want, rtol=1e-4), (inv[-3:], want[-3:])
    n = sum(p.numel() for p in model.parameters())
    log(f"params {n:,} ({n * 2 / 2**20:.2f} MiB in bf16); experts impl "
        f"{getattr(model.config, '_experts_implementation', '?')}; attn {model.config._attn_implementation}")
    assert n * 2 <= 48 * 2**20, "over the 48 MiB budget"
    return n


def setup_bf16_grouped_mm() -> dict:
    """transformers runs MoE experts through torch._grouped_mm only when input and weights are bf16;
    with fp32 master weights under autocast it takes a slow looping fallback (with host syncs that
    also break torch.compile graphs). Route autocast calls to torch._grouped_mm in bf16 (what autocast
    does for ordinary matmuls), after checking forward and backward against the fallback."""
    import transformers.integrations.moe as tmoe
    orig = getattr(tmoe, "_grouped_mm", None)
    if orig is None or not hasattr(torch, "_grouped_mm"):
        return {"patched": False, "reason": "no _grouped_mm"}

    def gmm_bf16(input, weight, offs=None, **kw):
        if input.is_cuda and torch.is_autocast_enabled("cuda"):
            return torch._grouped_mm(input.to(torch.bfloat16), weight.to(torch.bfloat16), offs=offs)
        return orig(input, weight, offs=offs, **kw)

    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        n_exp, k, n = 8, 256, 512
        counts = torch.randint(1, 1500, (n_exp,), generator=g)
        counts[3] = 0  # an empty group too
        offs = torch.cumsum(counts, 0).to(torch.int32).cuda()
        m = int(counts.sum())
        x0 = torch.randn(m, k, generator=g).to(torch.bfloat16).cuda()
        w0 = (torch.randn(n_exp, n, k, generator=g) * 0.05).cuda()
        gy = torch.randn(m, n, generator=g).cuda()

        def run(fn):
            x = x0.clone().requires_grad_()
            w = w0.clone().requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = fn(x, w.transpose(-2, -1), offs=offs)
            (y.float() * gy).sum().backward()
            return y.float(), x.grad.float(), w.grad.float()

        ref = run(orig)
        new = run(gmm_bf16)
        rel = [float((a - b).detach().norm() / b.detach().norm()) for a, b in zip(new, ref)]
        ok = all(r < 2e-2 for r in rel) and all(torch.isfinite(t).all() for t in new)
        if ok:
            tmoe._grouped_mm = gmm_bf16
        return {"patched": ok, "rel_err_out_dx_dw": rel}
    except Exception as e:  # noqa: BLE001
        return {"patched": False, "error": repr(e)[:500]}


# ----------------------------------------------------------------------------- checkpoint I/O

def to_original_layout(sd: dict) -> dict:
    """transformers-5 state dict -> original Mixtral checkpoint names (block_sparse_moe.experts.E.w1/w2/w3)."""
    out = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            continue  # tied
        if k.endswith("mlp.experts.gate_up_proj"):
            pre = k[: -len("mlp.experts.gate_up_proj")]
            n_exp, two_i, _ = v.shape
            inter = two_i // 2
            for e in range(n_exp):
                out[f"{pre}block_sparse_moe.experts.{e}.w1.weight"] = v[e, :inter].contiguous()
                out[f"{pre}block_sparse_moe.experts.{e}.w3.weight"] = v[e, inter:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            pre = k[: -len("mlp.experts.down_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}block_sparse_moe.experts.{e}.w2.weight"] = v[e].contiguous()
        elif ".mlp.gate." in k:
            out[k.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = v
        else:
            if ".mlp." in k:
                log(f"WARNING: unexpected MoE key {k}, kept as is")
            out[k] = v
    return out


def _sort_key(name: str):
    import re
    parts = re.split(r"(\d+)", name)
    return [int(p) if p.isdigit() else p for p in parts]


def save_sharded(model, folder: Path, shard_bytes: int) -> list[Path]:
    """Write bf16 safetensors shards named like a real Mixtral checkpoint + the index."""
    from safetensors.torch import save_file
    sd = {k: v.detach().to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
    sd = to_original_layout(sd)
    names = sorted(sd, key=_sort_key)
    # embedding alone first, then layers in order, greedily packed
    names.sort(key=lambda n: (0 if n == "model.embed_tokens.weight" else 2 if n == "model.norm.weight" else 1, _sort_key(n)))
    shards, cur, cur_bytes = [], [], 0
    for n in names:
        b = sd[n].numel() * sd[n].element_size()
        if cur and (cur_bytes + b > shard_bytes or cur == ["model.embed_tokens.weight"]):
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(n)
        cur_bytes += b
    shards.append(cur)
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(sd[n].numel() * sd[n].element_size() for n in names)
    weight_map, files = {}, []
    for i, group in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: sd[n] for n in group}, str(folder / fn), metadata={"format": "pt"})
        for n in group:
            weight_map[n] = fn
        files.append(folder / fn)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items(), key=lambda kv: _sort_key(kv[0])))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    log(f"saved {len(files)} shards, {total:,} bytes of tensors:",
        ", ".join(f"{f.name} {f.stat().st_size:,}" for f in files))
    return files


# ----------------------------------------------------------------------------- data

def read_jsonl_xz(path: Path, max_bytes: int = 0):
    n = 0
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            yield d
            n += len(d["text"])
            if max_bytes and n >= max_bytes:
                return


def read_records(path: Path) -> list[dict]:
    """Every JSON line of path, decompressed when it ends in .xz (the evaluation sets are .jsonl.xz)."""
    with (lzma.open(path, "rt", encoding="utf-8") if path.suffix == ".xz" else open(path, encoding="utf-8")) as f:
        return [json.loads(l) for l in f]


def tokenize_docs(tok, texts: list[str]) -> np.ndarray:
    chunks = []
    enc = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    for i in range(0, len(texts), 1024):
        for e in enc(texts[i:i + 1024], add_special_tokens=False):
            ids = e.ids
            chunks.append(np.array([BOS] + ids + [EOS], dtype=np.uint16))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint16)


class Tok:
    """Helpers around the HF tokenizer for token-level task construction."""

    def __init__(self, tok):
        self.tok = tok
        vocab = tok.get_vocab()
        self.word_start = np.zeros(32000, dtype=bool)
        for s, i in vocab.items():
            if s.startswith("\u2581") and i < 32000:
                self.word_start[i] = True

    def enc(self, text: str) -> list[int]:  # text that follows a space (or starts the prompt)
        return self.tok.encode(text, add_special_tokens=False).ids

    def enc_nl(self, text: str) -> list[int]:  # "\n" + text, following a non-space character
        ids = self.tok.encode("\n" + text, add_special_tokens=False).ids
        assert ids[0] == SPACE and ids[1] == NL, ids[:3]
        return ids[1:]


class SynthBuilder:
    """Token-level pass-key / multi-key sequences with real-text filler (train split)."""

    def __init__(self, tk: Tok, stream: np.ndarray, seed: int):
        self.tk = tk
        self.stream = stream
        self.rng = random.Random(seed)
        self.intro = tk.enc(R.INTRO)

    def filler(self, n: int) -> np.ndarray:
        s = self.stream
        for _ in range(20):
            a = self.rng.randrange(0, len(s) - n * 2 - 10)
            piece = s[a: a + n * 2 + 10]
            piece = piece[(piece != BOS) & (piece != EOS)]
            ws = np.nonzero(self.tk.word_start[piece])[0]
            if len(ws) and len(piece) - ws[0] >= n:
                return piece[ws[0]: ws[0] + n].astype(np.int64)
        return np.full(n, self.tk.enc("the")[0], dtype=np.int64)

    def task(self, length: int) -> list[int]:
        rng = self.rng
        intro = self.intro if rng.random() < 0.7 else []
        if rng.random() < 0.5:
            needles, q, ans = R.passkey_parts(rng)
            qa = [(q, ans)]
        else:
            k = rng.randint(2, 6)
            needles, pairs = R.multikey_parts(rng, k)
            asked = rng.sample(pairs, rng.randint(1, min(3, k)))
            qa = [(R.mk_question(n), v) for n, v in asked]
        needle_ids = [self.tk.enc(t) for t in needles]
        tail = []
        for q, a in qa:
            tail += self.tk.enc_nl(q) + self.tk.enc(a)
        fixed = 1 + len(intro) + sum(map(len, needle_ids)) + len(tail) + 1
        n_fill = length - fixed
        if n_fill < 32:
            return []
        fill = self.filler(n_fill)
        ws = self.tk.word_start[fill]
        cuts = []
        for ids in needle_ids:
            pos = int(rng.random() * n_fill)
            nxt = np.nonzero(ws[pos:])[0]
            pos = pos + int(nxt[0]) if len(nxt) else n_fill
            cuts.append((pos, ids))
        cuts.sort(key=lambda c: c[0])
        out = [BOS] + intro
        last = 0
        for pos, ids in cuts:
            out += fill[last:pos].tolist() + ids
            last = pos
        out += fill[last:].tolist() + tail + [EOS]
        return out

    def window(self, seq: int) -> list[int]:
        out: list[int] = []
        if self.rng.random() < 0.5:
            out = self.task(seq)
        while len(out) < seq:
            rem = seq - len(out)
            if rem < 200:
                out += [BOS] + self.filler(rem - 1).tolist()
                break
            length = rem if rem < 600 else self.rng.randint(200, rem)
            out += self.task(length) or ([BOS] + self.filler(length - 1).tolist())
        return out[:seq]


class Batcher:
    def __init__(self, train: np.ndarray, synth: SynthBuilder, seq: int, batch: int, p_syn: float, seed: int):
        self.train, self.synth, self.seq, self.batch, self.p_syn = train, synth, seq, batch, p_syn
        self.rng = np.random.default_rng(seed)
        self.q: queue.Queue = queue.Queue(maxsize=6)
        self.stop = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def make(self):
        x = np.empty((self.batch, self.seq), dtype=np.int64)
        n_syn = 0
        for b in range(self.batch):
            if self.rng.random() < self.p_syn:
                x[b] = self.synth.window(self.seq)
                n_syn += 1
            else:
                a = int(self.rng.integers(0, len(self.train) - self.seq))
                x[b, 0] = BOS
                x[b, 1:] = self.train[a: a + self.seq - 1]
        return torch.from_numpy(x).pin_memory(), n_syn

    def _run(self):
        while not self.stop:
            self.q.put(self.make())

    def next(self):
        return self.q.get()


def plain_windows(ids: np.ndarray, seq: int, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = np.empty((n, seq), dtype=np.int64)
    for i in range(n):
        a = int(rng.integers(0, len(ids) - seq))
        x[i, 0] = BOS
        x[i, 1:] = ids[a: a + seq - 1]
    return torch.from_numpy(x)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def mean_loss(model, x: torch.Tensor, bs: int) -> float:
    tot, n = 0.0, 0
    for i in range(0, len(x), bs):
        xb = x[i:i + bs].cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model.model(input_ids=xb, use_cache=False).last_hidden_state
        logits = model.lm_head(h[:, :-1].float().to(model.lm_head.weight.dtype)).float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1), reduction="sum")
        tot += nll.item()
        n += xb[:, 1:].numel()
    return tot / n


@torch.no_grad()
def token_nll(model, ids: list[int]) -> np.ndarray:
    x = torch.tensor([ids], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = model.model(input_ids=x, use_cache=False).last_hidden_state[0, :-1]
    out = []
    for i in range(0, h.shape[0], 8192):
        lg = model.lm_head(h[i:i + 8192].to(model.lm_head.weight.dtype)).float()
        out.append(torch.nn.functional.cross_entropy(lg, x[0, 1 + i: 1 + i + lg.shape[0]], reduction="none"))
    return torch.cat(out).cpu().numpy()


def eval_ppl(model, path: Path, limit: int = 0) -> dict:
    recs = read_records(path)
    if limit:
        recs = recs[:limit]
    by_ctx: dict[int, list[np.ndarray]] = {}
    for r in recs:
        nll = token_nll(model, r["tokens"])
        by_ctx.setdefault(r["context"], []).append(nll)
    res = {}
    for ctx, arrs in sorted(by_ctx.items()):
        a = np.stack(arrs)
        buckets = {}
        edges = [0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
        for lo, hi in zip(edges[:-1], edges[1:]):
            if lo >= a.shape[1]:
                break
            seg = a[:, lo:min(hi, a.shape[1])]
            buckets[f"{lo}-{min(hi, a.shape[1] + 1)}"] = {"nll": float(seg.mean()), "ppl": float(np.exp(seg.mean()))}
        res[str(ctx)] = {"n_seq": len(arrs), "n_tokens": int(a.size), "nll": float(a.mean()), "ppl": float(np.exp(a.mean())),
                         "by_position": buckets}
        log(f"ppl ctx {ctx}: {np.exp(a.mean()):.3f} over {len(arrs)} seqs;",
            " ".join(f"{k}:{v['ppl']:.2f}" for k, v in buckets.items()))
    return res


@torch.no_grad()
def eval_retrieval(model, tok, path: Path, limit: int = 0, n_generate: int = 6) -> dict:
    """Exact match of the greedy answer. Teacher-forced: the greedy continuation equals the answer
    iff the argmax at every answer position is the answer token; checked against model.generate
    on the first n_generate prompts."""
    recs = read_records(path)
    if limit:
        recs = recs[:: max(1, len(recs) // limit)][:limit]
    n_mismatch_len = 0
    results = []
    for r in recs:
        ids = [BOS] + tok.encode(r["prompt"], add_special_tokens=False).ids
        if "n_tokens" in r and len(ids) != r["n_tokens"]:
            n_mismatch_len += 1
        ans = tok.encode(r["answer"], add_special_tokens=False).ids  # "\u2581" + digits
        x = torch.tensor([ids + ans], device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model.model(input_ids=x, use_cache=False).last_hidden_state[0]
        pos = torch.arange(len(ids) - 1, len(ids) - 1 + len(ans), device="cuda")
        pred = model.lm_head(h[pos].to(model.lm_head.weight.dtype)).argmax(-1).tolist()
        ok = pred == ans
        results.append({"task": r["task"], "context": r["context"], "depth": r["depth"], "ok": ok,
                        "pred": tok.decode(pred), "answer": r["answer"]})
    gen_check = []
    for r, res in list(zip(recs, results))[:n_generate]:
        ids = [BOS] + tok.encode(r["prompt"], add_special_tokens=False).ids
        ans = tok.encode(r["answer"], add_special_tokens=False).ids
        x = torch.tensor([ids], device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=len(ans), do_sample=False,
                               pad_token_id=EOS)
        gen = g[0, len(ids):].tolist()
        gen_check.append({"generate": tok.decode(gen), "teacher_forced_ok": res["ok"], "generate_ok": gen == ans})
    summary: dict = {"n": len(results), "token_count_mismatches": n_mismatch_len, "generate_check": gen_check}
    for task in sorted({r["task"] for r in results}):
        t = {}
        for ctx in sorted({r["context"] for r in results if r["task"] == task}):
            rs = [r for r in results if r["task"] == task and r["context"] == ctx]
            depths = {}
            for d in sorted({r["depth"] for r in rs}):
                dd = [r["ok"] for r in rs if r["depth"] == d]
                depths[f"{d:.1f}"] = sum(dd) / len(dd)
            t[str(ctx)] = {"n": len(rs), "accuracy": sum(r["ok"] for r in rs) / len(rs), "by_depth": depths}
            log(f"retrieval {task} ctx {ctx}: {t[str(ctx)]['accuracy'] * 100:.1f}% (n={len(rs)})")
        summary[task] = t
    summary["examples_wrong"] = [r for r in results if not r["ok"]][:10]
    return summary


@torch.no_grad()
def reference_logits(model_dir: Path, ppl_path: Path, out_path: Path, lengths=(64, 512, 2048), keep=16):
    """float32 forward of the saved bf16 checkpoint on fixed test sequences; last `keep` logits + router top-1."""
    from safetensors.torch import save_file
    from transformers import MixtralForCausalLM
    # true float32 (training enables TF32 matmuls, which would leave ~1e-2 logit errors)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    m = MixtralForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16, attn_implementation="eager")
    m = m.float().cuda().eval()
    recs = read_records(ppl_path)
    tensors, meta = {}, {"model": "ekva-moe-tiny", "dtype": "float32 forward of the bf16 checkpoint (weights upcast)",
                         "attn_implementation": "eager", "torch": torch.__version__}
    import transformers
    meta["transformers"] = transformers.__version__
    meta["device"] = torch.cuda.get_device_name(0)
    for i, n in enumerate(lengths):
        r = recs[i % len(recs)]
        toks = r["tokens"][:n]
        x = torch.tensor([toks], device="cuda")
        out = m(input_ids=x, output_router_logits=True, use_cache=False)
        lg = out.logits[0, -keep:].float().cpu().contiguous()
        rl = out.router_logits  # per layer: [n, experts]
        top1 = torch.stack([r_.reshape(n, -1).argmax(-1) for r_ in rl], dim=1).int().cpu().contiguous()
        tensors[f"tokens_{i}"] = torch.tensor(toks, dtype=torch.int32)
        tensors[f"logits_{i}"] = lg
        tensors[f"top1_{i}"] = top1
        meta[f"logits_start_{i}"] = str(n - keep)
        meta[f"n_tokens_{i}"] = str(n)
        meta[f"source_{i}"] = f"data/evalsets/ppl.jsonl.xz id={r['id']} tokens[0:{n}]"
    meta["count"] = str(len(lengths))
    meta["matmul_precision"] = "highest (TF32 off)"
    meta["note"] = ("logits_i: float32 logits of the last 16 positions (rows logits_start_i .. n_tokens_i-1); "
                    "top1_i[t, l]: layer l router's top-1 expert for token t (argmax of router logits)")
    save_file(tensors, str(out_path), metadata=meta)
    log(f"reference logits -> {out_path} ({out_path.stat().st_size:,} bytes)")
    del m
    torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32[0], tf32[1]
    torch.set_float32_matmul_precision(tf32[2])


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--corpus", default=str(REPO / ".device" / "corpus"))
    ap.add_argument("--model-dir", default=str(REPO / "models" / "ekva-moe-tiny"))
    ap.add_argument("--evalsets", default=str(REPO / "data" / "evalsets"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--max-pos", type=int, default=32768)
    ap.add_argument("--rope-theta", type=float, default=1e6)
    ap.add_argument("--aux-coef", type=float, default=0.02)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=0, help="0: fit the steps into --train-seconds")
    ap.add_argument("--train-seconds", type=float, default=420)
    ap.add_argument("--synthetic", type=float, default=0.3)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--experts-impl", default="grouped_mm")
    ap.add_argument("--max-train-bytes", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-limit", type=int, default=0, help="smoke: evaluate only this many records")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--short-seq", type=int, default=0,
                    help="also train on windows of this length (same tokens per micro-batch), for --short-share of them")
    ap.add_argument("--short-share", type=float, default=0.5)
    ap.add_argument("--init-from", default="",
                    help="continue training from this checkpoint folder (same architecture) instead of a fresh init")
    ap.add_argument("--eval-before", action="store_true",
                    help="with --init-from: evaluate retrieval and perplexity before training too")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import logging
    import warnings
    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Error detected in.*")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.cuda.get_device_name(0)
    import transformers
    import tokenizers
    log(f"device {dev}; torch {torch.__version__}; transformers {transformers.__version__}; tokenizers {tokenizers.__version__}")

    # ---- tokenizer + data
    from tokenizers import Tokenizer
    model_dir = Path(args.model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    chk = tok.encode("Hello world\n\nThe pass key is 71432.").ids
    assert chk == [1, 22557, 1526, 13, 13, 1014, 1455, 1945, 349, 28705, 28787, 28740, 28781, 28770, 28750, 28723], chk
    tk = Tok(tok)
    corpus = Path(args.corpus)
    t = time.time()
    train_docs = [d["text"] for d in read_jsonl_xz(corpus / "train.jsonl.xz", args.max_train_bytes)]
    val_docs = [d["text"] for d in read_jsonl_xz(corpus / "val.jsonl.xz", args.max_train_bytes // 10)]
    log(f"read {len(train_docs)} train / {len(val_docs)} val docs in {time.time() - t:.1f}s")
    t = time.time()
    train_ids = tokenize_docs(tok, train_docs)
    val_ids = tokenize_docs(tok, val_docs)
    n_bytes = sum(len(s.encode()) for s in train_docs)
    log(f"tokenized: train {len(train_ids):,} tokens ({n_bytes / len(train_ids):.2f} bytes/token), val {len(val_ids):,} "
        f"in {time.time() - t:.1f}s")
    del train_docs, val_docs

    # ---- model
    gmm_info = setup_bf16_grouped_mm() if args.experts_impl == "grouped_mm" else {"patched": False}
    log("bf16 grouped_mm for autocast:", gmm_info)
    cfg_dict = model_config_dict(args)
    model = build_model(args, cfg_dict).cuda()
    n_params = check_model(model, args)
    init_info = None
    if args.init_from:
        init_info = load_initial_weights(model, Path(args.init_from), cfg_dict)
    model.config.output_router_logits = True
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed_tokens" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    if args.compile:
        if args.short_seq:  # two fixed shapes: one static graph each, not a dynamic-shape recompile
            import torch._dynamo as _dynamo_cfg
            _dynamo_cfg.config.automatic_dynamic_shapes = False
        t = time.time()
        for layer in model.model.layers:
            layer.compile()
        log(f"regional torch.compile set up ({time.time() - t:.1f}s)")

    evd = Path(args.evalsets)
    before = {}
    if args.init_from and args.eval_before and not args.skip_eval:
        model.eval()
        try:
            before["retrieval"] = eval_retrieval(model, tok, evd / "retrieval.jsonl.xz", args.eval_limit, n_generate=0)
            before["ppl_eval"] = eval_ppl(model, evd / "ppl.jsonl.xz", args.eval_limit)
        except Exception as e:  # noqa: BLE001
            before["error"] = repr(e)[:1000]
            log("evaluation before training FAILED:", repr(e)[:1000])
        model.train()
        torch.cuda.empty_cache()

    synth = SynthBuilder(tk, train_ids, args.seed + 1)
    batcher = Batcher(train_ids, synth, args.seq, args.micro_batch, args.synthetic, args.seed + 2)
    short_batcher = None
    if args.short_seq:  # mixed lengths: keeps the short-context skills while training long
        short_batcher = Batcher(train_ids, SynthBuilder(tk, train_ids, args.seed + 11), args.short_seq,
                                args.micro_batch * args.seq // args.short_seq, args.synthetic, args.seed + 12)
    mix_rng = random.Random(args.seed + 13)
    val_x = plain_windows(val_ids, args.seq, 16, args.seed + 3)
    tokens_per_step = args.micro_batch * args.grad_accum * args.seq

    total_steps = args.steps or 10**9
    curve, val_curve = [], []

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = min(1.0, (step - args.warmup) / max(1, total_steps - args.warmup))
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))

    model.train()
    t_train = time.time()
    t_mark, step_mark = None, 0
    acc_loss = torch.zeros((), device="cuda")
    acc_aux = torch.zeros((), device="cuda")
    acc_n, syn_seen = 0, 0
    step = 0
    compile_fallback = False
    while step < total_steps:
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        for _ in range(args.grad_accum):
            use_short = short_batcher is not None and mix_rng.random() < args.short_share
            xb, n_syn = (short_batcher if use_short else batcher).next()
            syn_seen += n_syn
            xb = xb.cuda(non_blocking=True)
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    o = model(input_ids=xb, labels=xb, output_router_logits=True, use_cache=False)
                (o.loss / args.grad_accum).backward()
            except Exception as e:  # noqa: BLE001
                if step > 0 or compile_fallback or not args.compile:
                    raise
                log("compiled step failed, falling back to eager:", repr(e)[:500])
                compile_fallback = True
                import torch._dynamo as _dyn
                _dyn.reset()
                for layer in model.model.layers:
                    layer._compiled_call_impl = None
                opt.zero_grad(set_to_none=True)
                continue
            acc_loss += o.loss.detach() - args.aux_coef * o.aux_loss.detach()
            acc_aux += o.aux_loss.detach()
            acc_n += 1
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step == 1:
            torch.cuda.synchronize()
            log(f"first step done ({time.time() - t_train:.1f}s incl. compile); peak mem "
                f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        if step == 8:
            torch.cuda.synchronize()
            t_mark, step_mark = time.time(), step
        if step == 28 and args.steps == 0:
            torch.cuda.synchronize()
            dt = (time.time() - t_mark) / (step - step_mark)
            left = args.train_seconds - (time.time() - t_train)
            total_steps = max(step + 1, step + int(left / dt * 0.97))
            log(f"step time {dt * 1000:.0f} ms -> {tokens_per_step / dt / 1e6:.2f} M tok/s; total steps set to {total_steps} "
                f"({total_steps * tokens_per_step / 1e6:.0f} M tokens)")
        if step % 25 == 0 or step == total_steps:
            l = (acc_loss / max(1, acc_n)).item()
            a = (acc_aux / max(1, acc_n)).item()
            el = time.time() - t_train
            curve.append({"step": step, "tokens": step * tokens_per_step, "time_s": round(el, 2), "lr": lr,
                          "loss": round(l, 5), "aux_loss": round(a, 5), "grad_norm": round(float(gn), 4)})
            acc_loss.zero_()
            acc_aux.zero_()
            acc_n = 0
            if step % 100 == 0 or step == total_steps:
                log(f"step {step}/{total_steps} loss {l:.4f} aux {a:.4f} lr {lr:.2e} gn {float(gn):.2f} "
                    f"{step * tokens_per_step / el / 1e6:.2f} M tok/s")
        if step % max(1, (total_steps // 10 if total_steps < 10**8 else 200)) == 0 or step == total_steps:
            model.eval()
            vl = mean_loss(model, val_x, 8)
            model.train()
            val_curve.append({"step": step, "tokens": step * tokens_per_step, "val_loss": round(vl, 5)})
            log(f"step {step} val loss {vl:.4f} (ppl {math.exp(vl):.2f})")
        if time.time() - t_train > args.train_seconds + 25:
            log("time guard: stopping early at step", step)
            break
    batcher.stop = True
    if short_batcher is not None:
        short_batcher.stop = True
    torch.cuda.synchronize()
    train_time = time.time() - t_train
    tokens_trained = step * tokens_per_step
    log(f"trained {step} steps, {tokens_trained / 1e6:.1f} M tokens in {train_time:.1f}s; synthetic seqs {syn_seen}")

    # ---- save immediately (the most valuable output)
    model.eval()
    for layer in model.model.layers:
        layer._compiled_call_impl = None
    model.config.output_router_logits = False
    save_dir = Path("/tmp/ekva-moe-tiny")
    log("state dict, layer 0:", [(k, tuple(v.shape)) for k, v in model.state_dict().items() if ".layers.0." in k])
    try:
        files = save_sharded(model, save_dir, 12 * 1000 * 1000)
    except Exception as e:  # noqa: BLE001 - never lose the trained weights
        log("custom save FAILED, falling back to save_pretrained:", repr(e)[:1000])
        model.to(torch.bfloat16).save_pretrained(str(save_dir), max_shard_size="12MB", safe_serialization=True)
        model.float()
        files = sorted(save_dir.glob("model*.safetensors"))
    cfg_dict["transformers_version"] = transformers.__version__
    (save_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    gen_cfg = {"_from_model_config": True, "bos_token_id": BOS, "eos_token_id": EOS,
               "transformers_version": transformers.__version__}
    (save_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    for f in files:  # shards go to $OUT top level (each file comes back separately)
        os.replace(f, out / f.name)
        os.symlink(out / f.name, f)

    summary = {"device": dev, "torch": torch.__version__, "transformers": transformers.__version__,
               "params": n_params, "param_bytes_bf16": n_params * 2, "config": cfg_dict,
               "train": {"steps": step, "tokens": tokens_trained, "tokens_per_step": tokens_per_step,
                         "train_seconds": round(train_time, 1), "seq": args.seq, "short_seq": args.short_seq,
                         "short_share": args.short_share if args.short_seq else 0, "micro_batch": args.micro_batch,
                         "grad_accum": args.grad_accum, "lr": args.lr, "min_lr_ratio": args.min_lr_ratio,
                         "warmup": args.warmup, "weight_decay": args.wd, "synthetic_fraction": args.synthetic,
                         "aux_coef": args.aux_coef, "seed": args.seed, "compile": bool(args.compile) and not compile_fallback,
                         "experts_impl": getattr(model.config, "_experts_implementation", None),
                         "corpus_train_tokens": int(len(train_ids)), "corpus_val_tokens": int(len(val_ids)),
                         "epochs": round(tokens_trained * (1 - args.synthetic) / len(train_ids), 2),
                         "synthetic_sequences": syn_seen, "bf16_grouped_mm": gmm_info},
               "curve": curve, "val_curve": val_curve}
    if init_info is not None:
        summary["train"]["init_from"] = init_info
    if before:
        summary["before"] = before

    def dump():
        (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    dump()

    # ---- reload check: original-layout checkpoint through from_pretrained
    try:
        import copy
        from transformers import MixtralForCausalLM
        kw = {"experts_implementation": args.experts_impl} if args.experts_impl != "default" else {}
        try:
            m2, info = MixtralForCausalLM.from_pretrained(str(save_dir), dtype=torch.bfloat16, attn_implementation="sdpa",
                                                          output_loading_info=True, **kw)
        except TypeError:
            m2, info = MixtralForCausalLM.from_pretrained(str(save_dir), dtype=torch.bfloat16, attn_implementation="sdpa",
                                                          output_loading_info=True)
        m2 = m2.cuda().eval()
        ref = copy.deepcopy(model).to(torch.bfloat16).eval()
        xb = val_x[:2, :512].cuda()

        def cmp(a, b):
            return {"max_abs": float((a - b).abs().max()), "mean_abs": float((a - b).abs().mean()),
                    "top1_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}

        with torch.no_grad():
            l1 = ref(input_ids=xb, use_cache=False).logits.float()
            l1b = ref(input_ids=xb, use_cache=False).logits.float()
            l2 = m2(input_ids=xb, use_cache=False).logits.float()
            bf16_cmp, bf16_self = cmp(l1, l2), cmp(l1, l1b)
            ref, m2 = ref.float(), m2.float()
            f1 = ref(input_ids=xb, use_cache=False).logits
            f2 = m2(input_ids=xb, use_cache=False).logits
            f32_cmp = cmp(f1, f2)
        diff = bf16_cmp["max_abs"]
        sd1, sd2 = ref.state_dict(), m2.state_dict()
        wdiff = max(float((sd1[k].float() - sd2[k].float()).abs().max()) for k in sd1 if k in sd2)
        summary["reload_check"] = {"missing": list(info.get("missing_keys", [])),
                                   "unexpected": list(info.get("unexpected_keys", [])),
                                   "mismatched": [str(x) for x in info.get("mismatched_keys", [])],
                                   "max_abs_weight_diff": wdiff,
                                   "max_abs_logit_diff_vs_trained_bf16": diff,
                                   "bf16_loaded_vs_trained": bf16_cmp, "bf16_trained_run_twice": bf16_self,
                                   "fp32_loaded_vs_trained": f32_cmp,
                                   "rope_parameters": str(getattr(m2.config, "rope_parameters", None)),
                                   "loaded_experts_impl": getattr(m2.config, "_experts_implementation", None),
                                   "model_state_dict_keys_layer0": sorted(k for k in sd2 if ".layers.0." in k)}
        log("reload check:", {k: v for k, v in summary["reload_check"].items() if k != "model_state_dict_keys_layer0"})
        del m2, ref
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
        summary["reload_check"] = {"error": repr(e)[:1000]}
        log("reload check FAILED:", repr(e)[:1000])
    dump()

    try:
        reference_logits(save_dir, evd / "ppl.jsonl.xz", out / "ekva_moe_tiny_reference.safetensors")
    except Exception as e:  # noqa: BLE001
        summary["reference_error"] = repr(e)[:1000]
        log("reference logits FAILED:", repr(e)[:1000])
    dump()

    if not args.skip_eval:
        try:
            tr_x = plain_windows(train_ids, args.seq, 64 if not args.eval_limit else 8, args.seed + 5)
            va_x = plain_windows(val_ids, args.seq, 64 if not args.eval_limit else 8, args.seed + 6)
            tl, vl = mean_loss(model, tr_x, 8), mean_loss(model, va_x, 8)
            summary["final"] = {"train_loss": tl, "val_loss": vl, "val_ppl": math.exp(vl), "train_ppl": math.exp(tl),
                                "windows": len(va_x), "seq": args.seq}
            log(f"final train loss {tl:.4f} val loss {vl:.4f} val ppl {math.exp(vl):.2f}")
        except Exception as e:  # noqa: BLE001
            summary["final_error"] = repr(e)[:1000]
            log("final loss FAILED:", repr(e)[:1000])
        dump()
        try:
            summary["retrieval"] = eval_retrieval(model, tok, evd / "retrieval.jsonl.xz", args.eval_limit)
        except Exception as e:  # noqa: BLE001
            summary["retrieval_error"] = repr(e)[:1000]
            log("retrieval FAILED:", repr(e)[:1000])
        dump()
        try:
            summary["ppl_eval"] = eval_ppl(model, evd / "ppl.jsonl.xz", args.eval_limit)
        except Exception as e:  # noqa: BLE001
            summary["ppl_error"] = repr(e)[:1000]
            log("ppl eval FAILED:", repr(e)[:1000])
        dump()
    summary["total_seconds"] = round(time.time() - T0, 1)
    dump()
    # small files in one tar (the $OUT file count is limited)
    with tarfile.open(out / "meta.tar", "w") as tf:
        for f in ["config.json", "generation_config.json", "model.safetensors.index.json"]:
            if (save_dir / f).exists():
                tf.add(save_dir / f, arcname=f)
        tf.add(out / "metrics.json", arcname="metrics.json")
    (out / "metrics.json").unlink()
    for f in files:
        f.unlink()
    log("done")


if __name__ == "__main__":
    main()
