#!/usr/bin/env bash
# The main job: set up, build, and generate with the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target ekva
model=models/ekva-moe-tiny
./build/release/ekva info -m "$model"
echo
./build/release/ekva generate -m "$model" -n 64 \
  -p "The Linux kernel is"
