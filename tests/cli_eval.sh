#!/usr/bin/env bash
# `ekva eval` on the shipped model with one part of the evaluation switched off
# (--retrieval ""): the columns it did not measure read "–" (null in the JSON),
# never "nan%", and "KV after prompt" is measured on the perplexity contexts.
# Needs EKVA (the binary), SHIPPED_MODEL and PYTHON.
set -u
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }

tokens=1
for i in $(seq 1 299); do tokens+=",$((100 + (i * 7919) % 20000))"; done
echo "{\"context\": 300, \"tokens\": [$tokens]}" > "$tmp/ppl.jsonl"

out=$("$EKVA" eval -m "$SHIPPED_MODEL" --retrieval "" --ppl "$tmp/ppl.jsonl" --ppl-context 300 \
      --ppl-continuation 16 --methods uniform:snapkv,adakv:h2o --budgets 20% -t 2 \
      --json-out "$tmp/eval.json" 2>"$tmp/stderr")
rc=$?
echo "$out"
[ $rc -eq 0 ] || { fail "ekva eval exited $rc"; cat "$tmp/stderr"; }
grep -qi "nan" <<<"$out" && fail "the table prints nan"
rows=$(grep -cE '^\| (full|uniform:snapkv|adakv:h2o) ' <<<"$out")
[ "$rows" -eq 3 ] || fail "expected 3 rows, got $rows"
# | method | budget | KV after prompt | retrieval@2048 | retrieval@4096 | ppl | Δppl |
while IFS='|' read -r _ method budget kv r1 r2 ppl delta _; do
  [[ $kv =~ ^\ [0-9]+\.[0-9]%\ $ ]] || fail "$method: KV after prompt is '$kv'"
  [ "$r1" = " – " ] && [ "$r2" = " – " ] || fail "$method: unmeasured retrieval reads '$r1' '$r2'"
  [[ $ppl =~ ^\ [0-9]+\.[0-9]+\ $ ]] || fail "$method: perplexity is '$ppl'"
done < <(grep -E '^\| (full|uniform:snapkv|adakv:h2o) ' <<<"$out")
"$PYTHON" - "$tmp/eval.json" <<'PY' || fail "JSON"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
for r in rows:
    assert isinstance(r["kv_fraction_after_prompt"], float), r
    assert 0 < r["kv_fraction_after_prompt"] <= 1, r
    assert all(v["accuracy_pct"] is None for v in r["retrieval"].values()), r
    assert isinstance(r["perplexity"], float), r
PY

[ $fails -eq 0 ] && echo "eval report checks passed" || { echo "$fails eval report check(s) failed"; exit 1; }
