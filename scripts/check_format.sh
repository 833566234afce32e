#!/usr/bin/env bash
# Fails when a tracked C++/CUDA source differs from the committed .clang-format
# style; prints the files (and, with -v, the diff). Fix with:
#   git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' | grep -v '^tools/npm/' | xargs clang-format -i
set -euo pipefail
cd "$(dirname "$0")/.."
verbose=0
[ "${1:-}" = "-v" ] && verbose=1
command -v clang-format >/dev/null || { echo "check_format: clang-format is not installed" >&2; exit 1; }
bad=0
while IFS= read -r f; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "check_format: $f is not formatted"
    [ $verbose = 1 ] && diff <(cat "$f") <(clang-format "$f") | head -20
    bad=$((bad + 1))
  fi
done < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' | grep -v '^tools/npm/')
if [ $bad -gt 0 ]; then
  echo "check_format: $bad file(s) differ from .clang-format" >&2
  exit 1
fi
echo "check_format: all sources match .clang-format"
