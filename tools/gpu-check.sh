#!/usr/bin/env bash
# Builds the CUDA path and runs every check that needs a GPU, printing everything: the GPU, the build,
# the device-parameterised op tests, the model and checkpoints across devices, the NCCL communicator,
# the end-to-end GPU training test and the GPU benchmarks. For a machine with an NVIDIA GPU (sm_90 or
# newer), the CUDA toolkit and NCCL. Usage: tools/gpu-check.sh [BUILD_DIR]   (default build-gpu/)
# Exit status: non-zero when a build step or a test fails. A log is also written to BUILD_DIR/gpu-check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build-gpu}
mkdir -p "$build_dir"
exec > >(tee "$build_dir/gpu-check.log") 2>&1

echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || { echo "no nvidia-smi"; exit 1; }
nvcc --version | tail -1

echo "== build (Release, MOE_CUDA=ON)"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON >/dev/null || exit 1
cmake --build "$build_dir" -j "$(nproc)" 2>&1 | grep -E "error|warning: .*\.cu" ; [ "${PIPESTATUS[0]}" = 0 ] || exit 1

echo "== GPU tests"
status=0
(cd "$build_dir" && ctest --output-on-failure -R \
  'BackendOps|DeviceTraining|nccl|train_gpu_training|train_device_selection') || status=1
# A skip here means the GPU was not seen: that is a failure of this script's purpose.
if (cd "$build_dir" && ctest -N -R 'DeviceTraining' >/dev/null) &&
   "$build_dir"/tests/test_device_training 2>&1 | grep -q "SKIPPED"; then
  echo "FAIL: the GPU tests were skipped: no CUDA device visible"; status=1
fi

echo "== GPU benchmarks"
if "$build_dir"/bench-moe-layer --help 2>&1 | grep -q -- "--device"; then
  "$build_dir"/bench-moe-layer --device cuda || status=1
else
  echo "bench-moe-layer has no --device option in this commit: no GPU layer benchmark yet"
fi
exit $status
