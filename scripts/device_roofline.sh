#!/usr/bin/env bash
# The roofline on the GPU machine, in one call: build the CLI (scripts/device_build.sh,
# BUILD_TARGETS=ekva), measure the H200's ceilings (`ekva roofline probe --device
# cuda`), profile a generation of the shipped model on the GPU with CUDA events at
# batch 1 and at batch 16 (`--prompts`), and turn each profile into the report (table,
# SVG/PNG roofline, diagnosis) against the measured ceilings.
# Under $OUT: summary.txt (VERDICT last), gpu_probe.json/.txt, ops_b1.json, ops_b16.json,
# report_b1/, report_b16/.
#   OUT=/tmp/out EKVA_COMMIT=<hash> bash scripts/device_roofline.sh
set -u
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out/device-roofline}
BUDGET=${BUDGET:-400}
export BUILD_TARGETS=${BUILD_TARGETS:-ekva}
EKVA_BUILD_ONLY=1 source "$ROOT/scripts/device_build.sh" || exit 1
B=$BUILD
M="$ROOT/models/ekva-moe-tiny"
step "ekva roofline probe --device cuda" 90 "$OUT/gpu_probe.txt" \
  "$B/ekva" roofline probe --device cuda --runs 9 --json-out "$OUT/gpu_probe.json"
sed 's/^/    /' "$OUT/gpu_probe.txt" >> "$OUT/summary.txt"
step "generate --device cuda --op-profile (batch 1)" 60 "$OUT/gen_b1.txt" \
  "$B/ekva" generate -m "$M" -p "The kernel of the system" -n 64 --ignore-eos --device cuda \
  --op-profile "$OUT/ops_b1.json"
: > "$OUT/prompts.jsonl"
for i in $(seq 16); do
  echo "{\"prompt\": \"Sequence $i: the kernel of the system keeps a table of every page.\", \"max_new_tokens\": 64}" >> "$OUT/prompts.jsonl"
done
step "generate --device cuda --op-profile (16 prompts batched)" 60 "$OUT/gen_b16.txt" \
  "$B/ekva" generate -m "$M" --prompts "$OUT/prompts.jsonl" --max-batch 16 --ignore-eos \
  --device cuda --op-profile "$OUT/ops_b16.json"
for b in b1 b16; do
  [ -s "$OUT/ops_$b.json" ] && step "roofline report ($b)" 60 "$OUT/report_$b.txt" \
    "$B/ekva" roofline report "$OUT/ops_$b.json" --probe "$OUT/gpu_probe.json" \
    --out "$OUT/report_$b" --python "${PY:-python3}" --plot-script "$ROOT/tools/plot_roofline.py"
  [ -f "$OUT/report_$b.txt" ] && tail -20 "$OUT/report_$b.txt" | sed 's/^/    /' >> "$OUT/summary.txt"
done
if (( FAILED == 0 )); then say "VERDICT PASS ($(elapsed) s)"; else say "VERDICT FAIL ($(elapsed) s)"; fi
exit $FAILED
