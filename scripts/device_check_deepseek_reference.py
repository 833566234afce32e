#!/usr/bin/env python3
"""Cross-check the numpy DeepSeek-V2/V3 reference (tools/reference_lib.py) against
transformers on a machine that has torch and transformers.

    python3 scripts/device_check_deepseek_reference.py DIR [--tolerance 1e-3] [--only NAME,...]

DIR holds the case folders tools/make_reference.py writes (e.g. build/rel/tests/data/
reference, or `tools/make_reference.py --out DIR --only deepseek_v2,...`). Every case
whose config.json names DeepseekV2ForCausalLM or DeepseekV3ForCausalLM is loaded with
transformers (attn_implementation="eager", float64 where the build allows it, else
float32), run over reference.safetensors' tokens in one causal forward, and its logits
compared with the reference's: the max abs difference is printed per case, and the
script exits non-zero when a case is past the tolerance (relative to the logits'
max abs value) or fails to run.

Known differences between transformers and the reference (which follows DeepSeek's
own modeling code where the two disagree) are reported, not hidden:
  * transformers' DeepseekV2Attention does not apply YaRN's mscale_all_dim softmax
    correction (DeepseekV3Attention and DeepSeek's V2 code do): a V2 case with a
    rope_scaling would differ. No V2 case has one; the check refuses it if one appears.
  * some transformers versions' DeepseekV2Moe group_limited_greedy reads
    self.num_experts, which the module does not set (AttributeError): such a case is
    reported as a transformers failure, with the version.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import reference_lib as R  # noqa: E402

ARCHS = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")


def run_case(folder, torch, transformers):
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg["architectures"][0] == "DeepseekV2ForCausalLM" and cfg.get("rope_scaling"):
        raise RuntimeError("DeepSeek-V2 with rope_scaling: transformers lacks the mscale_all_dim "
                           "softmax correction the reference applies")
    _, ref = R.read_safetensors(os.path.join(folder, "reference.safetensors"))
    tokens = ref["tokens"][1].astype(np.int64)
    want = ref["logits"][1].astype(np.float64)
    # float64 first; transformers 5.x's MoE path (grouped mm) refuses float64 at run time,
    # so a failed forward falls back to float32 too.
    last = None
    for dtype in (torch.float64, torch.float32):
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, attn_implementation="eager")
            model.eval()
            with torch.no_grad():
                out = model(torch.tensor(tokens)[None, :], use_cache=False).logits[0]
            break
        except Exception as e:  # noqa: BLE001 (a dtype the build cannot load or run)
            last, out = e, None
    if out is None:
        raise RuntimeError(f"transformers cannot run it: {last}")
    got = out.to(torch.float64).cpu().numpy()
    diff = float(np.abs(got - want).max())
    return diff, float(np.abs(want).max()), str(dtype).replace("torch.", "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="max abs difference relative to the logits' max abs value")
    ap.add_argument("--only", help="comma-separated case names")
    a = ap.parse_args()
    import torch
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    names = sorted(os.listdir(a.dir))
    if a.only:
        names = [n.strip() for n in a.only.split(",")]
    failed, checked = [], 0
    for name in names:
        folder = os.path.join(a.dir, name)
        cfg_path = os.path.join(folder, "config.json")
        if not os.path.exists(cfg_path):
            continue
        with open(cfg_path) as f:
            if json.load(f).get("architectures", [""])[0] not in ARCHS:
                continue
        checked += 1
        try:
            diff, scale, dtype = run_case(folder, torch, transformers)
        except Exception as e:  # noqa: BLE001
            print(f"{name:20s} FAILED to run: {type(e).__name__}: {e}")
            failed.append(name)
            continue
        ok = diff <= a.tolerance * max(scale, 1.0)
        print(f"{name:20s} {dtype:8s} max|diff| {diff:.3e} (max|logit| {scale:.2f}) "
              f"{'ok' if ok else 'PAST TOLERANCE'}")
        if not ok:
            failed.append(name)
    if checked == 0:
        print(f"no DeepSeek cases under {a.dir}")
        return 2
    if failed:
        print(f"{len(failed)} of {checked} case(s) failed: {', '.join(failed)}")
        return 1
    print(f"all {checked} DeepSeek case(s) within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
