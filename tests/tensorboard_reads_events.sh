#!/usr/bin/env bash
# Checks that the real TensorBoard reads moe-train's event files: installs tensorboard from PyPI into
# a virtual environment under the build folder (once, tests/test_venv.sh), runs a short training job,
# and reads the scalars back with TensorBoard's own EventAccumulator.
#   tensorboard_reads_events.sh MOE_TRAIN MPIRUN CONFIG VENV_DIR
set -eu
moe_train=$1 mpirun=$2 config=$3 venv=$4
"$(dirname "$0")/test_venv.sh" "$venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$mpirun" --oversubscribe --timeout 200 -np 2 "$moe_train" "$config" run.steps=20 run.log_every=5 run.eval_every=10 \
  run.dir="$work/run" >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; exit 1; }
"$venv/bin/python" - "$work/run/tensorboard" <<'PY'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
tags = acc.Tags()["scalars"]
for tag in ["train/loss", "train/aux_loss", "train/z_loss", "train/lr", "train/grad_norm", "perf/tokens_per_s",
            "moe/dropped_frac", "eval/loss", "expert_load/moe_layer0/expert0", "expert_load/moe_layer1/expert3"]:
    assert tag in tags, f"{tag} missing; TensorBoard sees {sorted(tags)}"
loss = acc.Scalars("train/loss")
assert [e.step for e in loss] == [5, 10, 15, 20], [e.step for e in loss]
assert loss[-1].value < loss[0].value, [e.value for e in loss]
share = sum(acc.Scalars(f"expert_load/moe_layer0/expert{e}")[-1].value for e in range(4))
assert abs(share - 1.0) < 1e-5, share
print(f"TensorBoard read {len(tags)} scalar tags; train/loss {loss[0].value:.3f} -> {loss[-1].value:.3f}")
PY
