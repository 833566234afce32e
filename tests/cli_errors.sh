#!/usr/bin/env bash
# The `ekva` command on bad input: a non-zero exit and one clear message naming the
# culprit, never a crash. Needs EKVA (the binary) and DATA (the test data folder).
set -u
fails=0
tmp=$(mktemp -d)
src_dir=$(cd "$(dirname "$0")/.." && pwd)
trap 'rm -rf "$tmp"' EXIT

# expect_error WANT_SUBSTRING -- COMMAND...
expect_error() {
  local want=$1; shift; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
    echo "FAIL (exit $rc, want a clean non-zero exit): $*"; echo "$out" | head -5; fails=$((fails+1))
  elif ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL (message lacks '$want'): $*"; echo "$out" | head -5; fails=$((fails+1))
  else
    echo "ok: $want"
  fi
}

ref=$DATA/reference/mixtral
expect_error "not a model directory" -- "$EKVA" generate -m "$tmp/nope" -p hi
expect_error "tokenizer.json" -- "$EKVA" generate -m "$ref" -p hi
expect_error "give a prompt" -- "$EKVA" generate -m "$ref"
expect_error "top-p" -- "$EKVA" generate -m "$ref" -p hi --top-p 2
expect_error "missing.txt: cannot open prompt file" -- "$EKVA" generate -m "$ref" -f "$tmp/missing.txt"

cp -r "$ref" "$tmp/trunc"
head -c 100 "$ref/model.safetensors" > "$tmp/trunc/model.safetensors"
expect_error "model.safetensors: truncated" -- "$EKVA" info -m "$tmp/trunc"

cp -r "$ref" "$tmp/arch"
sed -i 's/MixtralForCausalLM/FalconForCausalLM/' "$tmp/arch/config.json"
expect_error "'FalconForCausalLM' is not supported" -- "$EKVA" info -m "$tmp/arch"

# `ekva info` names the architecture and the shape (a Qwen3-MoE with dense layers).
out=$("$EKVA" info -m "$DATA/reference/qwen3_moe_dense" 2>&1)
if grep -q '^architecture *Qwen3MoeForCausalLM$' <<<"$out" &&
   grep -q '^heads / kv heads *4 / 1 (head_dim 16, q/k norm per head)$' <<<"$out" &&
   grep -q '^experts *8 routed, top-2 (expert ffn 48)$' <<<"$out" &&
   grep -q '^dense layers *0, 2, 3 (ffn 96)$' <<<"$out"; then
  echo "ok: info describes a Qwen3-MoE"
else
  echo "FAIL: info on qwen3_moe_dense"; echo "$out"; fails=$((fails+1))
fi

# `ekva info` on a DeepSeek-V3 checkpoint: MLA, its latent and its routing.
out=$("$EKVA" info -m "$DATA/reference/deepseek_v3" 2>&1)
if echo "$out" | grep -q "architecture      DeepseekV3ForCausalLM" &&
   echo "$out" | grep -q "MLA, 4 heads x (nope 16 + rope 8), v_head_dim 16" &&
   echo "$out" | grep -q "kv_lora_rank 32 + rope 8 per token, q_lora_rank 32" &&
   echo "$out" | grep -q "sigmoid + selection bias, best 2 of 4 groups, scale 2.5" &&
   echo "$out" | grep -q "KV per token      480 B (f32)"; then
  echo "ok: info describes a DeepSeek-V3"
else
  echo "FAIL: info on deepseek_v3"; echo "$out"; fails=$((fails+1))
fi

# With a real tokenizer: the shipped model, when present.
model=${SHIPPED_MODEL:-}
if [ -n "$model" ] && [ -d "$model" ]; then
  long=$(printf 'the quick brown fox jumps over the lazy dog %.0s' $(seq 1 40))
  expect_error "does not fit the context of 64 tokens" -- "$EKVA" generate -m "$model" -c 64 -p "$long"
  expect_error "exceeds the model's max_position_embeddings" -- "$EKVA" generate -m "$model" -c 100000000 -p hi
  expect_error "below the" -- "$EKVA" generate -m "$model" -p hi --policy snapkv --budget 8
  expect_error "exceeds the full cache" -- "$EKVA" generate -m "$model" -p hi --policy snapkv --budget 120%
  expect_error "unknown policy 'lru'" -- "$EKVA" generate -m "$model" -p hi --policy lru --budget 10%
  expect_error "needs a calibration profile" -- "$EKVA" generate -m "$model" -p hi --policy snapkv --allocator ekva-mass --budget 10%
  expect_error "budget 'ten'" -- "$EKVA" generate -m "$model" -p hi --policy snapkv --budget ten
  echo '{"version": 99}' > "$tmp/profile.json"
  expect_error "profile.json" -- "$EKVA" generate -m "$model" -p hi --policy snapkv --allocator ekva-mass --budget 10% --profile "$tmp/profile.json"
  expect_error "validation_sample.txt" -- "$EKVA" calibrate -m "$model" --data "$tmp/validation_sample.txt" -o "$tmp/p.json"
  # headkv needs the retrieval-head statistics; the needle prompts are checked up front.
  /usr/bin/python3 -c 'import json, sys
p = json.load(open(sys.argv[1]))
for layer in p["layers"]: layer.pop("head_retrieval", None)
json.dump(p, open(sys.argv[2], "w"))' "$src_dir/bench/results/profile_ekva-moe-tiny.json" "$tmp/noheads.json"
  expect_error "--retrieval-heads" -- "$EKVA" generate -m "$model" -p hi --policy snapkv --allocator headkv --budget 10% --profile "$tmp/noheads.json"
  expect_error "missing.jsonl" -- "$EKVA" calibrate -m "$model" --data "$src_dir/data/calibration/validation_sample.txt" -o "$tmp/p.json" --retrieval-heads "$tmp/missing.jsonl"
  printf '{"context": 1024, "prompt": "hi", "answer_tokens": [5], "needle_token_pos": 0}\n' > "$tmp/needles.jsonl"
  expect_error "has no answer tokens at needle_token_pos" -- "$EKVA" calibrate -m "$model" --data "$src_dir/data/calibration/validation_sample.txt" -o "$tmp/p.json" --retrieval-heads "$tmp/needles.jsonl"
  cp -r "$model" "$tmp/badtok"
  echo '{"model": {"type": "BPE", "vocab": ' > "$tmp/badtok/tokenizer.json"
  expect_error "tokenizer.json" -- "$EKVA" generate -m "$tmp/badtok" -p hi
  # Many prompts: a malformed line fails the file before anything runs; refused
  # prompts (empty, too long) get an error record and the others still run.
  printf '{"prompt": "hi"}\n\n{"prompt": 3}\n' > "$tmp/p1.jsonl"
  expect_error "p1.jsonl:3: expected a string field \"prompt\"" -- "$EKVA" generate -m "$model" --prompts "$tmp/p1.jsonl"
  printf '{"prompt": "hi"}\n{"prompt": "hi"\n' > "$tmp/p2.jsonl"
  expect_error "p2.jsonl:2: not JSON" -- "$EKVA" generate -m "$model" --prompts "$tmp/p2.jsonl"
  printf '{"prompt": "hi", "max_new_tokens": -2}\n' > "$tmp/p3.jsonl"
  expect_error "p3.jsonl:1: \"max_new_tokens\" must be a non-negative integer" -- "$EKVA" generate -m "$model" --prompts "$tmp/p3.jsonl"
  expect_error "missing.jsonl: cannot open prompts file" -- "$EKVA" generate -m "$model" --prompts "$tmp/missing.jsonl"
  printf '{"prompt": "The kernel", "max_new_tokens": 3, "id": "ok"}\n{"prompt": ""}\n{"prompt": "%s"}\n' "$long" > "$tmp/p4.jsonl"
  expect_error "2 of 3 prompts refused" -- "$EKVA" generate -m "$model" -c 64 --prompts "$tmp/p4.jsonl"
  out=$("$EKVA" generate -m "$model" -c 64 --prompts "$tmp/p4.jsonl" 2>/dev/null)
  if grep -q '"line":2' <<<"$out" && grep -q 'does not fit the context' <<<"$out" &&
     grep -q '"id":"ok".*"stop_reason":"length"' <<<"$out"; then
    echo "ok: refused prompts have error records, the others run"
  else
    echo "FAIL: --prompts records"; echo "$out" | head -5; fails=$((fails+1))
  fi
  expect_error "max_step_tokens (4) must be at least max_sequences (8)" -- "$EKVA" generate -m "$model" --prompts "$tmp/p4.jsonl" --max-batch 8 --step-tokens 4

  # The roofline commands: missing and corrupt ceilings and op profiles, impossible targets.
  expect_error "give the ceilings with --probe FILE" -- "$EKVA" plan -m "$model" --context 4096
  expect_error "unknown hardware 'tpu'" -- "$EKVA" plan -m "$model" --context 4096 --hardware tpu
  expect_error "missing-probe.json: cannot open ceilings file" -- "$EKVA" plan -m "$model" --context 4096 --probe "$tmp/missing-probe.json"
  echo '{"format": "ekva-ceilings", "version": 1, "name": "cpu"' > "$tmp/cut.json"
  expect_error "cut.json: not valid JSON" -- "$EKVA" plan -m "$model" --context 4096 --probe "$tmp/cut.json"
  echo '{"format": "ekva-ceilings", "version": 1, "name": "cpu", "device": "x", "source": "measured"}' > "$tmp/short.json"
  expect_error "short.json: missing field 'memory_gb_per_s'" -- "$EKVA" plan -m "$model" --context 4096 --probe "$tmp/short.json"
  expect_error "cannot be met at batch 64" -- "$EKVA" plan -m "$model" --context 4096 --batch 64 --tpot-ms 0.001 --hardware cpu
  expect_error "not-a-model/config.json" -- "$EKVA" plan -m "$tmp/not-a-model" --context 4096 --hardware h200
  expect_error "--budget '2048'" -- "$EKVA" plan -m "$model" --context 4096 --hardware h200 --budget 2048
  expect_error "missing-profile.json: cannot open op profile" -- "$EKVA" roofline report "$tmp/missing-profile.json" --hardware cpu --out "$tmp/r"
  echo '{"format": "ekva-op-profile", "version": 1, "backend": "cpu", "timer": "host", "phases": []}' > "$tmp/op.json"
  expect_error "op.json: missing field 'ops'" -- "$EKVA" roofline report "$tmp/op.json" --hardware cpu --out "$tmp/r"
  "$EKVA" generate -m "$model" -p "The kernel" -n 3 --ignore-eos --op-profile "$tmp/op.json" >/dev/null 2>&1
  expect_error "no ops in phase 'mixed' (it has: decode, prefill)" -- "$EKVA" roofline report "$tmp/op.json" --hardware cpu --out "$tmp/r" --phase mixed --no-plot
  expect_error "cut.json: not valid JSON" -- "$EKVA" roofline report "$tmp/op.json" --probe "$tmp/cut.json" --out "$tmp/r"
fi

[ $fails -eq 0 ] && echo "all CLI error checks passed" || { echo "$fails CLI error check(s) failed"; exit 1; }
