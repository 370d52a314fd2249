#!/bin/bash
# Trains configs/small.yaml on 2 ranks in every routing mode and prints, per mode, the first and last
# logged training loss, the held-out loss at the end, the routing report's header line and whether
# TensorBoard's events hold the moe/routing text. Shows that each mode learns at this size; not a
# timing benchmark. Usage: bench/train_routing_modes.sh BUILD_DIR OUT_DIR [STEPS]   (default 200)
set -euo pipefail
usage="usage: bench/train_routing_modes.sh BUILD_DIR OUT_DIR [STEPS]"
build=${1:?$usage}
out=${2:?$usage}
steps=${3:-200}
mkdir -p "$out"
mpirun_args=(-np 2 --oversubscribe)
[ "$(id -u)" = 0 ] && mpirun_args+=(--allow-run-as-root)

# small.yaml's synthetic corpus has 8 domains of 32 token ids and its layers 8 experts, k = 2: the
# table sends domain d's ids to experts d and d + 1.
table="$out/domains.table"
for d in 0 1 2 3 4 5 6 7; do echo "$((d * 32))-$((d * 32 + 31)): $d $(((d + 1) % 8))"; done > "$table"

mode_args() {  # the overrides of mode $1, into the array `args`
  local no_losses=(moe.aux_loss_coeff=0 moe.z_loss_coeff=0)
  case $1 in
    token_choice) args=() ;;
    sigmoid) args=(moe.score_function=sigmoid moe.balancing=aux_free moe.aux_loss_coeff=0 moe.routed_scaling_factor=2.5) ;;
    groups) args=(moe.routing_groups=ep moe.top_groups=1) ;;
    expert_choice) args=(moe.routing=expert_choice moe.aux_loss_coeff=0) ;;
    hash) args=(moe.routing=hash "${no_losses[@]}") ;;
    table) args=(moe.routing=table "moe.routing_table=$table" "${no_losses[@]}") ;;
    schedule) args=("moe.schedule=at $((steps / 2)) split 0,1; at $((steps * 3 / 4)) remove 2,3") ;;
  esac
}

printf '%-14s %7s %7s %7s  %s\n' mode first last eval "routing report header; TensorBoard text"
for mode in token_choice sigmoid groups expert_choice hash table schedule; do
  dir="$out/$mode"
  rm -rf "$dir"
  mode_args "$mode"
  if ! mpirun "${mpirun_args[@]}" "$build/moe-train" configs/small.yaml run.steps="$steps" run.eval_every="$steps" \
      checkpoint.every=0 run.dir="$dir" "${args[@]}" > "$out/$mode.log" 2>&1; then
    echo "$mode: moe-train failed; see $out/$mode.log" >&2
    exit 1
  fi
  losses=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r["loss"] for r in rows if "loss" in r]
evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
print(f"{train[0]:7.4f} {train[-1]:7.4f} {evals[-1]:7.4f}")' "$dir/metrics.jsonl")
  tb=absent
  grep -qa "moe/routing" "$dir"/tensorboard/events.out.tfevents.* && tb="moe/routing present"
  printf '%-14s %s  %s; %s\n' "$mode" "$losses" "$(head -1 "$dir/routing_report.txt")" "$tb"
done
