#!/usr/bin/env bash
# The main job, on the shipped model (models/ekva-moe-tiny):
#   1. set up and build;
#   2. calibrate the model (routing and attention statistics, and which kv-heads
#      retrieve from needle prompts of 1-2k tokens -> profile.json);
#   3. answer a 4k-token retrieval prompt with the full cache and with a 10% budget
#      allocated by EKVA-mass and by HeadKV, side by side (answer, KV bytes, speed);
#   4. a short evaluation table (the committed one in bench/results/ is the full grid).
#
# EKVA_DEVICE=cuda answers the prompt of step 3 on the GPU (the compressed cache in
# device memory); EKVA_BIN=PATH uses a binary built elsewhere and skips the setup and
# the build (the GPU machine has no package registry: scripts/device_main.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${EKVA_BIN:-}" ]; then
  ./scripts/setup.sh
  cmake --preset release >/dev/null
  cmake --build --preset release -j "$(nproc)" --target ekva
  ekva=./build/release/ekva
else
  ekva=$EKVA_BIN
fi
device=${EKVA_DEVICE:-cpu}
model=models/ekva-moe-tiny
out=${EKVA_MAIN_OUT:-build/release/main}
mkdir -p "$out"

echo "== model"
$ekva info -m "$model"

echo; echo "== calibration"
$ekva calibrate -m "$model" --data data/calibration/validation_sample.txt -o "$out/profile.json" \
  --context 2048 --max-tokens 16384 --retrieval-heads data/evalsets/retrieval.jsonl.xz \
  --max-retrieval 8

echo; echo "== a 4096-token pass-key prompt: full cache vs a 10% budget (EKVA-mass, HeadKV), on $device"
/usr/bin/python3 - "$out" <<'PY'
import json, lzma, sys
out = sys.argv[1]
for line in lzma.open("data/evalsets/retrieval.jsonl.xz", "rt", encoding="utf-8"):
    p = json.loads(line)
    if p["context"] == 4096 and p["task"] == "passkey" and p["depth"] == 0.5:
        break
open(f"{out}/prompt.txt", "w").write(p["prompt"])
open(f"{out}/answer.txt", "w").write(p["answer"])
print(f"needle at token {p['needle_token_pos']} of {p['n_tokens']}; expected answer: {p['answer']}")
PY
$ekva generate -m "$model" -f "$out/prompt.txt" -n 8 --json --device "$device" > "$out/full.json"
$ekva generate -m "$model" -f "$out/prompt.txt" -n 8 --json --device "$device" --policy snapkv \
  --allocator ekva-mass --budget 10% --profile "$out/profile.json" > "$out/ekva.json"
$ekva generate -m "$model" -f "$out/prompt.txt" -n 8 --json --device "$device" --policy snapkv \
  --allocator headkv --budget 10% --profile "$out/profile.json" > "$out/headkv.json"
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
want = open(f"{out}/answer.txt").read()
rows = [("full cache", json.load(open(f"{out}/full.json"))),
        ("EKVA-mass 10%", json.load(open(f"{out}/ekva.json"))),
        ("HeadKV 10%", json.load(open(f"{out}/headkv.json")))]
print(f"{'':16}{'answer':>10}{'correct':>9}{'KV bytes':>12}{'of full':>9}{'prefill tok/s':>15}{'decode tok/s':>14}")
for name, r in rows:
    answer = r["text"].strip()
    print(f"{name:16}{answer:>10}{'yes' if answer.startswith(want) else 'no':>9}"
          f"{r['kv_bytes'] / 2**20:>9.2f} MiB{100 * r['kv_bytes'] / r['kv_full_bytes']:>8.1f}%"
          f"{r['prefill_tokens_per_second']:>15.0f}{r['decode_tokens_per_second']:>14.1f}")
PY

echo; echo "== a short evaluation (the budget sweeps: bench/results/eval_ekva-moe-tiny_2026-12-03.md)"
$ekva eval -m "$model" --profile "$out/profile.json" --contexts 4096 --max-retrieval 6 \
  --ppl-contexts 4096 --max-ppl 1 --ppl-continuation 256 --budgets 10% \
  --methods uniform:snapkv,pyramidkv:snapkv,adakv:snapkv,ekva-entropy:snapkv,ekva-mass:snapkv,headkv:snapkv
