#!/bin/bash
# Peak memory (resident set, per rank) of configs/small.yaml on 2 ranks at seq_len 512, 2048 and 8192
# (8, 2 and 1 sequences per rank: 4096, 4096 and 8192 tokens a step), in fp32 and bf16, with
# model.recompute none and all: attention keeps no (S, S) matrix, so memory follows the tokens of a
# step, not seq_len squared. Each rank runs under a small Python parent that reads its peak RSS
# (getrusage of the child) when it exits; the table shows the larger of the two ranks. Extra arguments
# are overrides for every run (e.g. model.n_layers=2); MEMORY_SHAPES="SxB ..." replaces the three
# (seq_len x sequences per rank) shapes.
# Usage: [MEMORY_SHAPES="512x8 2048x2 8192x1"] bench/train_memory.sh BUILD_DIR OUT_DIR [STEPS (4)] [KEY=VALUE ...]
set -euo pipefail
usage="usage: bench/train_memory.sh BUILD_DIR OUT_DIR [STEPS] [KEY=VALUE ...]"
build=${1:?$usage}
out=${2:?$usage}
steps=${3:-4}
shift $(($# < 3 ? $# : 3))
[[ $steps =~ ^[0-9]+$ && $steps -ge 1 ]] || { echo "STEPS = '$steps': expected an integer >= 1" >&2; exit 2; }
shapes=${MEMORY_SHAPES:-512x8 2048x2 8192x1}
for shape in $shapes; do
  [[ $shape =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] ||
    { echo "MEMORY_SHAPES entry '$shape': expected SEQ_LENxSEQUENCES, e.g. 512x8" >&2; exit 2; }
done
mkdir -p "$out"
mpirun_args=(-np 2 --oversubscribe)
[ "$(id -u)" = 0 ] && mpirun_args+=(--allow-run-as-root)

# Runs its arguments and writes the child's peak RSS in bytes to $RSS_DIR/rank-$OMPI_COMM_WORLD_RANK.
peak_rss='
import os, resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(os.path.join(os.environ["RSS_DIR"], "rank-" + os.environ["OMPI_COMM_WORLD_RANK"]), "w") as f:
    f.write(str(kib * 1024))
sys.exit(code)'

printf '%-8s %-6s %-9s %-10s %s\n' seq_len batch precision recompute "peak RSS per rank (GB)"
for shape in $shapes; do
  seq=${shape%x*}
  batch=${shape#*x}
  for precision in fp32 bf16; do
    for recompute in none all; do
      dir="$out/$seq-$precision-$recompute"
      rm -rf "$dir"
      mkdir -p "$dir"
      if ! RSS_DIR="$dir" mpirun "${mpirun_args[@]}" -x RSS_DIR python3 -c "$peak_rss" "$build/moe-train" \
          configs/small.yaml run.steps="$steps" run.eval_every=0 checkpoint.every=0 run.dir="$dir/run" \
          model.seq_len="$seq" data.batch_size="$batch" model.precision="$precision" \
          model.recompute="$recompute" "$@" > "$dir.log" 2>&1; then
        echo "seq_len $seq $precision recompute $recompute: moe-train failed; see $dir.log" >&2
        exit 1
      fi
      gb=$(python3 -c 'import sys; print(f"{max(int(open(p).read()) for p in sys.argv[1:]) / 1e9:.2f}")' "$dir"/rank-*)
      printf '%-8s %-6s %-9s %-10s %s\n' "$seq" "$batch" "$precision" "$recompute" "$gb"
    done
  done
done
