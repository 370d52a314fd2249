#!/usr/bin/env bash
# End-to-end tests of moe-train's checkpoints under mpirun: exact resume after SIGTERM, a rank killed
# in the middle of a save, resuming on other layouts, bad checkpoints, save-and-exit on a signal, and
# SIGTERM to mpirun itself.
#   checkpoint_e2e.sh CASE MOE_TRAIN MPIRUN SOURCE_DIR PROTOC
# Each case runs in a fresh temporary directory, removed afterwards. Manifests are read with
# `protoc --decode` (protoc builds the project, so it is always there).
set -u
case_name=$1 moe_train=$2 mpirun=$3 src=$4 protoc=$5
tiny=$src/configs/tiny.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1

fail() { echo "FAIL ($case_name): $*"; exit 1; }
mpirun_args=(--oversubscribe --timeout 240)
# run NP [args...]: runs moe-train on NP ranks in the foreground, output in out.txt; returns its status.
run() {
  local np=$1
  shift
  "$mpirun" "${mpirun_args[@]}" -np "$np" "$moe_train" "$@" >out.txt 2>&1
}
# start NP OUT [args...]: the same in the background, output in OUT; sets $job (mpirun's pid).
start() {
  local np=$1 out=$2
  shift 2
  "$mpirun" "${mpirun_args[@]}" -np "$np" "$moe_train" "$@" >"$out" 2>&1 &
  job=$!
}
# The last training step in a metrics.jsonl (0 if none yet); cheap enough to poll with.
last_step() {
  local s
  s=$(grep '"loss"' "$1" 2>/dev/null | tail -n 1 | sed -n 's/^{"step": \([0-9]*\),.*/\1/p')
  echo "${s:-0}"
}
# wait_for_step METRICS N: polls until the background job has logged step N; fails if it ends first.
wait_for_step() {
  local deadline=$((SECONDS + 60))
  while [ "$(last_step "$1")" -lt "$2" ]; do
    kill -0 "$job" 2>/dev/null || fail "the run ended before step $2"
    [ $SECONDS -lt $deadline ] || fail "no step $2 within 60 s"
    sleep 0.02
  done
}
# The rank processes of the background job: mpirun's children (never matched by name, so that other
# tests running beside this one are left alone).
rank_pids() { pgrep -P "$job"; }
# The manifest of checkpoint directory $1 as protobuf text (unsealed: tests/checkpoint_metadata.py).
metadata=$src/tests/checkpoint_metadata.py
manifest() {
  python3 "$metadata" unseal "$1/MANIFEST" |
    "$protoc" -I "$src" --decode=moe.checkpoint.Manifest core/checkpoint/checkpoint.proto
}
# The step after "stopped by a signal after step" in file $1.
stopped_step() { sed -n 's/.*stopped by a signal after step \([0-9]*\).*/\1/p' "$1" | head -1; }
step_dir() { printf '%s/step_%08d' "$1" "$2"; }
# stop_ranks OUT: SIGTERM to the background job's ranks; the job must exit 0 and say "stopped by a
# signal after step N" in OUT; sets n to N.
stop_ranks() {
  local status
  kill -TERM $(rank_pids)
  wait "$job"
  status=$?
  [ $status = 0 ] || { cat "$1"; fail "exit status $status after SIGTERM (expected 0)"; }
  n=$(stopped_step "$1")
  [ -n "$n" ] || { cat "$1"; fail "no 'stopped by a signal after step N' message"; }
}
# Every file under $1 with its size, modification time and checksum.
listing() { (cd "$1" && find . -type f -printf '%p %s %T@ ' -exec md5sum {} \; | sort); }
# Training metrics of a metrics.jsonl whose value does not depend on timing, one line per step, as
# the JSON text of each value (9 significant digits, all the log keeps; the final checkpoints are
# compared bit for bit through their CRCs).
det_metrics() { python3 - "$1" <<'PY'
import re, sys
keys = ["loss", "aux_loss", "z_loss", "lr", "grad_norm", "dropped_frac", "load_max_over_mean", "skipped_steps",
        "moe_layers"]
for line in open(sys.argv[1]):
    if '"loss"' not in line:
        continue
    step = re.match(r'\{"step": (\d+)', line).group(1)
    vals = [k + "=" + re.search(r'"%s": (\[.*\](?=\}$)|[^,}]+)' % k, line.strip()).group(1) for k in keys]
    print(step, " ".join(vals))
PY
}
# Losses by step of a metrics.jsonl: "step loss" lines.
losses() { python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "loss" in m: print(m["step"], repr(m["loss"]))' "$1"; }

# The steps of every training event (one holding scalars; not the routing's text summary) in the
# TensorBoard event files of directory $1, one per line, in file order (TFRecord framing; Event.step is
# field 2, a varint; Event.summary field 5, its values field 1, a value's simple_value field 2, a fixed32).
tb_steps() { python3 - "$1" <<'PY'
import glob, struct, sys
def varint(b, i):
    v = s = 0
    while True:
        v |= (b[i] & 0x7F) << s; s += 7; i += 1
        if b[i - 1] < 0x80: return v, i
def has_scalar(b):
    i = 0
    while i < len(b):
        _, i = varint(b, i)
        n, i = varint(b, i)
        v, i, j = b[i:i + n], i + n, 0
        while j < len(v):
            key, j = varint(v, j)
            if key == (2 << 3 | 5): return True
            if key & 7 == 0: _, j = varint(v, j)
            elif key & 7 == 5: j += 4
            else: n2, j = varint(v, j); j += n2
    return False
for path in sorted(glob.glob(sys.argv[1] + "/events.out.tfevents.*")):
    data, at = open(path, "rb").read(), 0
    while at + 16 <= len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        body, at = data[at + 12:at + 12 + n], at + 16 + n
        i, step, summary = 0, 0, False
        while i < len(body):
            key, i = varint(body, i)
            field, wire = key >> 3, key & 7
            if wire == 0: value, i = varint(body, i)
            elif wire == 1: i += 8; continue
            elif wire == 2:
                length, i = varint(body, i)
                i += length
                if field == 5: summary = has_scalar(body[i - length:i])
                continue
            else: raise SystemExit(f"{path}: unexpected wire type {wire}")
            if field == 2: step = value
        if summary: print(step)
PY
}
# The steps of the training lines of a metrics.jsonl, space-separated.
metric_steps() { losses "$1" | cut -d' ' -f1 | tr '\n' ' '; }
# mount_tmpfs DIR OPTIONS: a small tmpfs at DIR, unmounted on exit; false if this machine does not allow it.
mounts=()
mount_tmpfs() {
  mkdir -p "$1" && mount -t tmpfs -o "$2" tmpfs "$1" 2>/dev/null || return 1
  mounts+=("$1")
  trap 'for m in "${mounts[@]}"; do umount "$m"; done; rm -rf "$work"' EXIT
}

# A tiny run with a log line every step and no evaluation (faster).
short=(run.log_every=1 run.eval_every=0)

# exact_resume_check STEPS [overrides...]: the same config (same run.steps, so the same LR schedule) run
# straight through, and stopped by SIGTERM part-way then resumed: every deterministic metric and every
# final tensor bit-identical.
exact_resume_check() {
  local steps=$1
  shift
  cfg=("${short[@]}" "$@" run.steps="$steps" checkpoint.every=25 checkpoint.keep=10 checkpoint.resume=auto)
  run 2 "$tiny" "${cfg[@]}" run.dir=full || { cat out.txt; fail "uninterrupted run failed"; }
  start 2 part1.txt "$tiny" "${cfg[@]}" run.dir=part
  wait_for_step part/metrics.jsonl 15
  stop_ranks part1.txt
  { [ "$n" -ge 15 ] && [ "$n" -lt "$steps" ]; } || fail "stopped after step $n"
  [ "$(last_step part/metrics.jsonl)" = "$n" ] || fail "metrics.jsonl does not end at step $n"
  [ -f "$(step_dir part/checkpoints "$n")/MANIFEST" ] || fail "no complete checkpoint for step $n"
  run 2 "$tiny" "${cfg[@]}" run.dir=part || { cat out.txt; fail "resumed run failed"; }
  grep -q "resumed from $(step_dir part/checkpoints "$n") at step $n" out.txt || { cat out.txt; fail "no resume message"; }
  # metrics.jsonl of the stopped-and-resumed run: every step once, each equal to the straight run's.
  det_metrics full/metrics.jsonl >full.txt
  det_metrics part/metrics.jsonl >part.txt
  [ "$(wc -l <full.txt)" = "$steps" ] || fail "the straight run logged $(wc -l <full.txt) steps"
  diff full.txt part.txt >diff.txt || { head -5 diff.txt; fail "metrics differ after resuming at step $n"; }
  # The final checkpoints agree on everything but the run id and the config text (which names run.dir):
  # every tensor's CRC32C, offsets, training state, routing counts.
  manifest "$(step_dir full/checkpoints "$steps")" | grep -v -e '^run_id:' -e '^config_yaml:' >full.manifest ||
    fail "cannot decode the straight run's final manifest"
  manifest "$(step_dir part/checkpoints "$steps")" | grep -v -e '^run_id:' -e '^config_yaml:' >part.manifest ||
    fail "cannot decode the resumed run's final manifest"
  grep -q crc32c full.manifest || fail "no tensor entries in the decoded manifest"
  diff full.manifest part.manifest >diff.txt || { head -20 diff.txt; fail "final checkpoints differ"; }
  echo "stopped after step $n, resumed; $steps steps of metrics and $(grep -c crc32c full.manifest) final tensors identical"
}

case $case_name in
exact_resume)
  exact_resume_check 100
  ;;
exact_resume_documents)
  # The same with token files blended by weight and document masking: the blend's draws depend on the
  # epoch (43 steps an epoch: 461 + 230 sequences, 2 ranks x 8 a step), the positions on
  # the tokens, and both must continue exactly.
  python3 "$src/tests/make_token_file.py" a.tok 257 30000 1 && python3 "$src/tests/make_token_file.py" b.tok 257 15000 2 ||
    fail "cannot write the token files"
  exact_resume_check 100 data.source=tokens model.vocab_size=257 data.train_files=a.tok:0.7,b.tok:0.3 \
    data.document_mask=true
  ;;
schedule_resume)
  # moe.schedule changes the experts at steps 8, 15 and 25. A run started from the straight run's
  # checkpoint of step 20 (6 experts, after two changes) takes that number from it, does not apply
  # those changes again, applies the one at step 25, and matches the straight run bit for bit.
  cfg=("${short[@]}" run.steps=40 checkpoint.every=10 checkpoint.keep=10
       'moe.schedule=at 8 remove 1,2; at 15 add 4; at 25 split 0,3')
  run 2 "$tiny" "${cfg[@]}" run.dir=full || { cat out.txt; fail "uninterrupted run failed"; }
  c20=$(step_dir full/checkpoints 20)
  manifest "$c20" >m20.txt || fail "cannot decode the manifest of step 20"
  grep -q '^  num_experts: 6$' m20.txt || fail "the manifest's layout does not record 6 experts"
  grep -q '^config_yaml:.*num_experts: 6 ' m20.txt || fail "the manifest's config does not record moe.num_experts = 6"
  grep -q '^config_yaml:.*schedule: \\"at 25 split 0,3\\"' m20.txt || { grep schedule m20.txt; fail "the manifest's config keeps applied events"; }
  run 2 "$tiny" "${cfg[@]}" run.dir=part checkpoint.init_from="$c20" || { cat out.txt; fail "resumed run failed"; }
  grep -q "resumed from $c20 at step 20" out.txt || { cat out.txt; fail "no resume message"; }
  grep -q "^expert change: step \(8\|15\)," out.txt && fail "the resumed run applied the changes of steps 8 and 15 again"
  grep -q "^expert change: step 25, layer 0: 6 -> 8 experts" out.txt || { cat out.txt; fail "no change at step 25"; }
  det_metrics full/metrics.jsonl | tail -n 20 >full.txt
  det_metrics part/metrics.jsonl >part.txt
  [ "$(wc -l <part.txt)" = 20 ] || fail "the resumed run logged $(wc -l <part.txt) steps"
  diff full.txt part.txt >diff.txt || { head -5 diff.txt; fail "metrics differ after resuming at step 20"; }
  manifest "$(step_dir full/checkpoints 40)" | grep -v -e '^run_id:' -e '^config_yaml:' >full.manifest ||
    fail "cannot decode the straight run's final manifest"
  manifest "$(step_dir part/checkpoints 40)" | grep -v -e '^run_id:' -e '^config_yaml:' >part.manifest ||
    fail "cannot decode the resumed run's final manifest"
  grep -q crc32c full.manifest || fail "no tensor entries in the decoded manifest"
  diff full.manifest part.manifest >diff.txt || { head -20 diff.txt; fail "final checkpoints differ"; }
  # A layout that cannot hold the checkpoint's experts: one message, before training.
  run 4 "$tiny" "${short[@]}" run.steps=40 parallel.ep=4 run.dir=ep4 checkpoint.init_from="$c20" 'moe.schedule=at 30 add 4' &&
    fail "6 experts on ep = 4 were accepted"
  grep -qF "checkpoint '$c20' has 6 experts per MoE layer, which this run cannot take: moe.num_experts = 6 is not divisible by ep = 4" out.txt ||
    { cat out.txt; fail "no message about the checkpoint's experts"; }
  echo "resumed at step 20 after two changes; 20 steps of metrics and $(grep -c crc32c full.manifest) final tensors identical"
  ;;
crash_during_save)
  # Rank 1 dies (SIGKILL) halfway through writing its shard of step 20; mpirun takes the job down.
  cfg=("${short[@]}" run.steps=30 checkpoint.every=10 checkpoint.keep=3 checkpoint.resume=auto run.dir=r)
  MOE_TEST_KILL_IN_SAVE=1:20 run 2 "$tiny" "${cfg[@]}" && { cat out.txt; fail "the job survived a killed rank"; }
  cat out.txt >crash.txt
  d10=$(step_dir r/checkpoints 10) d20=$(step_dir r/checkpoints 20)
  [ -f "$d10/MANIFEST" ] || { cat crash.txt; fail "no complete checkpoint for step 10"; }
  [ -d "$d20" ] || { cat crash.txt; fail "the save of step 20 never started"; }
  [ ! -e "$d20/MANIFEST" ] || fail "the interrupted save of step 20 has a MANIFEST"
  ls "$d20" | grep -q '^shard_00001\.bin\.tmp$' || { ls -l "$d20"; fail "rank 1's half-written shard is not there"; }
  [ "$(cat r/checkpoints/latest)" = step_00000010 ] || fail "latest names $(cat r/checkpoints/latest)"
  [ "$(last_step r/metrics.jsonl)" = 20 ] || fail "metrics.jsonl should end at step 20"
  before=$(listing "$d10")
  # Resume: the incomplete step 20 is reported and skipped; step 10 loads (which reads and checks the
  # CRC of every tensor) and training goes on to the end, saving step 20 again over the leftovers.
  run 2 "$tiny" "${cfg[@]}" || { cat out.txt; fail "the resumed run failed"; }
  grep -q "ignoring incomplete checkpoint $d20 (.*MANIFEST' is missing" out.txt || { cat out.txt; fail "no 'ignoring incomplete checkpoint' message"; }
  grep -q "resumed from $d10 at step 10" out.txt || { cat out.txt; fail "did not resume from step 10"; }
  grep -q "^done: 30 steps" out.txt || { cat out.txt; fail "did not train to step 30"; }
  [ "$(listing "$d10")" = "$before" ] || fail "the step 10 checkpoint changed"
  for s in 20 30; do [ -f "$(step_dir r/checkpoints $s)/MANIFEST" ] || fail "no complete checkpoint for step $s"; done
  [ -z "$(find r/checkpoints -name '*.tmp')" ] || { find r/checkpoints; fail "temporary files left behind"; }
  [ "$(cat r/checkpoints/latest)" = step_00000030 ] || fail "latest names $(cat r/checkpoints/latest)"
  # Steps 11..20 were logged twice; the resumed run truncated metrics.jsonl at step 10 first.
  [ "$(losses r/metrics.jsonl | cut -d' ' -f1 | tr '\n' ' ')" = "$(seq -s ' ' 1 30) " ] ||
    fail "metrics.jsonl steps: $(losses r/metrics.jsonl | cut -d' ' -f1 | tr '\n' ' ')"
  ;;
resharding)
  # Saved at ep=2 on 2 ranks, resumed at step 15 at ep=4 on 4 ranks and at ep=1 on 1 rank, each with
  # the same global batch of 16 sequences (so the same data order). Dropless routing and the global
  # aux-loss scope make the math independent of the layout.
  cfg=("${short[@]}" run.steps=30 moe.capacity_factor=0 moe.aux_loss_scope=global)
  run 2 "$tiny" "${cfg[@]}" parallel.ep=2 data.batch_size=8 checkpoint.every=15 run.dir=w2 ||
    { cat out.txt; fail "the 2-rank run failed"; }
  ck=$work/$(step_dir w2/checkpoints 15)
  [ -f "$ck/MANIFEST" ] || fail "no step 15 checkpoint"
  run 4 "$tiny" "${cfg[@]}" parallel.ep=4 data.batch_size=4 checkpoint.every=0 checkpoint.init_from="$ck" run.dir=w4 ||
    { cat out.txt; fail "the 4-rank resume failed"; }
  grep -q "resumed from $ck at step 15" out.txt || { cat out.txt; fail "4 ranks: no resume message"; }
  run 1 "$tiny" "${cfg[@]}" parallel.ep=1 data.batch_size=16 checkpoint.every=0 checkpoint.init_from="$ck" run.dir=w1 ||
    { cat out.txt; fail "the 1-rank resume failed"; }
  grep -q "resumed from $ck at step 15" out.txt || { cat out.txt; fail "1 rank: no resume message"; }
  python3 - <(losses w2/metrics.jsonl) <(losses w4/metrics.jsonl) <(losses w1/metrics.jsonl) <<'PY' || fail "loss curves differ"
import sys
def load(path):
    return {int(s): float(v) for s, v in (line.split() for line in open(path))}
ref, four, one = (load(p) for p in sys.argv[1:4])
steps = list(range(16, 31))
for name, other in (("4 ranks, ep=4", four), ("1 rank, ep=1", one)):
    assert sorted(other) == steps, f"{name}: steps {sorted(other)}"
    worst = max(abs(other[s] - ref[s]) / abs(ref[s]) for s in steps)
    # The layouts sum in other orders (GEMM row blocks, all-reduces over 1, 2 or 4 ranks): rounding of
    # ~1e-7 relative that grows over 15 AdamW steps. A wrong expert, a lost optimizer moment or a
    # shifted data position changes the loss at the 1e-2 level within a step or two.
    assert worst < 1e-4, f"{name}: worst relative difference {worst:.2e}"
    print(f"{name}: steps 16..30 within {worst:.2e} of the 2-rank run")
PY
  ;;
precision_switch)
  # Checkpoints hold the float32 master weights in either precision, so a run may switch on resume:
  # fp32 to step 15, continued in bf16 to step 30 (against the fp32 run's own steps 16..30), whose
  # step-30 checkpoint then continues in fp32.
  cfg=("${short[@]}" run.steps=30)
  run 2 "$tiny" "${cfg[@]}" checkpoint.every=15 run.dir=f || { cat out.txt; fail "the fp32 run failed"; }
  f15=$work/$(step_dir f/checkpoints 15)
  run 2 "$tiny" "${cfg[@]}" model.precision=bf16 checkpoint.every=30 checkpoint.init_from="$f15" run.dir=b
  status=$?
  if [ $status != 0 ] && grep -q "has a CPU without bfloat16 matrix products" out.txt; then
    echo "skipped: this CPU has no bfloat16 matrix products"; exit 77
  fi
  [ $status = 0 ] || { cat out.txt; fail "the bf16 run from the fp32 checkpoint failed"; }
  grep -q "resumed from $f15 at step 15" out.txt || { cat out.txt; fail "bf16: no resume message"; }
  b30=$work/$(step_dir b/checkpoints 30)
  for ck in "$f15" "$b30"; do
    dtypes=$(manifest "$ck" | sed -n 's/^ *dtype: "\(.*\)"/\1/p' | sort -u | tr '\n' ' ')
    [ "$dtypes" = "float32 " ] || fail "$ck holds dtypes $dtypes, expected only float32"
  done
  run 2 "$tiny" "${cfg[@]}" run.steps=35 checkpoint.every=0 checkpoint.init_from="$b30" run.dir=f2 ||
    { cat out.txt; fail "the fp32 run from the bf16 checkpoint failed"; }
  grep -q "resumed from $b30 at step 30" out.txt || { cat out.txt; fail "fp32: no resume message"; }
  python3 - <(losses f/metrics.jsonl) <(losses b/metrics.jsonl) <(losses f2/metrics.jsonl) <<'PY' || fail "losses after switching"
import sys
def load(path):
    return {int(s): float(v) for s, v in (line.split() for line in open(path))}
fp32, bf16, back = (load(p) for p in sys.argv[1:4])
assert sorted(bf16) == list(range(16, 31)) and sorted(back) == list(range(31, 36)), (sorted(bf16), sorted(back))
# bf16 rounds the products' inputs (2^-8 relative): over 15 steps the loss drifts from fp32's by well
# under 2%, while a model that lost its weights on loading starts again near ln 64 = 4.16, 30% above.
worst = max(abs(bf16[s] - fp32[s]) / fp32[s] for s in bf16)
assert worst < 0.02, f"bf16 steps 16..30: worst relative difference {worst:.2e} from fp32"
assert all(abs(back[s] - bf16[30]) < 0.1 * bf16[30] for s in back), (bf16[30], back)
print(f"bf16 after fp32: within {worst:.2e} of fp32; fp32 after bf16: {[round(back[s], 3) for s in sorted(back)]}")
PY
  ;;
bad_checkpoint_for_trainer)
  # A checkpoint of a smaller model (d_model 32), and damaged copies of it.
  run 2 "$tiny" "${short[@]}" model.d_model=32 run.steps=2 checkpoint.every=2 run.dir=small ||
    { cat out.txt; fail "the d_model=32 run failed"; }
  ck=$work/$(step_dir small/checkpoints 2)
  before=$(listing "$ck")
  load=("$tiny" "${short[@]}" run.steps=4 checkpoint.every=0 run.dir=big)
  # refused COPY WHAT PATTERN: the damaged copy $work/COPY of $ck is refused by a d_model=32 run with a
  # message matching PATTERN, and left as it was.
  refused() {
    local copy=$1 what=$2 pattern=$3 copy_before
    copy_before=$(listing "$copy")
    run 2 "$tiny" "${short[@]}" model.d_model=32 run.steps=4 checkpoint.every=0 run.dir="run_$copy" \
      checkpoint.init_from="$work/$copy" && fail "a $what checkpoint was loaded"
    grep -q "$pattern" out.txt || { cat out.txt; fail "no message for the $what checkpoint"; }
    [ "$(listing "$copy")" = "$copy_before" ] || fail "loading modified the $what checkpoint"
  }
  # (a) another model shape: the tensor and both shapes named, once (rank 0), exit status 2.
  run 2 "${load[@]}" checkpoint.init_from="$ck" && fail "a checkpoint of another model shape was loaded"
  grep -q "tensor '[^']*' has shape ([0-9, ]*32[0-9, ]*) in checkpoint '$ck' but ([0-9, ]*64[0-9, ]*) in this model" out.txt ||
    { cat out.txt; fail "shape message"; }
  [ "$(grep -c 'has shape' out.txt)" = 1 ] || { cat out.txt; fail "expected the message once"; }
  # (b) a truncated shard.
  cp -a "$ck" trunc
  truncate -s -100 trunc/shard_00001.bin
  refused trunc truncated "shard file '$work/trunc/shard_00001.bin' has [0-9]* bytes, the manifest says [0-9]* (truncated"
  # (c) a flipped byte in a tensor only rank 1 reads (an expert it holds): the message still shows.
  cp -a "$ck" flipped
  manifest flipped >flipped.txt || fail "cannot decode the manifest"
  python3 - flipped flipped.txt <<'PY' || fail "cannot damage the copy"
import sys
d, text = sys.argv[1], open(sys.argv[2]).read()
entries, cur = [], None
for line in text.splitlines():
    if line == "tensors {": cur = {"expert": "0", "offset": "0"}
    elif line == "}" and cur is not None: entries.append(cur); cur = None
    elif cur is not None: k, v = line.strip().split(": ", 1); cur[k] = v.strip('"')
# On 2 ranks at ep=2, rank 1 holds experts 2 and 3; its slice of the first expert tensor.
e = next(e for e in entries if e["expert"] == "3" and e["name"] == "layers.0.moe.w_in")
with open(d + "/" + e["file"], "r+b") as f:
    f.seek(int(e["offset"]) + 7)
    b = f.read(1)
    f.seek(int(e["offset"]) + 7)
    f.write(bytes([b[0] ^ 0x10]))
PY
  refused flipped damaged \
    "tensor 'layers.0.moe.w_in' (expert 3) in '$work/flipped/shard_00001.bin' is damaged: CRC32C [0-9a-f]*, the manifest says [0-9a-f]*"
  # (d) a manifest without per-rank state and with an empty expert_usage, sealed again with a correct
  # CRC (it once ended training in MPI_ERR_TRUNCATE): refused naming the file and the field.
  cp -a "$ck" crafted
  manifest crafted >crafted.txt || fail "cannot decode the manifest"
  python3 - crafted.txt <<'PY' || fail "cannot edit the manifest"
import re, sys
text = open(sys.argv[1]).read()
text, n = re.subn(r"(?m)^(rank_states|expert_usage) \{\n(  .*\n)*\}\n", "", text)
assert n == 4, n  # 2 ranks, 2 MoE layers
open(sys.argv[1], "w").write(text)
PY
  "$protoc" -I "$src" --encode=moe.checkpoint.Manifest core/checkpoint/checkpoint.proto <crafted.txt |
    python3 "$metadata" seal crafted/MANIFEST || fail "cannot seal the crafted manifest"
  refused crafted "crafted (no per-rank state or expert usage)" \
    "'$work/crafted/MANIFEST': has 0 rank_states (per-rank state) but layout.world_size = 2"
  # (e) a directory that does not exist.
  run 2 "${load[@]}" checkpoint.init_from="$work/nothere" && fail "a missing checkpoint directory was accepted"
  grep -q "checkpoint directory '$work/nothere' does not exist" out.txt || { cat out.txt; fail "missing-directory message"; }
  [ "$(listing "$ck")" = "$before" ] || fail "the checkpoint directory was modified"
  ;;
sigterm)
  # SIGTERM to the ranks with periodic checkpoints off: the step finishes, a checkpoint is saved, exit 0.
  cfg=("${short[@]}" run.steps=100000 checkpoint.every=0 checkpoint.resume=auto run.dir=r)
  start 2 run1.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl 5
  # Every thread of every rank blocks SIGTERM and SIGUSR1 but the one that takes them with sigwait
  # (the kernel shows the signals a thread waits for as unblocked while it waits): a handler running
  # on a thread inside a oneDNN GEMM kernel corrupts the heap (see launch/moe_train.cpp).
  for pid in $(rank_pids); do
    open=0
    for status in /proc/"$pid"/task/*/status; do
      blocked=$(sed -n 's/^SigBlk:[[:space:]]*//p' "$status")
      (( (16#$blocked & 0x4200) == 0x4200 )) || open=$((open + 1))  # bits of signals 10 and 15
    done
    [ "$open" = 1 ] || fail "$open threads of rank process $pid take SIGTERM or SIGUSR1 (expected 1, the sigwait thread)"
  done
  stop_ranks run1.txt
  grep -q "saved checkpoint $(step_dir r/checkpoints "$n")$" run1.txt || { cat run1.txt; fail "no 'saved checkpoint' line"; }
  grep -q "^done: $n steps" run1.txt || { cat run1.txt; fail "no final line"; }
  [ "$(last_step r/metrics.jsonl)" = "$n" ] || fail "metrics.jsonl does not end at step $n"
  [ "$(cat r/checkpoints/latest)" = "$(basename "$(step_dir . "$n")")" ] || fail "latest does not name step $n"
  manifest "$(step_dir r/checkpoints "$n")" >m.txt || fail "the step $n manifest does not decode"
  grep -q "^step: $n$" m.txt || fail "the manifest is not of step $n"
  # Complete: each shard file has the size the manifest records.
  python3 - m.txt "$(step_dir r/checkpoints "$n")" <<'PY' || fail "shard sizes differ from the manifest"
import os, re, sys
text, d = open(sys.argv[1]).read(), sys.argv[2]
shards = re.findall(r'shards \{\n(?:  rank: \d+\n)?  file: "([^"]+)"\n  bytes: (\d+)\n\}', text)
assert len(shards) == 2, shards
for f, b in shards:
    assert os.path.getsize(os.path.join(d, f)) == int(b), (f, b)
PY
  # SIGUSR1 to mpirun (what Slurm sends before the time limit): forwarded to every rank, same result.
  start 2 run2.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl $((n + 5))
  kill -USR1 "$job"
  wait "$job"
  status=$?
  [ $status = 0 ] || { cat run2.txt; fail "exit status $status after SIGUSR1 (expected 0)"; }
  grep -q "resumed from $(step_dir r/checkpoints "$n") at step $n" run2.txt || { cat run2.txt; fail "no resume"; }
  m=$(stopped_step run2.txt)
  [ -n "$m" ] && [ "$m" -gt "$n" ] || { cat run2.txt; fail "no stop after SIGUSR1"; }
  [ -f "$(step_dir r/checkpoints "$m")/MANIFEST" ] || fail "no complete checkpoint for step $m"
  ;;
mpirun_sigterm)
  # SIGTERM to mpirun itself (docs/launch.md, "Stopping a run by hand"): OpenMPI's mpirun takes it as
  # an abort and exits 1 whatever the ranks do (CONT, 1 s, TERM, 1 s, KILL to the ranks), so whether
  # they save a checkpoint is luck and not checked here; what they did save must resume, and USR1
  # to mpirun, the signal to send instead, saves one and gives exit status 0.
  cfg=("${short[@]}" run.steps=100000 checkpoint.every=0 checkpoint.resume=auto run.dir=r)
  start 2 run1.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl 5
  ranks=$(rank_pids)
  kill -TERM "$job"
  wait "$job"
  status=$?
  [ $status = 1 ] || { cat run1.txt; fail "mpirun's exit status $status after SIGTERM (expected 1, as docs/launch.md says)"; }
  # The ranks are gone too (KILLed, or exited; zombies until reaped count as gone).
  for pid in $ranks; do
    deadline=$((SECONDS + 30))
    while [ -e /proc/"$pid" ] && [ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]; do
      [ $SECONDS -lt $deadline ] || fail "rank process $pid still runs 30 s after mpirun exited"
      sleep 0.1
    done
  done
  n=$(stopped_step run1.txt)
  if [ -n "$n" ]; then echo "after SIGTERM to mpirun: a checkpoint of step $n"; else echo "after SIGTERM to mpirun: no checkpoint"; fi
  # USR1 to mpirun: resumes from the checkpoint above if there is one (one cut short is skipped).
  # Its progress is read from its own output: without a checkpoint, metrics.jsonl still holds the
  # first run's steps until the second one logs over them.
  start 2 run2.txt "$tiny" "${cfg[@]}"
  deadline=$((SECONDS + 120))
  until grep -q "^step $((${n:-0} + 5))/" run2.txt; do
    kill -0 "$job" 2>/dev/null || { cat run2.txt; fail "the second run ended before step $((${n:-0} + 5))"; }
    [ $SECONDS -lt $deadline ] || { cat run2.txt; fail "no step $((${n:-0} + 5)) of the second run within 120 s"; }
    sleep 0.1
  done
  kill -USR1 "$job"
  wait "$job"
  status=$?
  [ $status = 0 ] || { cat run2.txt; fail "mpirun's exit status $status after SIGUSR1 (expected 0)"; }
  if [ -n "$n" ]; then
    grep -q "resumed from $(step_dir r/checkpoints "$n") at step $n" run2.txt || { cat run2.txt; fail "no resume"; }
  fi
  m=$(stopped_step run2.txt)
  [ -n "$m" ] && [ "$m" -gt "${n:-0}" ] || { cat run2.txt; fail "no stop after SIGUSR1"; }
  grep -q "saved checkpoint $(step_dir r/checkpoints "$m")$" run2.txt || { cat run2.txt; fail "no 'saved checkpoint' line"; }
  [ -f "$(step_dir r/checkpoints "$m")/MANIFEST" ] || fail "no complete checkpoint for step $m"
  [ "$(cat r/checkpoints/latest)" = "$(basename "$(step_dir . "$m")")" ] || fail "latest does not name step $m"
  ;;
run_directory_restart)
  # (a) A run killed before its first checkpoint, started again with the same command: it restarts
  # from step 0, and its logs hold every step once (metrics.jsonl and TensorBoard alike).
  cfg=("${short[@]}" run.steps=100000 checkpoint.every=0 checkpoint.resume=auto run.dir=r)
  start 2 run1.txt "$tiny" "${cfg[@]}"
  wait_for_step r/metrics.jsonl 6
  kill -KILL $(rank_pids)
  wait "$job"
  printf '{"step": 7, "loss": 1.2' >>r/metrics.jsonl  # a line torn by the kill
  start 2 run2.txt "$tiny" "${cfg[@]}"
  deadline=$((SECONDS + 120))
  until grep -q "^step 3/" run2.txt; do
    kill -0 "$job" 2>/dev/null || { cat run2.txt; fail "the restarted run ended early"; }
    [ $SECONDS -lt $deadline ] || fail "no step 3 of the restarted run within 120 s"
    sleep 0.05
  done
  kill -TERM $(rank_pids)
  wait "$job" || { cat run2.txt; fail "the restarted run failed"; }
  n=$(stopped_step run2.txt)
  [ "$(metric_steps r/metrics.jsonl)" = "$(seq -s ' ' 1 "$n") " ] || fail "metrics.jsonl steps: $(metric_steps r/metrics.jsonl)"
  [ "$(tb_steps r/tensorboard | tr '\n' ' ')" = "$(seq -s ' ' 1 "$n") " ] ||
    fail "TensorBoard steps after the restart: $(tb_steps r/tensorboard | tr '\n' ' ')"
  grep -q "run directory r: metrics.jsonl and tensorboard/ kept up to step 0" run2.txt || { cat run2.txt; fail "no cut-back message"; }
  # (b) Resumed from a checkpoint older than the logs: both cut back to it, then every step once.
  cfg=("${short[@]}" run.steps=30 checkpoint.every=10 checkpoint.resume=auto run.dir=c)
  MOE_TEST_KILL_IN_SAVE=1:20 run 2 "$tiny" "${cfg[@]}" && fail "the job survived a killed rank"
  [ "$(tb_steps c/tensorboard | tail -1)" = 20 ] || fail "the killed run's events do not reach step 20"
  run 2 "$tiny" "${cfg[@]}" || { cat out.txt; fail "the resumed run failed"; }
  grep -q "kept up to step 10, where this run starts" out.txt || { cat out.txt; fail "no cut-back message"; }
  [ "$(metric_steps c/metrics.jsonl)" = "$(seq -s ' ' 1 30) " ] || fail "metrics.jsonl steps: $(metric_steps c/metrics.jsonl)"
  [ "$(tb_steps c/tensorboard | tr '\n' ' ')" = "$(seq -s ' ' 1 30) " ] ||
    fail "TensorBoard steps: $(tb_steps c/tensorboard | tr '\n' ' ')"
  [ -f c/DONE ] && [ -s c/routing_report.txt ] || fail "no DONE or routing report after the resumed run"
  # (c) A finished run is refused when nothing resumes it (no checkpoints), and left as it was.
  run 2 "$tiny" "${short[@]}" run.steps=3 checkpoint.every=0 run.dir=f || { cat out.txt; fail "the 3-step run failed"; }
  before=$(listing f)
  run 2 "$tiny" "${short[@]}" run.steps=3 checkpoint.every=0 run.dir=f && fail "a finished run directory was reused"
  [ $? = 2 ] || fail "expected exit status 2 for a finished run directory"
  grep -q "^moe-train: run.dir 'f' holds a finished run (DONE) and this run would start from step 0" out.txt ||
    { cat out.txt; fail "no finished-run message"; }
  [ "$(listing f)" = "$before" ] || fail "the refused run changed the finished run directory"
  # (d) Another run's directory (another config, not finished) is refused, and left as it was.
  rm f/DONE
  before=$(listing f)
  run 2 "$tiny" "${short[@]}" run.steps=3 checkpoint.every=0 run.dir=f optim.lr=0.002 && fail "a foreign run directory was reused"
  grep -q "^moe-train: run.dir 'f' holds another run: its config.yaml differs from this run's config ('  lr: .*' there, '  lr: 0.002.*' here)" out.txt ||
    { cat out.txt; fail "no foreign-run message"; }
  [ "$(listing f)" = "$before" ] || fail "the refused run changed the foreign run directory"
  # (e) A finished run resumed from its own checkpoint with another config (more steps) continues it.
  run 2 "$tiny" "${cfg[@]}" run.steps=40 || { cat out.txt; fail "resuming the finished run for 10 more steps failed"; }
  grep -q "resumed from $(step_dir c/checkpoints 30) at step 30" out.txt || { cat out.txt; fail "no resume from step 30"; }
  [ "$(metric_steps c/metrics.jsonl)" = "$(seq -s ' ' 1 40) " ] || fail "metrics.jsonl steps: $(metric_steps c/metrics.jsonl)"
  [ "$(cat c/DONE)" = "steps 40" ] || fail "DONE says $(cat c/DONE)"
  grep -q "^  steps: 40" c/config.yaml || fail "config.yaml is not this run's"
  ;;
damaged_checkpoint_moved_aside)
  # A truncated newest checkpoint (found when listing) and a bad CRC in the next newest (found when
  # loading): each is moved aside, the run resumes from the newest sound one, saves those steps anew
  # and keep-K prunes the new ones as usual.
  cfg=("${short[@]}" checkpoint.every=10 checkpoint.keep=3 checkpoint.resume=auto run.dir=r)
  run 2 "$tiny" "${cfg[@]}" run.steps=50 || { cat out.txt; fail "the first run failed"; }
  d30=$(step_dir r/checkpoints 30) d40=$(step_dir r/checkpoints 40) d50=$(step_dir r/checkpoints 50)
  truncate -s -100 "$d50/shard_00001.bin"
  manifest "$d40" > m40.txt || fail "cannot read step 40's manifest"
  python3 - "$d40" m40.txt <<'PY' || fail "cannot damage step 40"
import re, sys
d = sys.argv[1]
text = open(sys.argv[2]).read()
offset = int(re.search(r'tensors \{\n  name: "[^"]*"\n(?:  \w+: .*\n)*?  offset: (\d+)', text).group(1))
with open(d + "/shard_00000.bin", "r+b") as f:
    f.seek(offset + 3); b = f.read(1); f.seek(offset + 3); f.write(bytes([b[0] ^ 0x01]))
PY
  run 2 "$tiny" "${cfg[@]}" run.steps=70 || { cat out.txt; fail "the run past the damaged checkpoints failed"; }
  grep -q "^damaged checkpoint $d50 moved aside to $d50.damaged-1 (corruption: shard file .* (truncated" out.txt ||
    { cat out.txt; fail "no message on moving the truncated step 50 aside"; }
  grep -q "^damaged checkpoint $d40 moved aside to $d40.damaged-1 (.*is damaged: CRC32C" out.txt ||
    { cat out.txt; fail "no message on moving step 40 (bad CRC) aside"; }
  grep -q "resumed from $d30 at step 30" out.txt || { cat out.txt; fail "did not resume from step 30"; }
  grep -q "^done: 70 steps" out.txt || { cat out.txt; fail "did not train to step 70"; }
  [ "$(cd r/checkpoints && LC_ALL=C ls -d step_* | tr '\n' ' ')" = \
    "step_00000040.damaged-1 step_00000050 step_00000050.damaged-1 step_00000060 step_00000070 " ] ||
    fail "checkpoints left: $(cd r/checkpoints && ls -d step_* | tr '\n' ' ')"
  [ "$(metric_steps r/metrics.jsonl)" = "$(seq -s ' ' 1 70) " ] || fail "metrics.jsonl steps: $(metric_steps r/metrics.jsonl)"
  # A damaged checkpoint is never loaded or deleted: a second one of step 50 gets the next name.
  truncate -s -100 "$d50/shard_00000.bin"
  run 2 "$tiny" "${cfg[@]}" run.steps=70 || { cat out.txt; fail "the run after damaging step 50 again failed"; }
  grep -q "nothing to train: $(step_dir r/checkpoints 70) is at step 70" out.txt || { cat out.txt; fail "no 'nothing to train'"; }
  [ -d "$d50.damaged-1" ] && [ -d "$d50.damaged-2" ] || fail "step 50 was not moved aside to damaged-2"
  ;;
logs_disk_full)
  # run.dir on a 64 KiB file system: the first failed log write is reported once, training goes on
  # (checkpoints elsewhere), DONE is not written and the exit status is 4.
  if ! mount_tmpfs full size=64k; then echo "SKIP ($case_name): cannot mount a tmpfs here (needs root)"; exit 77; fi
  run 2 "$tiny" "${short[@]}" run.steps=120 checkpoint.every=60 checkpoint.dir="$work/ck" run.dir=full/r
  status=$?
  [ $status = 4 ] || { cat out.txt; fail "exit status $status with a full run.dir (expected 4)"; }
  grep -q "^moe-train: writing 'full/r/[^']*' failed: No space left on device; training goes on" out.txt ||
    { cat out.txt; fail "no message naming the file and the OS error"; }
  [ "$(grep -c 'No space left on device' out.txt)" = 2 ] || { cat out.txt; fail "expected the failure once, and once in the last line"; }
  grep -q "^moe-train: trained 120 steps, but the logs in full/r are incomplete" out.txt || { cat out.txt; fail "no final line"; }
  grep -q "^done:" out.txt && fail "a 'done' line after a failed log write"
  [ ! -e full/r/DONE ] || fail "DONE written after a failed log write"
  [ -f "$(step_dir ck 120)/MANIFEST" ] || fail "training did not go on to its last checkpoint"
  ;;
unusable_paths)
  # Each path the run would write, unusable: one message naming the key, the path and why, exit 2,
  # on every rank alike, before anything is written (nothing created, nothing printed but the message).
  echo file >afile
  expect_refusal() {  # expect_refusal MESSAGE_REGEX overrides...
    local pattern=$1
    shift
    run 2 "$tiny" "${short[@]}" run.steps=2 "$@" && fail "$* was accepted"
    [ $? = 2 ] || { cat out.txt; fail "$*: exit status $? (expected 2)"; }
    grep -q "^moe-train: $pattern" out.txt || { cat out.txt; fail "$*: no message matching '$pattern'"; }
    [ "$(grep -c '^moe-train: ' out.txt)" = 1 ] || { cat out.txt; fail "$*: expected the message once"; }
    grep -q "resolved config" out.txt && { cat out.txt; fail "$*: the config was printed before the refusal"; }
    for d in r ro/r; do [ ! -e "$d" ] || fail "$*: created $d"; done
    [ "$(cat afile)" = file ] || fail "$*: the file was changed"
  }
  expect_refusal "run.dir 'afile' cannot be used: it is a file, not a directory" run.dir=afile
  expect_refusal "run.dir 'afile/r' cannot be used: 'afile', part of it, is a file, not a directory" run.dir=afile/r
  expect_refusal "run.dir '/proc/moe/r' cannot be used: '/proc', part of it, is on the proc pseudo file system" run.dir=/proc/moe/r
  expect_refusal "checkpoint.dir 'afile' cannot be used: it is a file, not a directory" run.dir=r checkpoint.dir=afile
  expect_refusal "checkpoint.dir '/proc/self/ck' cannot be used: '/proc/self', part of it, is on the proc pseudo file system" \
    run.dir=r checkpoint.dir=/proc/self/ck
  expect_refusal "checkpoint.init_from '$work/nothere' cannot be loaded: not found: checkpoint directory '$work/nothere' does not exist" \
    run.dir=r checkpoint.init_from="$work/nothere"
  if mount_tmpfs ro ro,size=64k; then
    expect_refusal "run.dir 'ro/r' cannot be used: 'ro', part of it, is not writable: Read-only file system" run.dir=ro/r
    umount ro && mounts=() && rmdir ro
  else
    echo "(read-only run.dir not checked: cannot mount a tmpfs here)"
  fi
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
