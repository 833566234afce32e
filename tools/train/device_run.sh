#!/bin/bash
# Runs on the GPU machine, from the repository root, inside one `run` call:
# trains, saves and evaluates ekva-moe-tiny, writing everything to $OUT.
# Needs .device/corpus/{train,val}.jsonl.xz (tools/train/pack_corpus.sh) carried along.
# Extra arguments go to tools/train/train.py.
set -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
: "${OUT:?set OUT to the output folder}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 tools/train/train.py --out "$OUT" "$@" 2>&1 | tee "$OUT/train.log"
