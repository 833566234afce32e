#!/usr/bin/env bash
# The main job (scripts/main.sh) on the GPU machine, in one call: the CLI built there
# (scripts/device_build.sh, BUILD_TARGETS=ekva; the machine has no package registry),
# then main.sh with that binary and EKVA_DEVICE=cuda: calibration and the short eval
# on the CPU, the 4k pass-key prompt on the GPU with the full cache and with 10%
# budgets in device memory. Under $OUT: summary.txt (VERDICT last), main.txt.
#   OUT=/tmp/out EKVA_COMMIT=<hash> bash scripts/device_main.sh
set -u
START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/out/device-main}
BUDGET=${BUDGET:-500}
export BUILD_TARGETS=${BUILD_TARGETS:-ekva}
EKVA_BUILD_ONLY=1 source "$ROOT/scripts/device_build.sh" || exit 1
step "main job with --device cuda" 400 "$OUT/main.txt" \
  env EKVA_BIN="$BUILD/ekva" EKVA_DEVICE=cuda EKVA_MAIN_OUT=/tmp/ekva-main bash "$ROOT/scripts/main.sh"
grep -A4 "answer" "$OUT/main.txt" | head -6 | sed 's/^/    /' >> "$OUT/summary.txt"
if (( FAILED == 0 )); then say "VERDICT PASS ($(elapsed) s)"; else say "VERDICT FAIL ($(elapsed) s)"; fi
exit $FAILED
