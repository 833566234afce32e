#!/bin/sh
# Compress the training and validation splits of data/corpus/ (tools/corpus/build.sh)
# into .device/corpus/ (gitignored), the folder the GPU call carries.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p .device/corpus
for s in train val; do
    nice -n 10 xz -T2 -6 -c "data/corpus/$s.jsonl" > ".device/corpus/$s.jsonl.xz.tmp"
    mv ".device/corpus/$s.jsonl.xz.tmp" ".device/corpus/$s.jsonl.xz"
done
ls -l .device/corpus
