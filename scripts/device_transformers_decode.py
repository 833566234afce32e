"""transformers' own generate on a checkpoint (full cache, SDPA attention, bf16 on
the GPU): batch B of random prompts of `--context` tokens, greedy, the decode rate
measured as (time of generate with 1 + steps new tokens - time with 1) / steps, so
the prefill is not counted. The row a user compares the engine's decode against.

    python3 scripts/device_transformers_decode.py MODEL_DIR --context 32768 \
        --batch 1,8,16 --steps 10 --json-out F
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").cuda().eval()
    print(f"loaded in {time.time() - t0:.1f} s; transformers {transformers.__version__}, "
          f"torch {torch.__version__}", flush=True)
    vocab = model.config.vocab_size
    rows = []

    def timed(ids, n):
        torch.cuda.synchronize()
        t = time.time()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.time() - t

    for b in [int(x) for x in a.batch.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(b)
        ids = torch.randint(3, vocab, (b, a.context), device="cuda", generator=g)
        try:
            timed(ids[:, :256], 2)  # warm-up
            one = timed(ids, 1)
            more = timed(ids, 1 + a.steps)
        except torch.OutOfMemoryError as e:
            print(f"batch {b}: out of memory ({str(e).splitlines()[0]})", flush=True)
            rows.append({"batch": b, "error": "out of memory"})
            torch.cuda.empty_cache()
            break
        step_ms = (more - one) / a.steps * 1e3
        rows.append({"batch": b, "context": a.context, "prefill_plus_one_s": one,
                     "decode_step_ms": step_ms, "tokens_per_s": b / (step_ms * 1e-3),
                     "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30})
        print(f"batch {b:3d} x {a.context}: decode step {step_ms:.2f} ms, "
              f"{b / (step_ms * 1e-3):.0f} tok/s (prefill + 1 token {one:.1f} s; "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)", flush=True)
        del ids
        torch.cuda.empty_cache()
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"peer": "transformers generate", "transformers": transformers.__version__,
                       "torch": torch.__version__, "attention": "sdpa", "dtype": "bfloat16",
                       "device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
