#!/usr/bin/env bash
# Runs every check that needs a GPU and prints everything: the GPU, the device-parameterised op tests,
# the model and checkpoints across devices, the NCCL communicator (one rank), a few training steps on
# the GPU against the CPU, and the GPU benchmarks. Two ways to get the binaries:
#   tools/gpu-check.sh [BUILD_DIR]          builds here with MOE_CUDA=ON (needs the project's packages)
#   tools/gpu-check.sh --bundle TAR.XZ      unpacks tools/gpu-bundle.sh's bundle (for a GPU machine
#                                           with the CUDA toolkit but none of the other packages)
# Exit status: non-zero when a build step or a check fails, or when no GPU is visible.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
fail() { echo "FAIL: $*"; status=1; }

if [ "${1:-}" = --bundle ]; then
  root=/tmp/moe-bundle
  rm -rf "$root" && mkdir -p "$root" && tar -C "$root" -xJf "$2" || exit 1
  bin=$root/bin tests=$root/bin configs=$root/configs
  # OpenMPI from the bundle, as isolated singletons (no mpirun, no daemon); CUDA's libraries from the
  # machine: the toolkit's and the Python packages' (cuBLAS, NCCL, the runtime).
  export OPAL_PREFIX=$root OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_mca_base_component_show_load_errors=0
  cuda_dirs=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib / -maxdepth 0 2>/dev/null | grep -v '^/$')
  py_dirs=$(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, d, "lib") for d in sorted(os.listdir(p))))' 2>/dev/null)
  export LD_LIBRARY_PATH=$root/lib:$(echo $cuda_dirs $py_dirs | tr ' ' ':')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  run1=()  # one rank: a singleton
  missing=$(ldd "$bin/moe-train" "$tests/test_backend_ops" | grep "not found" | sort -u)
  [ -z "$missing" ] || fail "libraries not found: $missing"
else
  build_dir=${1:-build-gpu}
  echo "== build (Release, MOE_CUDA=ON) in $build_dir"
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON >/dev/null || exit 1
  cmake --build "$build_dir" -j "$(nproc)" >/dev/null || { cmake --build "$build_dir" 2>&1 | grep -E "error" | head -20; exit 1; }
  bin=$build_dir tests=$build_dir/tests configs=configs
  run1=(mpirun --allow-run-as-root -np 1)
fi

echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || fail "no nvidia-smi"

echo "== GPU tests"
for t in test_backend_ops test_device_training; do
  out=$("$tests/$t" 2>&1); rc=$?
  echo "$out" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|error" | head -40
  [ $rc = 0 ] || fail "$t"
  echo "$out" | grep -q "no CUDA device" && fail "$t skipped its GPU half: no CUDA device visible"
done
"${run1[@]}" "$tests/test_nccl_communicator" 2>&1 | grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure" | head -20
[ "${PIPESTATUS[0]}" = 0 ] || fail test_nccl_communicator

echo "== the tiny config, 5 steps on one rank: GPU (NCCL, then MPI staged through the host) against CPU"
work=$(mktemp -d)
for run in "cpu run.device=cpu" "nccl run.device=cuda parallel.backend=nccl" "staged run.device=cuda parallel.backend=mpi"; do
  set -- $run
  "${run1[@]}" "$bin/moe-train" "$configs/tiny.yaml" "${@:2}" run.steps=5 run.log_every=1 run.eval_every=0 \
    checkpoint.every=5 run.dir="$work/$1" 2>&1 | grep -E "^step|^rank 0|moe-train:" || fail "moe-train: $run"
done
for gpu in nccl staged; do
  python3 - "$work/cpu/metrics.jsonl" "$work/$gpu/metrics.jsonl" <<'PY' || fail "GPU ($gpu) losses differ from the CPU's"
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if "loss" in json.loads(l)] for p in sys.argv[1:3])
print("cpu", a, "\ngpu", b)
assert len(a) == len(b) == 5 and all(abs(x - y) <= 1e-3 * abs(x) for x, y in zip(a, b))
PY
done

echo "== $(date -u +%T) GPU benchmarks"
# Issue 12's layer shape: bf16, d_model 4096, expert hidden 14336, E 8, top-2, 8192 tokens, SwiGLU.
# The weights are drawn on the host: all cores draw them (the same values on any thread count).
threads=$(nproc)
"$bin/bench-moe-layer" --device cuda --precision bf16 --d 4096 --h 14336 --experts 8 --topk 2 --tokens 8192 \
  --activation swiglu --warmup 2 --repeats 5 --threads "$threads" || fail bench-moe-layer
# A training step of configs/gpu-example.yaml on this one GPU (4 of its 24 layers, so that the fp32 masters
# and AdamW state fit), synthetic data, MFU against the H100/H200 SXM bf16 dense peak (989 TFLOP/s).
"${run1[@]}" "$bin/moe-train" "$configs/gpu-example.yaml" model.n_layers=4 model.precision=bf16 parallel.backend=nccl \
  data.source=synthetic data.eval_path= run.steps=30 run.log_every=10 run.eval_every=0 checkpoint.every=0 \
  checkpoint.resume=never run.peak_gflops=989000 run.threads_per_rank="$threads" run.dir="$work/gpu-example" 2>&1 |
  grep -E "^step|^MFU|moe-train:" || fail "gpu-example training"
python3 -c 'import json, sys; t = [json.loads(l) for l in open(sys.argv[1]) if "time_s" in l][-1]["time_s"]
print("phases of a step (ms):", ", ".join("%s %.1f" % (k, 1e3 * v) for k, v in t.items()))' "$work/gpu-example/metrics.jsonl"
rm -rf "$work"
exit $status
