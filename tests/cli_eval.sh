#!/usr/bin/env bash
# `ekva eval` on the shipped model with one part of the evaluation switched off
# (--retrieval ""): no retrieval columns (none in the JSON), never "nan", "KV held"
# measured on the perplexity contexts, perplexity shown in both settings, an
# iso-quality budget per method and setting, and the op profile of its decode steps.
# Needs EKVA (the binary), SHIPPED_MODEL and PYTHON.
set -u
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }

tokens=1
for i in $(seq 1 299); do tokens+=",$((100 + (i * 7919) % 20000))"; done
echo "{\"context\": 300, \"tokens\": [$tokens]}" > "$tmp/ppl.jsonl"

out=$("$EKVA" eval -m "$SHIPPED_MODEL" --retrieval "" --ppl "$tmp/ppl.jsonl" --ppl-contexts 300 \
      --ppl-continuation 16 --methods uniform:snapkv,adakv:h2o --budgets 20%,50% -t 2 \
      --json-out "$tmp/eval.json" --op-profile "$tmp/ops.json" 2>"$tmp/stderr")
rc=$?
echo "$out"
[ $rc -eq 0 ] || { fail "ekva eval exited $rc"; cat "$tmp/stderr"; }
grep -qi "nan" <<<"$out" && fail "the table prints nan"
rows=$(grep -cE '^\| (full|uniform:snapkv|adakv:h2o) \| [0-9]' <<<"$out")
[ "$rows" -eq 10 ] || fail "expected 10 rows (5 per setting), got $rows"
grep -q "retrieval@" <<<"$out" && fail "an unmeasured retrieval column is shown"
# | method | budget | KV held | ppl@300 |
while IFS='|' read -r _ method budget kv ppl _; do
  [[ $kv =~ ^\ [0-9]+\.[0-9]%\ $ ]] || fail "$method: KV held is '$kv'"
  [[ $ppl =~ ^\ [0-9]+\.[0-9]+\ $ ]] || fail "$method: perplexity is '$ppl'"
done < <(grep -E '^\| (full|uniform:snapkv|adakv:h2o) \| [0-9]' <<<"$out")
"$PYTHON" - "$tmp/eval.json" <<'PY' || fail "JSON"
import json, sys
j = json.load(open(sys.argv[1]))
rows = j["rows"]
assert len(rows) == 10 and {r["setting"] for r in rows} == {"prompt", "context"}, rows
for r in rows:
    assert isinstance(r["kv_fraction_held"], float), r
    assert 0 < r["kv_fraction_held"] <= 1, r
    assert "retrieval" not in r, r
    assert isinstance(r["perplexity"]["300"]["ppl"], float), r
full = [r for r in rows if r["method"] == "full"]
assert full[0]["perplexity"]["300"]["delta_pct"] == 0.0, full
iso = j["iso_quality"]
assert len(iso) == 4, iso  # 2 methods x 2 settings
for e in iso:
    b = e["iso_quality_budget_pct"]
    assert b is None or b in (20.0, 50.0), e
    ok = [r for r in rows if r["method"] == e["method"] and r["setting"] == e["setting"]
          and r["perplexity"]["300"]["delta_pct"] <= 2.0]
    # 50% meets the criterion exactly when the iso budget is not None
    fifty = [r for r in ok if r["budget"] == "50%"]
    assert (b is not None) == bool(fifty), (e, ok)
PY
# --op-profile: the lockstep decode of all methods (5 caches a step) is its decode phase.
"$PYTHON" - "$tmp/ops.json" <<'PY' || fail "op profile"
import json, sys
j = json.load(open(sys.argv[1]))
decode = [p for p in j["phases"] if p["phase"] == "decode"]
assert decode and decode[0]["steps"] == 15 and decode[0]["sequences"] == 75, j["phases"]
assert any(o["name"] == "attention" and o["phase"] == "decode" for o in j["ops"])
PY

[ $fails -eq 0 ] && echo "eval report checks passed" || { echo "$fails eval report check(s) failed"; exit 1; }
