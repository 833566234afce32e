# Shared by the scripts/device_*.sh scripts, sourced after they set START, ROOT, OUT,
# BUILD and BUDGET: the summary file, a step runner with per-step time limits inside
# the script's budget, the CUDA toolkit's tools (compute-sanitizer may sit beside nvcc
# or in its own folder, and the toolkit off the PATH), COMMIT and $OUT/env.txt.
mkdir -p "$OUT"
: > "$OUT/summary.txt"
FAILED=0

say() { echo "$*" | tee -a "$OUT/summary.txt"; }
elapsed() { echo $(( $(date +%s) - START )); }
# step NAME LIMIT_S LOG COMMAND...: runs with a time limit, unless the budget is spent.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$(( BUDGET - $(elapsed) ))
  if (( left < 15 )); then
    say "SKIP $name: time budget spent ($(elapsed) s elapsed)"
    FAILED=1
    return 1
  fi
  (( limit > left )) && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    say "PASS $name (${dt} s)"
  else
    (( rc == 124 || rc == 137 )) && say "FAIL $name: timed out after ${limit} s (log: $(basename "$log"))" \
                                 || say "FAIL $name: exit $rc (${dt} s; log: $(basename "$log"))"
    tail -n 15 "$log" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
    FAILED=1
  fi
  return $rc
}

# The toolkit's folder may be off the PATH.
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin
SANITIZER=$(command -v compute-sanitizer || true)
for cand in /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda/bin/compute-sanitizer \
  /opt/nvidia/compute-sanitizer/compute-sanitizer; do
  [ -z "$SANITIZER" ] && [ -x "$cand" ] && SANITIZER=$cand
done
[ -z "$SANITIZER" ] && SANITIZER=$(find /usr/local /opt -maxdepth 4 -name compute-sanitizer -type f -perm -u+x 2>/dev/null | head -1)

COMMIT=${EKVA_COMMIT:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}
{
  echo "commit: $COMMIT"
  date -u
  nvidia-smi 2>&1 | head -20
  echo; command -v nvcc && nvcc --version
  echo; command -v cmake && cmake --version | head -1
  echo; command -v ninja && ninja --version
  echo; command -v g++ && g++ --version | head -1
  echo; echo "compute-sanitizer: ${SANITIZER:-not found}"; [ -n "$SANITIZER" ] && "$SANITIZER" --version | head -3
  echo; nproc
} > "$OUT/env.txt" 2>&1
