#!/usr/bin/env bash
# Checks that the real TensorBoard reads moe-train's event files: installs tensorboard from PyPI into
# a virtual environment under the build folder (once, tests/test_venv.sh), runs a short training job,
# and reads the scalars (and the routing mode's text summary) back with TensorBoard's own
# EventAccumulator, after a resume. MoE on every second of 4 layers:
# the per-layer tags carry the model's layer index (1 and 3).
#   tensorboard_reads_events.sh MOE_TRAIN MPIRUN CONFIG VENV_DIR
set -eu
moe_train=$1 mpirun=$2 config=$3 venv=$4
"$(dirname "$0")/test_venv.sh" "$venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The run is killed in its save of step 20 (after logging it) and resumed from step 10: TensorBoard
# must see steps 15 and 20 once (the old event file is cut back to step 10, docs/run-directory.md).
train() {
  "$mpirun" --oversubscribe --timeout 200 -np 2 "$moe_train" "$config" run.steps=20 run.log_every=5 run.eval_every=10 \
    model.n_layers=4 model.moe_every=2 checkpoint.every=10 checkpoint.resume=auto run.dir="$work/run" >"$work/out.txt" 2>&1
}
MOE_TEST_KILL_IN_SAVE=1:20 train && { cat "$work/out.txt"; echo "the run survived a killed rank"; exit 1; }
train || { cat "$work/out.txt"; exit 1; }
"$venv/bin/python" - "$work/run/tensorboard" <<'PY'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
tags = acc.Tags()["scalars"]
expected = ["train/loss", "train/aux_loss", "train/z_loss", "train/lr", "train/grad_norm", "perf/tokens_per_s",
            "perf/model_gflops_per_rank", "perf/mfu", "moe/dropped_frac", "moe/load_max_over_mean", "eval/loss",
            "eval/perplexity", "expert_load/layer1/expert0", "expert_load/layer3/expert3"]
expected += [f"time/{p}_ms" for p in ["data", "forward", "backward", "token_exchange", "grad_sync", "optimizer",
                                      "checkpoint"]]
expected += [f"moe/layer{l}/{m}" for l in (1, 3) for m in ["dropped_frac", "router_entropy", "load_max_over_mean"]]
for tag in expected:
    assert tag in tags, f"{tag} missing; TensorBoard sees {sorted(tags)}"
assert not any(t.startswith("expert_load/layer0") or t.startswith("moe/layer2") for t in tags), sorted(tags)
loss = acc.Scalars("train/loss")
assert [e.step for e in loss] == [5, 10, 15, 20], [e.step for e in loss]
assert [e.step for e in acc.Scalars("eval/loss")] == [10, 20], [e.step for e in acc.Scalars("eval/loss")]
assert loss[-1].value < loss[0].value, [e.value for e in loss]
share = sum(acc.Scalars(f"expert_load/layer3/expert{e}")[-1].value for e in range(4))
assert abs(share - 1.0) < 1e-5, share
import math
ppl, ev = acc.Scalars("eval/perplexity")[-1].value, acc.Scalars("eval/loss")[-1].value
assert abs(ppl - math.exp(ev)) < 1e-4 * ppl, (ppl, ev)
entropy = acc.Scalars("moe/layer1/router_entropy")[-1].value
assert 0 < entropy <= math.log(4) + 1e-6, entropy
# The routing mode as a text summary, written at each run's first step (the resumed run's is step 11).
routing = acc.Tensors("moe/routing")
assert [e.step for e in routing] == [1, 11], [e.step for e in routing]
assert routing[-1].tensor_proto.string_val[0].decode() == "token_choice, softmax scores", routing[-1]
print(f"TensorBoard read {len(tags)} scalar tags; train/loss {loss[0].value:.3f} -> {loss[-1].value:.3f}")
PY
