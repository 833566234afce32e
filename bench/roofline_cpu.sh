#!/usr/bin/env bash
# The roofline results of the shipped model on this machine, repeated because the host
# is shared: R rounds of (probe; profiled decode at batch 1 and at batch 64 through
# `ekva generate --op-profile`; ekva_bench_batch_decode over contexts, batches and
# budgets), then the roofline reports and plot of the median round, and every
# bench row against `ekva plan`'s prediction from the same round's probe.
#
#   bench/roofline_cpu.sh [OUT_DIR] [ROUNDS]     (default bench/results, 3)
#
# Writes OUT_DIR/roofline_cpu_<date>.json (probe figures, reports' summaries, the
# expert test, predicted against measured steps with errors; commit, machine, date,
# load averages) and OUT_DIR/roofline_cpu_<date>.{svg,png} (batch 1 and 64 on one plot).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
rounds=${2:-3}
build=build/release
model=models/ekva-moe-tiny
calibration=bench/results/profile_ekva-moe-tiny.json
date=$(date +%F)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 64 prompts of 24 words from the calibration text (the same distribution the
# calibration profile's routing frequencies come from), 48 tokens each.
python3 - "$work/prompts64.jsonl" <<'PY'
import json, sys
words = open("data/calibration/validation_sample.txt").read().split()
with open(sys.argv[1], "w") as f:
    for i in range(64):
        f.write(json.dumps({"prompt": " ".join(words[i * 40:i * 40 + 24]), "id": i}) + "\n")
PY

for r in $(seq 1 "$rounds"); do
  d=$work/round$r
  mkdir -p "$d"
  cat /proc/loadavg > "$d/load_before"
  $build/ekva roofline probe -m $model --json-out "$d/probe.json" > "$d/probe.txt"
  $build/ekva generate -m $model -p "The kernel of the operating system" -n 128 --ignore-eos \
      --op-profile "$d/b1.json" > /dev/null 2>&1
  $build/ekva generate -m $model --prompts "$work/prompts64.jsonl" -n 48 --ignore-eos \
      --max-batch 64 --step-tokens 4096 --op-profile "$d/b64.json" > /dev/null 2>&1
  for ctx in 1024 4096; do
    $build/bench/ekva_bench_batch_decode -m $model --context $ctx --batches 1,4,16,64 \
        --budgets 100%,10% --steps 8 --json-out "$d/bench_$ctx.json" > "$d/bench_$ctx.txt"
  done
  cat /proc/loadavg > "$d/load_after"
  for b in b1 b64; do
    $build/ekva roofline report "$d/$b.json" --probe "$d/probe.json" --out "$d/report_$b" \
        --calibration $calibration --title "ekva-moe-tiny decode, batch ${b#b}" --no-plot > /dev/null
  done
  for ctx in 1024 4096; do
    for b in 1 4 16 64; do
      for budget in 100% 10%; do
        $build/ekva plan -m $model --context $ctx --batch $b --budget $budget \
            --probe "$d/probe.json" --json-out "$d/plan_${ctx}_${b}_${budget%\%}.json" > /dev/null
      done
    done
  done
  echo "round $r done: $(cat "$d/load_before") -> $(cat "$d/load_after")"
done

python3 - "$work" "$rounds" "$out" "$date" "$(git rev-parse --short HEAD)" <<'PY'
import json, os, shutil, statistics, subprocess, sys
work, rounds, out, date, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
load = lambda p: json.load(open(p))
med = statistics.median
rng = lambda xs: [min(xs), max(xs)]
R = [os.path.join(work, f"round{r}") for r in range(1, rounds + 1)]
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
field = lambda k: next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith(k)), "")

probes = [load(f"{d}/probe.json") for d in R]
def figure(key):
    xs = [p[key] for p in probes]
    return {"median": med(xs), "range": rng(xs), "rounds": xs}
probe = {k: figure(k) for k in ("memory_gb_per_s", "cache_gb_per_s", "cache_bytes",
                               "compute_gflop_per_s", "op_overhead_us")}
probe["compute_kind"] = probes[0]["compute_kind"]
probe["contended_rounds"] = sum(p["measurements"]["fma_gflop_per_s"]["contended"] for p in probes)

def step_ms(profile):
    ph = [p for p in profile["phases"] if p["phase"] == "decode"][0]
    return 1e3 * med(ph["step_seconds"])
reports = {}
for b in ("b1", "b64"):
    reps = [load(f"{d}/report_{b}/roofline.json") for d in R]
    steps = [step_ms(load(f"{d}/{b}.json")) for d in R]
    i = sorted(range(len(R)), key=lambda k: steps[k])[len(R) // 2]  # the median round
    shutil.copy(f"{R[i]}/report_{b}/roofline.json", f"{work}/report_{b}.json")
    shutil.copy(f"{R[i]}/report_{b}/roofline.md", f"{work}/report_{b}.md")
    rep = reps[i]
    reports[b] = {
        "median_round": i + 1,
        "step_ms": {"median": med(steps), "range": rng(steps)},
        "expert_test": {k: [r["expert_test"][k] for r in reps] for k in reps[0]["expert_test"]},
        "diagnosis_median_round": rep["diagnosis"],
        "ops_median_round": [{k: o[k] for k in ("label", "kind", "share", "intensity", "gb_per_s",
                                                 "gflop_per_s", "bound", "roof_fraction",
                                                 "cache_roof_fraction", "rows_per_call")}
                             for o in rep["ops"]],
        "experts_median_round": [{k: e.get(k) for k in ("label", "rows_per_call", "intensity",
                                                        "gflop_per_s", "bound", "roof_fraction",
                                                        "query_entropy", "routing_frequency")}
                                 for e in rep["experts"]],
    }

checks = []
for ctx in (1024, 4096):
    for budget in ("100%", "10%"):
        for b in (1, 4, 16, 64):
            meas, pred = [], []
            for d in R:
                rows = [x for x in load(f"{d}/bench_{ctx}.json")["rows"]
                        if x["batch"] == b and x["budget"] == budget and "step_ms_median" in x]
                plan = load(f"{d}/plan_{ctx}_{b}_{budget[:-1]}.json")
                if rows:
                    meas.append(rows[0]["step_ms_median"])
                    pred.append(plan["step"]["ms"])
            if not meas:
                continue
            errors = [100 * (p / m - 1) for p, m in zip(pred, meas)]
            checks.append({"context": ctx, "batch": b, "budget": budget,
                           "measured_step_ms": {"median": med(meas), "range": rng(meas)},
                           "predicted_step_ms": {"median": med(pred), "range": rng(pred)},
                           "error_pct": {"median": med(errors), "range": rng(errors)},
                           "measured_tokens_per_s": b / med(meas) * 1e3,
                           "predicted_tokens_per_s": b / med(pred) * 1e3,
                           "predicted_from": load(f"{R[0]}/plan_{ctx}_{b}_{budget[:-1]}.json")["step"]["memory_gb_per_s"]})
abs_err = [abs(c["error_pct"]["median"]) for c in checks]
result = {
    "benchmark": "roofline_cpu",
    "commit": commit,
    "date": date,
    "machine": {"model_name": field("Model name"), "cpus": field("CPU(s)"),
                "cores_per_socket": field("Core(s) per socket"), "sockets": field("Socket(s)"),
                "threads_used": probes[0]["measurements"]["threads"]},
    "load_average": [[open(f"{d}/load_before").read().strip(), open(f"{d}/load_after").read().strip()]
                     for d in R],
    "rounds": rounds,
    "commands": [
        "ekva roofline probe -m models/ekva-moe-tiny --json-out probe.json",
        "ekva generate -m models/ekva-moe-tiny -p 'The kernel of the operating system' -n 128 --ignore-eos --op-profile b1.json",
        "ekva generate -m models/ekva-moe-tiny --prompts prompts64.jsonl -n 48 --ignore-eos --max-batch 64 --step-tokens 4096 --op-profile b64.json",
        "ekva roofline report bN.json --probe probe.json --calibration bench/results/profile_ekva-moe-tiny.json --out report_bN",
        "ekva_bench_batch_decode -m models/ekva-moe-tiny --context {1024,4096} --batches 1,4,16,64 --budgets 100%,10% --steps 8",
        "ekva plan -m models/ekva-moe-tiny --context C --batch B --budget X --probe probe.json"],
    "probe": probe,
    "reports": reports,
    "plan_against_bench_batch_decode": checks,
    "plan_error_pct": {"median_abs": med(abs_err), "max_abs": max(abs_err)},
}
os.makedirs(out, exist_ok=True)
with open(f"{out}/roofline_cpu_{date}.json", "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
for b in ("b1", "b64"):
    shutil.copy(f"{work}/report_{b}.md", f"{out}/roofline_cpu_{date}_{b}.md")
subprocess.run(["/usr/bin/python3", "tools/plot_roofline.py", f"{out}/roofline_cpu_{date}",
                f"{work}/report_b1.json", f"{work}/report_b64.json",
                "--title", f"ekva-moe-tiny decode on {field('Model name')} ({probes[0]['measurements']['threads']} threads): batch 1 and batch 64"],
               check=True)
print(json.dumps({"probe": probe, "plan_error_pct": result["plan_error_pct"]}, indent=1))
for c in checks:
    print(f"ctx {c['context']:5d} {c['budget']:>4} batch {c['batch']:3d}: measured {c['measured_step_ms']['median']:8.2f} ms, "
          f"predicted {c['predicted_step_ms']['median']:8.2f} ms, error {c['error_pct']['median']:+6.1f}%")
PY
