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
# Issue 12's layer shape: bf16, d_model 4096, expert hidden 14336, E 8, top-2, 8192 tokens, SwiGLU.
"$build_dir"/bench-moe-layer --device cuda --precision bf16 --d 4096 --h 14336 --experts 8 --topk 2 \
  --tokens 8192 --activation swiglu --warmup 2 --repeats 5 || status=1
"$build_dir"/bench-moe-layer --device cuda --warmup 2 --repeats 5 || status=1
# A training step of configs/gpu-example.yaml on this one GPU (4 of its 24 layers, so that the fp32 masters
# and AdamW state fit), synthetic data, MFU against the H100/H200 SXM bf16 dense peak (989 TFLOP/s).
run_dir=$(mktemp -d)
mpirun --allow-run-as-root -np 1 "$build_dir"/moe-train configs/gpu-example.yaml model.n_layers=4 \
  model.precision=bf16 data.source=synthetic data.eval_path= run.steps=30 run.log_every=10 \
  run.eval_every=0 checkpoint.every=0 run.peak_gflops=989000 run.dir="$run_dir/run" || status=1
rm -rf "$run_dir"
exit $status
