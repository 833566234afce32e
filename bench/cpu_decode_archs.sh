#!/usr/bin/env bash
# CPU decode against the read bandwidth on checkpoints of three architectures'
# per-layer shapes (random weights, larger than the caches): Mixtral-shaped (1.2 GB),
# Qwen3-30B-A3B's (3 layers, 128 experts top-8), DeepSeek-V2-Lite's (4 layers, MLA,
# 64 experts top-6 + 2 shared). Each runs with the host's default GEMV prefetch and
# with the other setting (EKVA_GEMV_PREFETCH), and the runs merge into one JSON.
#   bench/cpu_decode_archs.sh OUT.json [WORKDIR]   (build/release must be built)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/cpu_decode_archs.sh OUT.json [WORKDIR]}
work=${2:-/tmp/ekva-cpu-decode}
mkdir -p "$work"
PY=/usr/bin/python3
[ -f "$work/mixtral/config.json" ] || $PY tools/make_reference.py --bench-model "$work/mixtral" --bench-size-mb 1200
[ -f "$work/qwen3/config.json" ] || $PY tools/make_reference.py --bench-model "$work/qwen3" --bench-arch qwen3_30b_a3b --bench-layers 3
[ -f "$work/deepseek/config.json" ] || $PY tools/make_reference.py --bench-model "$work/deepseek" --bench-arch deepseek_v2_lite --bench-layers 4
runs=()
for m in mixtral qwen3 deepseek; do
  for pf in default 0 4096; do
    j="$work/$m-$pf.json"
    if [ "$pf" = default ]; then
      build/release/bench/ekva_bench_decode -m "$work/$m" --commit "$(git rev-parse --short HEAD)" --json-out "$j" | tail -3
    else
      EKVA_GEMV_PREFETCH=$pf build/release/bench/ekva_bench_decode -m "$work/$m" --commit "$(git rev-parse --short HEAD)" --json-out "$j" | tail -3
    fi
    runs+=("$pf=$j")
  done
done
$PY - "$out" "$(git rev-parse --short HEAD)" "${runs[@]}" <<'PY'
import json, sys
out, commit, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
merged = None
for r in runs:
    pf, path = r.split("=", 1)
    j = json.load(open(path))
    if merged is None:
        merged = {k: j[k] for k in ("benchmark", "date", "device", "method")}
        merged["commit"] = commit
        merged["sizes"] = []
    merged["sizes"].append({"gemv_prefetch": pf, "model": j["model"], "decode": j["decode"],
                            "prefill": j["prefill"],
                            "load_average_before_after": j["load_average_before_after"],
                            "rounds_file": path})
merged["note"] = ("gemv_prefetch: 'default' is the host's (4096 bytes on Intel, 0 elsewhere), "
                  "else EKVA_GEMV_PREFETCH's value")
json.dump(merged, open(out, "w"), indent=1)
for s in merged["sizes"]:
    d = s["decode"]
    print(f"{s['model']['architecture']:24s} prefetch {s['gemv_prefetch']:>7s}: "
          f"{d['fraction_of_read_bandwidth']:.3f} of the read bandwidth "
          f"(range {d['fraction_range'][0]:.3f}-{d['fraction_range'][1]:.3f}), "
          f"{d['tokens_per_second']:.1f} tok/s")
PY
