#!/bin/bash
# Trains configs/small.yaml on 2 ranks in fp32 and in bf16, alternating (ROUNDS runs of each, STEPS steps
# a run), and prints per run the mean tokens/s, MFU and phase times of the steps after the first 10 (the
# warm-up: primitive creation, first page touches), then each precision's median tokens/s and MFU and the
# bf16/fp32 speed-up. Alternating keeps a slow spell of a shared machine from favouring one precision.
# MFU is against the peak each run measures at start-up in its own precision (moe-train's log line).
# Extra arguments are overrides for both precisions (e.g. model.seq_len=512 data.batch_size=2).
# Usage: bench/train_precision.sh BUILD_DIR OUT_DIR [STEPS (60)] [ROUNDS (3)] [KEY=VALUE ...]
set -euo pipefail
usage="usage: bench/train_precision.sh BUILD_DIR OUT_DIR [STEPS] [ROUNDS] [KEY=VALUE ...]"
build=${1:?$usage}
out=${2:?$usage}
steps=${3:-60}
rounds=${4:-3}
shift $(($# < 4 ? $# : 4))
[[ $steps =~ ^[0-9]+$ && $steps -gt 10 ]] || { echo "STEPS = '$steps': expected an integer > 10" >&2; exit 2; }
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 ]] || { echo "ROUNDS = '$rounds': expected an integer >= 1" >&2; exit 2; }
mkdir -p "$out"
mpirun_args=(-np 2 --oversubscribe)
[ "$(id -u)" = 0 ] && mpirun_args+=(--allow-run-as-root)

for round in $(seq "$rounds"); do
  for precision in fp32 bf16; do
    dir="$out/$precision-$round"
    rm -rf "$dir"
    if ! mpirun "${mpirun_args[@]}" "$build/moe-train" configs/small.yaml run.steps="$steps" run.eval_every=0 \
        checkpoint.every=0 run.dir="$dir" model.precision="$precision" "$@" > "$dir.log" 2>&1; then
      echo "$precision round $round: moe-train failed; see $dir.log" >&2
      exit 1
    fi
  done
done

python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
summary = {}
for precision in ("fp32", "bf16"):
    for r in range(1, rounds + 1):
        rows = [json.loads(l) for l in open(f"{out}/{precision}-{r}/metrics.jsonl")]
        rows = [x for x in rows if "tokens_per_s" in x and x["step"] > 10]
        tps = statistics.mean(x["tokens_per_s"] for x in rows)
        mfu = statistics.mean(x["mfu"] for x in rows)
        peak = rows[-1]["model_gflops_per_rank"] / rows[-1]["mfu"]
        phases = {k: 1000 * statistics.mean(x["time_s"][k] for x in rows) for k in rows[-1]["time_s"]}
        summary.setdefault(precision, []).append((tps, mfu))
        print(f"{precision} run {r}: {tps:8.0f} tokens/s  MFU {100 * mfu:5.1f}% (peak {peak:.0f} GFLOP/s/rank)  "
              + " ".join(f"{k} {v:.1f}" for k, v in phases.items() if v > 0.05) + " ms")
median = {p: (statistics.median(t for t, _ in v), statistics.median(m for _, m in v)) for p, v in summary.items()}
for p, (t, m) in median.items():
    print(f"{p} median: {t:8.0f} tokens/s  MFU {100 * m:5.1f}%")
print(f"bf16 / fp32 tokens/s: {median['bf16'][0] / median['fp32'][0]:.2f}x")
EOF
