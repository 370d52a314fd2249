#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite twice: a normal (Release)
# build, and a Debug build with AddressSanitizer and UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup.sh --with-test-tools build
echo "== tests: release build =="
ctest --test-dir build --output-on-failure -j "$(nproc)"

tools/setup.sh --with-test-tools build-sanitize -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE='address;undefined'
echo "== tests: address + undefined-behaviour sanitizer build =="
ctest --test-dir build-sanitize --output-on-failure -j "$(nproc)"
