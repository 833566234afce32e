#!/usr/bin/env python3
"""Check the shipped models/ekva-moe-tiny/ checkpoint with stock transformers (GPU machine).

Loads the folder unchanged (MixtralForCausalLM.from_pretrained + AutoTokenizer), checks that
no weight is missing or unexpected, re-measures perplexity (4k) and retrieval accuracy with
real greedy decoding (model.generate, full KV cache) at 1k/2k/4k, and recomputes the float32
reference logits of tests/data/ekva_moe_tiny_reference.safetensors.
Usage: python3 tools/train/verify_checkpoint.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "ekva-moe-tiny"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--contexts", default="1024,2048,4096")
    ap.add_argument("--write-reference", default="", help="first (re)write the reference file here (train.py's code)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, MixtralForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    res: dict = {"transformers": transformers.__version__, "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(0)}
    ref_path = REPO / "tests/data/ekva_moe_tiny_reference.safetensors"
    if args.write_reference:
        import sys
        sys.path.insert(0, str(REPO / "tools" / "train"))
        import train
        ref_path = Path(args.write_reference)
        train.reference_logits(MODEL, REPO / "data/evalsets/ppl.jsonl.xz", ref_path)
    model, info = MixtralForCausalLM.from_pretrained(str(MODEL), dtype=torch.bfloat16, output_loading_info=True)
    model = model.cuda().eval()
    res["loading_info"] = {k: [str(x) for x in v] for k, v in info.items()}
    inv = next(b for n, b in model.named_buffers() if n.endswith("inv_freq")).float().cpu()
    res["config_check"] = {
        "head_dim_q_proj": list(model.model.layers[0].self_attn.q_proj.weight.shape),
        "rope_theta_from_inv_freq": float(inv[1] ** (-64 / 2)),
        "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "params": sum(p.numel() for p in model.parameters()),
    }
    tok = AutoTokenizer.from_pretrained(str(MODEL))
    res["tokenizer"] = {"class": type(tok).__name__, "hello": tok("Hello world")["input_ids"]}
    print(json.dumps(res), flush=True)

    # perplexity at 4k (same records and method as train.py)
    with lzma.open(REPO / "data/evalsets/ppl.jsonl.xz", "rt", encoding="utf-8") as f:
        recs = [json.loads(l) for l in f]
    nll, n = 0.0, 0
    with torch.no_grad():
        for r in recs:
            if r["context"] != 4096:
                continue
            x = torch.tensor([r["tokens"]], device="cuda")
            lg = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(lg, x[0, 1:], reduction="sum"))
            n += x.shape[1] - 1
    res["ppl_4096"] = math.exp(nll / n)
    print("ppl 4096", res["ppl_4096"], flush=True)

    # retrieval with real greedy decoding through generate()
    ctxs = {int(c) for c in args.contexts.split(",")}
    acc: dict = {}
    mism = 0
    with lzma.open(REPO / "data/evalsets/retrieval.jsonl.xz", "rt", encoding="utf-8") as f:
        retrieval = [json.loads(l) for l in f]
    for r in retrieval:
        if r["context"] not in ctxs:
            continue
        ids = tok(r["prompt"])["input_ids"]
        mism += len(ids) != r["n_tokens"]
        x = torch.tensor([ids], device="cuda")
        with torch.no_grad():
            g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=len(r["answer_tokens"]) + 2,
                               do_sample=False, pad_token_id=2)
        text = tok.decode(g[0, len(ids):], skip_special_tokens=True)
        ok = text.strip().startswith(r["answer"])
        key = f"{r['task']}@{r['context']}"
        a = acc.setdefault(key, [0, 0])
        a[0] += ok
        a[1] += 1
    res["retrieval_generate"] = {k: {"accuracy": v[0] / v[1], "n": v[1]} for k, v in sorted(acc.items())}
    res["retrieval_token_count_mismatches"] = mism
    print(json.dumps(res["retrieval_generate"]), flush=True)

    # reference logits
    ref = load_file(str(ref_path))
    m32 = MixtralForCausalLM.from_pretrained(str(MODEL), dtype=torch.bfloat16, attn_implementation="eager")
    m32 = m32.float().cuda().eval()
    diffs = {}
    with torch.no_grad():
        i = 0
        while f"tokens_{i}" in ref:
            toks = ref[f"tokens_{i}"].long().cuda()[None]
            o = m32(input_ids=toks, output_router_logits=True, use_cache=False)
            lg = o.logits[0, -16:].float().cpu()
            top1 = torch.stack([r_.reshape(toks.shape[1], -1).argmax(-1) for r_ in o.router_logits], 1).int().cpu()
            diffs[str(i)] = {"n": toks.shape[1], "max_abs_logit_diff": float((lg - ref[f"logits_{i}"]).abs().max()),
                             "top1_equal": float((top1 == ref[f"top1_{i}"]).float().mean())}
            i += 1
    res["reference_recheck"] = diffs
    res["seconds"] = round(time.time() - t0, 1)
    (out / "verify.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
