#!/usr/bin/env bash
# Installs any missing build dependency from the distribution's packages, then configures and
# builds the project. Usage: tools/setup.sh [--with-test-tools] [BUILD_DIR [extra cmake arguments...]]
#   --with-test-tools also installs what the end-to-end tests run besides our binaries.
#   BUILD_DIR defaults to build/. Safe to run again: it installs and rebuilds only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test_tools=0
if [ "${1:-}" = --with-test-tools ]; then
  with_test_tools=1
  shift
fi
build_dir=${1:-build}
shift || true

# Debian package names; each one is what a find_package() in CMakeLists.txt needs.
packages=(
  g++ cmake make pkg-config
  libopenmpi-dev openmpi-bin          # MPI
  libprotobuf-dev protobuf-compiler   # checkpoints
  libyaml-cpp-dev                     # configs
  libsentencepiece-dev                # moe-tokenize: SentencePiece tokenizers
  nlohmann-json3-dev                  # reading Hugging Face tokenizer.json, config.json and safetensors headers
  libgtest-dev libgmock-dev           # tests
  libdnnl-dev                         # GEMM provider (oneDNN), chosen in docs/gemm-provider.md
  ocl-icd-opencl-dev                  # oneDNN's CMake package config calls find_package(OpenCL); only a
                                      # "Recommends" of libdnnl-dev, so --no-install-recommends leaves it out
)
if ((with_test_tools)); then
  packages+=(
    python3 python3-venv              # the tests read metrics.jsonl, manifests and exports with Python;
                                      # tensorboard and safetensors come from PyPI into a venv
    python3-torch libopenblas0-pthread  # the Mixtral reference test: transformers (PyPI, in a venv over
                                      # Debian's torch); torch links the generic libblas.so.3, slow without OpenBLAS
    procps                            # pgrep: the signal tests find the ranks
  )
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
