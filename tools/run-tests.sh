#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite twice: a normal (Release)
# build (with the CUDA backend when the CUDA toolkit is installed), and a Debug build with
# AddressSanitizer and UndefinedBehaviorSanitizer (without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."

# The release build compiles the CUDA backend wherever the toolkit is (MOE_CUDA=ON then fails the
# configure step rather than quietly building without it); the GPU tests skip without a device.
cuda=()
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  cuda=(-DMOE_CUDA=ON)
  command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
fi
tools/setup.sh --with-test-tools build "${cuda[@]}"
echo "== tests: release build =="
ctest --test-dir build --output-on-failure -j "$(nproc)"

# Without CUDA: the sanitizers instrument host code only, and the CUDA runtime needs ASan's shadow
# gap unprotected.
tools/setup.sh --with-test-tools build-sanitize -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE='address;undefined' -DMOE_CUDA=OFF
echo "== tests: address + undefined-behaviour sanitizer build =="
ctest --test-dir build-sanitize --output-on-failure -j "$(nproc)"
